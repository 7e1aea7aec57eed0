//! Command-line interface: one file per subcommand, each with its arguments and one `run`.
//! [`JobArgs`] (a job file plus flags overriding any key) is shared by every command that runs a job.

pub mod backfill;
pub mod cluster;
pub mod evaluate;
pub mod export;
pub mod mine;
pub mod run;
pub mod signal;
pub mod sql;
pub mod synth;
pub mod validate;

use std::path::PathBuf;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};

use crate::config::{
    DuplicatePolicy, ExecutionConfig, InputFormat, InputSpec, JobConfig, OutputFormat,
    PriorWeighting,
};
use crate::error::Result;

/// How object-store requests are retried: the job's, and every Ballista process's (each builds
/// its own stores from its environment).
#[derive(Debug, Clone, Default, Args)]
pub struct ObjectStoreArgs {
    /// Retries of a failed object-store request (s3, gs, az), with exponential backoff
    /// [execution.object_store_retries; default 10].
    #[arg(long, value_name = "N")]
    pub object_store_retries: Option<usize>,
    /// Give up retrying an object-store request after this many seconds
    /// [execution.object_store_retry_timeout_secs; default 180].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub object_store_retry_timeout_secs: Option<u64>,
}

impl ObjectStoreArgs {
    /// Sets the flags given on `execution`.
    pub fn apply(&self, execution: &mut ExecutionConfig) {
        set(
            &mut execution.object_store_retries,
            self.object_store_retries,
        );
        set(
            &mut execution.object_store_retry_timeout_secs,
            self.object_store_retry_timeout_secs,
        );
    }

    /// The execution settings of a Ballista process: the defaults with these flags.
    pub fn execution(&self) -> ExecutionConfig {
        let mut execution = ExecutionConfig::default();
        self.apply(&mut execution);
        execution
    }
}

/// The query engine's settings of the tools (`evaluate`, `export`, `mine`): checked like the
/// job's `[execution]` ([`ExecutionConfig::validate`]).
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Memory limit for the query engine, e.g. 4GiB; at least 64MiB [default: unlimited].
    #[arg(long, env = "Q2Q_MEMORY_LIMIT", value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
    /// Plan parallelism [default: number of cores].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_TARGET_PARTITIONS as u64))]
    pub target_partitions: Option<u64>,
}

impl EngineArgs {
    /// The execution settings these flags give, checked.
    pub fn execution(&self) -> Result<ExecutionConfig> {
        let execution = ExecutionConfig {
            memory_limit: self.memory_limit,
            target_partitions: self.target_partitions.map(|n| n as usize),
            ..ExecutionConfig::default()
        };
        execution.validate()?;
        Ok(execution)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "q2q-prior",
    version,
    about = "Turns query-to-query similarity into ranking features: H, Prior, alpha and F",
    long_about = "Turns query-to-query (Q2Q) similarity into ranking features for product search.\n\n\
        From engagement counts per (query, product) and the upstream model's similar-query lists it \
        computes the history score H, the neighbours' prior, the confidence alpha and the blended \
        feature F = alpha*H + (1-alpha)*Prior*beta (Q2Q paper, section 4.5).\n\n\
        Data goes to files or stdout; logs (RUST_LOG) and progress go to stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute the feature table from engagement and neighbour lists.
    Run(Box<run::RunArgs>),
    /// Fill a feature store's daily partitions (dt=YYYY-MM-DD), atomically and resumably.
    Backfill(Box<backfill::BackfillArgs>),
    /// SQL shell over the inputs, the pipeline's stage views and the UDFs.
    Sql(Box<sql::SqlArgs>),
    /// Check the inputs (PASS/WARN/FAIL per check) without computing features.
    Validate(Box<validate::ValidateArgs>),
    /// Training files for downstream rankers (LightGBM).
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Offline evaluation of feature tables against held-out outcomes.
    #[command(subcommand)]
    Evaluate(evaluate::EvaluateCommand),
    /// Generate a synthetic marketplace (engagement + neighbour lists) for trials and benchmarks.
    Synth(synth::SynthArgs),
    /// Run a Ballista scheduler for `--cluster` jobs.
    Scheduler(cluster::SchedulerArgs),
    /// Run a Ballista executor that knows the project's functions.
    Executor(Box<cluster::ExecutorArgs>),
    /// Run a scheduler and executors in this process on 127.0.0.1 (trials and tests).
    Standalone(cluster::StandaloneArgs),
    /// Training data for the upstream Q2Q model, mined from behaviour logs.
    #[command(subcommand)]
    Mine(mine::MineCommand),
}

impl Cli {
    pub async fn run(self) -> Result<()> {
        match self.command {
            Command::Run(args) => run::run(*args).await,
            Command::Backfill(args) => backfill::run(*args).await,
            Command::Synth(args) => synth::run(args).await,
            Command::Validate(args) => validate::run(*args).await,
            Command::Sql(args) => sql::run(*args).await,
            Command::Export(command) => export::run(command).await,
            Command::Evaluate(command) => evaluate::run(command).await,
            Command::Scheduler(args) => cluster::scheduler(args).await,
            Command::Executor(args) => cluster::executor(*args).await,
            Command::Standalone(args) => cluster::standalone(args).await,
            Command::Mine(command) => mine::run(command).await,
        }
    }
}

/// A job file and flags that override its keys. Precedence: flag > environment (`Q2Q_*`) > file >
/// default.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// TOML job file; relative paths inside it are relative to the file.
    #[arg(long, env = "Q2Q_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Engagement input: file, folder, glob or URL (s3://, gs://, az://, file://)
    /// [engagement.uri].
    #[arg(long, env = "Q2Q_ENGAGEMENT", value_name = "URI")]
    pub engagement: Option<String>,
    /// Neighbour lists input: file, folder, glob or URL [neighbours.uri].
    #[arg(long, env = "Q2Q_NEIGHBOURS", value_name = "URI")]
    pub neighbours: Option<String>,
    /// k: neighbours kept per query [features.top_k; default 3].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,
    /// Drop neighbour rows scoring below this [features.min_score; default 0].
    #[arg(long, allow_negative_numbers = true)]
    pub min_score: Option<f64>,
    /// gamma: impression cap in alpha, > 0 [features.gamma; default 10000].
    #[arg(long, allow_negative_numbers = true)]
    pub gamma: Option<f64>,
    /// beta: confidence rate of the prior in F, >= 0 [features.beta; default 1].
    #[arg(long, allow_negative_numbers = true)]
    pub beta: Option<f64>,
    /// Weight of clicks in H [features.click_weight; default 1].
    #[arg(long, allow_negative_numbers = true)]
    pub click_weight: Option<f64>,
    /// Weight of add-to-carts in H [features.add_weight; default 2].
    #[arg(long, allow_negative_numbers = true)]
    pub add_weight: Option<f64>,
    /// Weight of purchases in H [features.purchase_weight; default 4].
    #[arg(long, allow_negative_numbers = true)]
    pub purchase_weight: Option<f64>,
    /// kappa: added to impressions in H's denominator [features.smoothing; default 10].
    #[arg(long, allow_negative_numbers = true)]
    pub smoothing: Option<f64>,
    /// How the prior averages neighbours [features.prior_weighting; default mean].
    #[arg(long, value_enum)]
    pub prior_weighting: Option<PriorWeighting>,
    /// How alpha weighs H against the prior in F: paper (eq. 9) or bayes
    /// ((I + kappa) / (I + kappa + m)) [features.blend; default paper].
    #[arg(long, value_enum)]
    pub blend: Option<crate::config::Blend>,
    /// m: the prior's worth in impressions with --blend bayes, > 0
    /// [features.pseudo_impressions; default 30].
    #[arg(long, allow_negative_numbers = true, value_name = "M")]
    pub pseudo_impressions: Option<f64>,
    /// Several engagement rows for one (query, product_id) [features.on_duplicate; default error].
    #[arg(long, value_enum)]
    pub on_duplicate: Option<DuplicatePolicy>,
    /// Memory limit for the query engine, e.g. 4GiB [execution.memory_limit; default unlimited].
    #[arg(long, env = "Q2Q_MEMORY_LIMIT", value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
    /// How equi-joins run [execution.join; default sort-merge].
    #[arg(long, value_enum)]
    pub join: Option<crate::config::JoinAlgorithm>,
    /// Plan of the stages after history: merge (in memory, fast) or sql (spills)
    /// [execution.plan; default merge].
    #[arg(long, value_enum)]
    pub plan: Option<crate::config::PlanKind>,
    /// Run the queries on a Ballista cluster: its scheduler, df://HOST:PORT [execution.cluster].
    /// Inputs must be object-store URLs or paths every executor sees.
    #[arg(long, env = "Q2Q_CLUSTER", value_name = "URL")]
    pub cluster: Option<String>,
    /// Stop `run` (or each backfill partition) after this many seconds, writing nothing
    /// [execution.timeout_secs; default no limit].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: Option<u64>,
    /// Plan parallelism, 1 to 256 [execution.target_partitions; default: number of cores].
    /// Bounded because repartitioning keeps buffers per pair of partitions that the memory
    /// limit does not count: memory grows with its square (1024 took 4.1 GiB on an 8-row input).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_TARGET_PARTITIONS as u64))]
    pub target_partitions: Option<u64>,
    /// Output partitions of the merge plan, 1 to 4096: sorted ranges of the queries, computed in
    /// parallel; the output is the same whatever the number. On a cluster, shares of the queries,
    /// one task each [execution.partitions; default: --target-partitions].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_MERGE_PARTITIONS as u64))]
    pub partitions: Option<u64>,
    #[command(flatten)]
    pub object_store: ObjectStoreArgs,
    /// Sort the output by (partition columns, query, product_id) [execution.sort_output; default true].
    #[arg(long, value_name = "BOOL")]
    pub sort_output: Option<bool>,
    /// Format of the engagement files [engagement.format; default: from the extension].
    #[arg(long, value_enum)]
    pub engagement_format: Option<InputFormat>,
    /// Format of the neighbours files [neighbours.format; default: from the extension].
    #[arg(long, value_enum)]
    pub neighbours_format: Option<InputFormat>,
    /// Read key=value folders of engagement as partition columns [engagement.partitioned; default true].
    #[arg(long, value_name = "BOOL")]
    pub engagement_partitioned: Option<bool>,
    /// Read key=value folders of neighbours as partition columns [neighbours.partitioned; default true].
    #[arg(long, value_name = "BOOL")]
    pub neighbours_partitioned: Option<bool>,
    /// Normalize engagement query keys, summing rows that collapse [engagement.normalize; default false].
    #[arg(long, value_name = "BOOL")]
    pub engagement_normalize: Option<bool>,
    /// Normalize neighbour query keys [neighbours.normalize; default false].
    #[arg(long, value_name = "BOOL")]
    pub neighbours_normalize: Option<bool>,
}

/// Where `run` writes the feature table (commands that only read the inputs do not take these).
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output file (path or URL), written atomically; ending in `/`, a folder of part files (one
    /// per partition, committed with _SUCCESS); with --format delta, the table's folder [output].
    #[arg(long, short = 'o', env = "Q2Q_OUTPUT", value_name = "URI")]
    pub output: Option<String>,
    /// Output format [format; default parquet]. `delta`: a Delta Lake table at the output
    /// folder, one commit per run (per day with backfill).
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// With --format delta: keep replaced files this many hours before the vacuum that ends the
    /// run deletes them [delta.retention_hours; default: the table's, 7 days].
    #[arg(long, value_name = "HOURS")]
    pub delta_retention_hours: Option<u64>,
    /// With --format delta: end each run with a vacuum of files replaced longer ago than the
    /// retention [delta.vacuum; default true].
    #[arg(long, value_name = "BOOL")]
    pub delta_vacuum: Option<bool>,
}

impl JobArgs {
    /// Builds the job config: the file (if any), then every flag given on top.
    pub fn load(&self) -> Result<JobConfig> {
        self.load_with(None)
    }

    /// Like [`JobArgs::load`], with the output flags of commands that write the feature table.
    pub fn load_with(&self, output: Option<&OutputArgs>) -> Result<JobConfig> {
        let mut config = match &self.config {
            Some(path) => JobConfig::from_toml_file(path)?,
            None => JobConfig::default(),
        };
        // A flag replaces an input's location only; its other keys (format, partitioned) stay.
        for (slot, uri, format, partitioned, normalize) in [
            (
                &mut config.engagement,
                &self.engagement,
                self.engagement_format,
                self.engagement_partitioned,
                self.engagement_normalize,
            ),
            (
                &mut config.neighbours,
                &self.neighbours,
                self.neighbours_format,
                self.neighbours_partitioned,
                self.neighbours_normalize,
            ),
        ] {
            if let Some(uri) = uri {
                match slot {
                    Some(spec) => spec.uri = uri.clone(),
                    None => *slot = Some(InputSpec::new(uri.clone())),
                }
            }
            if let Some(spec) = slot {
                if format.is_some() {
                    spec.format = format;
                }
                set(&mut spec.partitioned, partitioned);
                set(&mut spec.normalize, normalize);
            } else if format.is_some() || partitioned.is_some() || normalize.is_some() {
                return Err(crate::Error::config(
                    "--*-format, --*-partitioned and --*-normalize need the input's location (flag or config file)",
                ));
            }
        }
        if let Some(flags) = output {
            if let Some(output) = &flags.output {
                config.output = Some(output.clone());
            }
            if let Some(format) = flags.format {
                config.format = Some(format);
            }
            if flags.delta_retention_hours.is_some() {
                config.delta.retention_hours = flags.delta_retention_hours;
            }
            set(&mut config.delta.vacuum, flags.delta_vacuum);
        }
        let f = &mut config.features;
        set(&mut f.top_k, self.top_k);
        set(&mut f.min_score, self.min_score);
        set(&mut f.gamma, self.gamma);
        set(&mut f.beta, self.beta);
        set(&mut f.click_weight, self.click_weight);
        set(&mut f.add_weight, self.add_weight);
        set(&mut f.purchase_weight, self.purchase_weight);
        set(&mut f.smoothing, self.smoothing);
        set(&mut f.prior_weighting, self.prior_weighting);
        set(&mut f.blend, self.blend);
        set(&mut f.pseudo_impressions, self.pseudo_impressions);
        set(&mut f.on_duplicate, self.on_duplicate);
        if self.memory_limit.is_some() {
            config.execution.memory_limit = self.memory_limit;
        }
        set(&mut config.execution.join, self.join);
        set(&mut config.execution.plan, self.plan);
        if self.cluster.is_some() {
            config.execution.cluster = self.cluster.clone();
        }
        if self.timeout_secs.is_some() {
            config.execution.timeout_secs = self.timeout_secs;
        }
        if let Some(n) = self.target_partitions {
            config.execution.target_partitions = Some(n as usize);
        }
        if let Some(n) = self.partitions {
            config.execution.partitions = Some(n as usize);
        }
        set(&mut config.execution.sort_output, self.sort_output);
        self.object_store.apply(&mut config.execution);
        config.validate()?;
        Ok(config)
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every key of the job's TOML file as `section.key` (`output`, `engagement.uri`,
    /// `features.top_k`, ...), read off the config types themselves.
    fn config_keys() -> Vec<String> {
        fn walk(prefix: &str, value: &serde_json::Value, keys: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(fields) => {
                    for (name, field) in fields {
                        let key = if prefix.is_empty() {
                            name.clone()
                        } else {
                            format!("{prefix}.{name}")
                        };
                        walk(&key, field, keys);
                    }
                }
                _ => keys.push(prefix.to_string()),
            }
        }
        let config = JobConfig {
            engagement: Some(InputSpec::new("e.parquet")),
            neighbours: Some(InputSpec::new("n.parquet")),
            ..JobConfig::default()
        };
        let mut keys = Vec::new();
        walk("", &serde_json::to_value(&config).unwrap(), &mut keys);
        keys
    }

    #[test]
    fn every_config_key_has_a_flag_that_names_it() {
        let cli = Cli::command();
        // each flag's help names its key as `[key]` or `[key; default ...]`
        let mut named = Vec::new();
        for command in ["run", "backfill"] {
            for arg in cli.find_subcommand(command).unwrap().get_arguments() {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let long = arg
                    .get_long_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                for text in [help, long] {
                    for tag in text.split('[').skip(1) {
                        let key = tag.split([';', ']']).next().unwrap_or_default();
                        named.push((key.trim().to_string(), arg.get_id().to_string()));
                    }
                }
            }
        }
        let keys = config_keys();
        assert!(keys.len() > 30, "{keys:?}");
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !named.iter().any(|(key, _)| key == *k))
            .collect();
        assert!(
            missing.is_empty(),
            "config keys without a flag: {missing:?}"
        );
        // and no flag names a key that does not exist (a renamed key leaves no stale help)
        let stale: Vec<_> = named
            .iter()
            .filter(|(key, _)| key.contains('.') && !keys.contains(key))
            .collect();
        assert!(stale.is_empty(), "flags naming no config key: {stale:?}");
    }
}
