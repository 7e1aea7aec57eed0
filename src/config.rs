//! The job configuration: one serde struct, merged once from a TOML file, the environment and
//! flags (in that order of precedence, lowest first), validated once, then passed by reference.
//!
//! Every key, its default and its meaning is listed in the README's configuration reference.

use std::fmt;
use std::path::Path;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
pub use crate::formula::{Blend, PriorWeighting};
use crate::formula::{Confidence, HistoryWeights};

/// A whole feature job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// (query, product_id) engagement counts aggregated over a window.
    #[serde(deserialize_with = "input_spec_from_str_or_table")]
    pub engagement: Option<InputSpec>,
    /// The upstream model's Q2Q lists: query, neighbour, score.
    #[serde(deserialize_with = "input_spec_from_str_or_table")]
    pub neighbours: Option<InputSpec>,
    /// Where the feature table goes: a file path or object-store URL.
    pub output: Option<String>,
    /// Format of the output file; from the output's extension (.parquet, .csv) when absent.
    pub format: Option<OutputFormat>,
    pub features: FeatureParams,
    pub execution: ExecutionConfig,
    pub backfill: BackfillConfig,
    pub delta: DeltaConfig,
}

/// `format = "delta"`: what happens to the files a commit replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeltaConfig {
    /// Vacuum the table after `run` and after each backfill: delete the files no version within
    /// the retention needs (replaced builds' files, and those of builds killed before their
    /// commit).
    pub vacuum: bool,
    /// Keep replaced files this many hours, for readers of older versions (time travel) and for
    /// builds still writing; absent: the table's `delta.deletedFileRetentionDuration` (7 days
    /// unless set). Shorter than the longest run can delete a running build's files.
    pub retention_hours: Option<u64>,
}

impl DeltaConfig {
    /// The retention the vacuum uses (`None`: the table's own).
    pub fn retention(&self) -> Option<std::time::Duration> {
        self.retention_hours
            .map(|h| std::time::Duration::from_secs(h.saturating_mul(3600)))
    }
}

impl Default for DeltaConfig {
    fn default() -> Self {
        DeltaConfig {
            vacuum: true,
            retention_hours: None,
        }
    }
}

/// `q2q-prior backfill`: one feature partition per day from date-partitioned inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackfillConfig {
    /// Day D reads the engagement of the `window_days` days ending the day before D (the paper
    /// uses one year).
    pub window_days: u32,
    /// Name of the date folders of the inputs and of the output (`dt=YYYY-MM-DD`).
    pub date_partition: String,
    /// Which neighbour lists day D uses.
    pub neighbours_snapshot: SnapshotMode,
    /// A partition lock whose holder has not renewed it for this many seconds is taken over (a
    /// holder on this machine whose process is gone is taken over at once).
    pub lock_timeout_secs: u64,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            window_days: 365,
            date_partition: "dt".into(),
            neighbours_snapshot: SnapshotMode::Latest,
            lock_timeout_secs: 600,
        }
    }
}

/// The neighbour lists of a backfill day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// The latest `dt=` snapshot folder on or before D; the path as it is when it has no `dt=`
    /// folders.
    #[default]
    Latest,
    /// The `neighbours` path as it is, for every day.
    Fixed,
}

/// The formula parameters (paper section 4.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureParams {
    /// k: neighbours kept per query (the paper uses the top 3).
    pub top_k: u32,
    /// Neighbour rows with a score below this are dropped.
    pub min_score: f64,
    /// gamma: impression cap in alpha.
    pub gamma: f64,
    /// beta: confidence rate applied to the prior in F.
    pub beta: f64,
    pub click_weight: f64,
    pub add_weight: f64,
    pub purchase_weight: f64,
    /// kappa: added to impressions in H's denominator.
    pub smoothing: f64,
    pub prior_weighting: PriorWeighting,
    /// How alpha weighs H against the prior in F.
    pub blend: Blend,
    /// m: the prior's worth in impressions under `blend = "bayes"`.
    pub pseudo_impressions: f64,
    /// What to do when engagement has several rows for one (query, product_id).
    pub on_duplicate: DuplicatePolicy,
}

impl FeatureParams {
    /// The blend with the parameters it reads, for the run summary.
    pub fn blend_description(&self) -> String {
        match self.blend {
            Blend::Paper => format!("paper (gamma = {})", self.gamma),
            Blend::Bayes => format!(
                "bayes (m = {}, kappa = {})",
                self.pseudo_impressions, self.smoothing
            ),
        }
    }
}

impl Default for FeatureParams {
    fn default() -> Self {
        FeatureParams {
            top_k: 3,
            min_score: 0.0,
            gamma: 10_000.0,
            beta: 1.0,
            click_weight: 1.0,
            add_weight: 2.0,
            purchase_weight: 4.0,
            smoothing: 10.0,
            prior_weighting: PriorWeighting::Mean,
            blend: Blend::Paper,
            pseudo_impressions: 30.0,
            on_duplicate: DuplicatePolicy::Error,
        }
    }
}

impl FeatureParams {
    /// What alpha depends on besides the pair's impressions (see [`crate::formula::alpha`]).
    pub fn confidence(&self) -> Confidence {
        Confidence {
            blend: self.blend,
            gamma: self.gamma,
            smoothing: self.smoothing,
            pseudo_impressions: self.pseudo_impressions,
        }
    }

    pub fn history_weights(&self) -> HistoryWeights {
        HistoryWeights {
            click: self.click_weight,
            add: self.add_weight,
            purchase: self.purchase_weight,
            smoothing: self.smoothing,
        }
    }
}

/// Several engagement rows for one (query, product_id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DuplicatePolicy {
    /// Fail, naming the key: engagement is expected to be aggregated already.
    #[default]
    Error,
    /// Sum the counts of the rows (e.g. when the input is daily partitions of one window).
    Sum,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Parquet, zstd-compressed.
    #[default]
    Parquet,
    /// CSV with a header row.
    Csv,
    /// Newline-delimited JSON, one object per row (`.json`, `.ndjson`, `.jsonl`).
    Json,
    /// A Delta Lake table (a folder with a transaction log): each run, and each backfill day,
    /// is one commit that readers see whole or not at all (`run` and `backfill` only).
    Delta,
}

impl OutputFormat {
    /// The format a file name's extension names (`.parquet`, `.csv`, `.json`, `.ndjson`,
    /// `.jsonl`, any case), if any. The one place extensions map to formats.
    pub fn from_extension(path: &str) -> Option<OutputFormat> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".parquet") {
            Some(OutputFormat::Parquet)
        } else if lower.ends_with(".csv") {
            Some(OutputFormat::Csv)
        } else if [".json", ".ndjson", ".jsonl"]
            .iter()
            .any(|e| lower.ends_with(e))
        {
            Some(OutputFormat::Json)
        } else {
            None
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputFormat::Parquet => "parquet",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
            OutputFormat::Delta => "delta",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Parquet,
    Csv,
    /// Newline-delimited JSON.
    Json,
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputFormat::Parquet => "parquet",
            InputFormat::Csv => "csv",
            InputFormat::Json => "json",
        })
    }
}

/// The most plan partitions a job may ask for. Repartitioning keeps buffers per pair of
/// partitions, outside `memory_limit`'s accounting, so memory grows with the square of the
/// partitions: on the 8-row tiny fixture the SQL plan peaked at 0.43 GiB with 256, 4.1 GiB with
/// 1,024 and 14.8 GiB with 5,000 (docs/BENCHMARKS.md). More partitions than cores only helps up
/// to a few per core.
pub const MAX_TARGET_PARTITIONS: usize = 256;

/// The most output partitions the merge plan may be cut into. Its partitions share one index
/// and keep no buffers between each other, so the bound is only a guard against typos.
pub const MAX_MERGE_PARTITIONS: usize = 4096;

/// How the job runs on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionConfig {
    /// Memory the query engine may use before spilling or failing, e.g. "4GiB". Unlimited if absent.
    pub memory_limit: Option<ByteSize>,
    /// Parallelism of the query plans; the number of cores if absent.
    pub target_partitions: Option<usize>,
    /// Output partitions of the merge plan: contiguous, sorted ranges of the queries, computed
    /// in parallel and identical in content whatever their number; `target_partitions` if
    /// absent. On a Ballista cluster, independent shares of the queries, one task each
    /// (docs/DISTRIBUTED.md).
    pub partitions: Option<usize>,
    /// Sort the output by (query, product_id) so reruns write identical files.
    pub sort_output: bool,
    /// How equi-joins are executed (docs/BENCHMARKS.md: sort-merge is twice as fast on the
    /// feature job at 100k queries and k = 10, and can spill).
    pub join: JoinAlgorithm,
    /// How stages 2-4 (neighbour sets, prior, blend) are computed: one in-memory per-query merge
    /// (`merge`, default) or the SQL files under `sql/` (`sql`, the reference; its joins spill,
    /// but it is no bounded-memory fallback at scale: README).
    pub plan: PlanKind,
    /// Retries of a failed object-store request (s3, gs, az), with exponential backoff.
    pub object_store_retries: usize,
    /// Give up retrying an object-store request after this many seconds.
    pub object_store_retry_timeout_secs: u64,
    /// A Ballista scheduler, `df://HOST:PORT`: run the queries on its cluster instead of in this
    /// process (with the SQL plan; see `cluster`).
    pub cluster: Option<String>,
    /// Stop a run that takes longer than this many seconds (each partition of a backfill): it
    /// fails with exit 1 and writes nothing. No limit if absent.
    pub timeout_secs: Option<u64>,
}

/// The scheduler address (`http://HOST:PORT`) of an `execution.cluster` URL, `df://HOST:PORT`,
/// checked.
pub fn scheduler_address(url: &str) -> Result<String> {
    let parsed = url::Url::parse(url).map_err(|e| {
        Error::config(format!(
            "execution.cluster (--cluster) '{url}' is not a URL ({e}); expected df://HOST:PORT"
        ))
    })?;
    if parsed.scheme() != "df" || parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::config(format!(
            "execution.cluster (--cluster) '{url}': expected df://HOST:PORT (a Ballista scheduler)"
        )));
    }
    Ok(format!(
        "http://{}:{}",
        parsed.host_str().unwrap_or_default(),
        parsed.port().unwrap_or(50050)
    ))
}

impl ExecutionConfig {
    /// Checks the settings every command shares (the job's, and the tools' `--memory-limit`).
    pub fn validate(&self) -> Result<()> {
        if let Some(n) = self.target_partitions
            && !(1..=MAX_TARGET_PARTITIONS).contains(&n)
        {
            return Err(Error::config(format!(
                "execution.target_partitions (--target-partitions) must be between 1 and \
                 {MAX_TARGET_PARTITIONS}, got {n}: every partition of every operator keeps \
                 buffers of its own, outside the memory limit"
            )));
        }
        if let Some(n) = self.partitions
            && !(1..=MAX_MERGE_PARTITIONS).contains(&n)
        {
            return Err(Error::config(format!(
                "execution.partitions (--partitions) must be between 1 and \
                 {MAX_MERGE_PARTITIONS}, got {n}"
            )));
        }
        if let Some(url) = &self.cluster {
            scheduler_address(url)?;
        }
        if self.timeout_secs == Some(0) {
            return Err(Error::config(
                "execution.timeout_secs (--timeout-secs) must be >= 1",
            ));
        }
        if let Some(limit) = self.memory_limit
            && limit.as_u64() < 64 * 1024 * 1024
        {
            return Err(Error::config(format!(
                "execution.memory_limit (--memory-limit) must be at least 64MiB, got {limit}"
            )));
        }
        Ok(())
    }
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            memory_limit: None,
            target_partitions: None,
            partitions: None,
            sort_output: true,
            join: JoinAlgorithm::SortMerge,
            plan: PlanKind::Merge,
            object_store_retries: 10,
            object_store_retry_timeout_secs: 180,
            cluster: None,
            timeout_secs: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum JoinAlgorithm {
    /// Sort both sides and merge (spills to disk under a memory limit).
    SortMerge,
    /// Build a hash table of one side (DataFusion's default; does not spill).
    Hash,
}

/// The physical plan of the feature stages after `history` (docs/BENCHMARKS.md compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PlanKind {
    /// One operator (`PriorMergeExec`): queries and products interned to integers, the history
    /// grouped by query, and each query's prior a merge of its neighbours' short lists. Keeps
    /// the history (40 bytes per engagement row) in memory, or under a memory limit in spill
    /// files, read back a block of queries at a time.
    Merge,
    /// The SQL stages as written in `sql/` (joins and aggregations; spill under a memory limit).
    Sql,
}

/// One input: a URI (local path, directory, glob or object-store URL) and optionally its format.
///
/// Written either as a plain string, `engagement = "data/engagement/"`, or as a table,
/// `engagement = { uri = "data/e.txt", format = "csv" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub uri: String,
    /// Detected from the file extension when absent.
    #[serde(default)]
    pub format: Option<InputFormat>,
    /// Read `key=value` folders as partition columns (each partition an independent job). With
    /// `false` the folders are only paths: e.g. daily `dt=` folders read as one window.
    #[serde(default = "yes")]
    pub partitioned: bool,
    /// Replace query keys (and neighbour keys) by their normalized form (`normalize_query`) before
    /// anything else; engagement rows that collapse onto one key are summed.
    #[serde(default)]
    pub normalize: bool,
    /// Read exactly these folders or files instead of `uri` (a backfill day's window); `uri`
    /// then only names the input in messages.
    #[serde(skip)]
    pub paths: Vec<String>,
}

fn yes() -> bool {
    true
}

impl InputSpec {
    pub fn new(uri: impl Into<String>) -> Self {
        InputSpec {
            uri: uri.into(),
            format: None,
            partitioned: true,
            normalize: false,
            paths: Vec::new(),
        }
    }
}

/// Accepts a string or a table for [`InputSpec`] while keeping serde's precise error messages for
/// the table form (an untagged enum would only say "did not match any variant").
fn input_spec_from_str_or_table<'de, D>(deserializer: D) -> Result<Option<InputSpec>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<InputSpec>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(
                "a path/URL string or a table { uri = \"…\", format = \"parquet|csv|json\" }",
            )
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(InputSpec::new(v)))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            InputSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    deserializer.deserialize_any(Visitor)
}

impl JobConfig {
    /// Parses a TOML config. Local relative paths in it are taken relative to the file's folder,
    /// so a job file and its data can move together.
    pub fn from_toml_file(path: &Path) -> Result<JobConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        crate::redact::remember(&text);
        let mut config = JobConfig::from_toml_str(&text)
            .map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for spec in [&mut config.engagement, &mut config.neighbours]
            .into_iter()
            .flatten()
        {
            spec.uri = resolve_relative(base, &spec.uri);
        }
        if let Some(output) = &mut config.output {
            *output = resolve_relative(base, output);
        }
        Ok(config)
    }

    pub fn from_toml_str(text: &str) -> Result<JobConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Rejects values the formulas cannot run with. Called once, after every source is merged.
    pub fn validate(&self) -> Result<()> {
        let p = &self.features;
        if p.top_k == 0 {
            return Err(Error::config(
                "features.top_k (--top-k) must be at least 1, got 0",
            ));
        }
        if !(p.gamma.is_finite() && p.gamma > 0.0) {
            return Err(Error::config(format!(
                "features.gamma (--gamma) must be a finite number > 0, got {}",
                p.gamma
            )));
        }
        for (key, flag, value) in [
            ("beta", "--beta", p.beta),
            ("click_weight", "--click-weight", p.click_weight),
            ("add_weight", "--add-weight", p.add_weight),
            ("purchase_weight", "--purchase-weight", p.purchase_weight),
            ("smoothing", "--smoothing", p.smoothing),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::config(format!(
                    "features.{key} ({flag}) must be a finite number >= 0, got {value}"
                )));
            }
        }
        if !(p.pseudo_impressions.is_finite() && p.pseudo_impressions > 0.0) {
            return Err(Error::config(format!(
                "features.pseudo_impressions (--pseudo-impressions) must be a finite number > 0, got {}",
                p.pseudo_impressions
            )));
        }
        if !p.min_score.is_finite() {
            return Err(Error::config(format!(
                "features.min_score (--min-score) must be finite, got {}",
                p.min_score
            )));
        }
        self.output_format()?;
        if let (Some(e), Some(n)) = (&self.engagement, &self.neighbours)
            && e.normalize != n.normalize
        {
            return Err(Error::config(
                "normalize is set on one input only: neighbour keys would not match engagement keys; \
                 set engagement.normalize and neighbours.normalize (--engagement-normalize, \
                 --neighbours-normalize) alike",
            ));
        }
        if self.backfill.window_days == 0 {
            return Err(Error::config(
                "backfill.window_days (--window-days) must be at least 1",
            ));
        }
        let key = &self.backfill.date_partition;
        if key.is_empty() || key.contains(['/', '=']) {
            return Err(Error::config(format!(
                "backfill.date_partition must be a folder key such as \"dt\", got {key:?}"
            )));
        }
        self.execution.validate()
    }

    /// The output format: `format` if set, else the output's extension, else Parquet. A `format`
    /// that contradicts the extension is an error rather than a surprise.
    pub fn output_format(&self) -> Result<OutputFormat> {
        let by_extension = self
            .output
            .as_deref()
            .and_then(OutputFormat::from_extension);
        match (self.format, by_extension) {
            (Some(set), Some(ext)) if set != ext => Err(Error::config(format!(
                "format is {set} but the output '{}' ends in .{ext}; change one of them",
                self.output.as_deref().unwrap_or_default()
            ))),
            (Some(set), _) => Ok(set),
            (None, ext) => Ok(ext.unwrap_or_default()),
        }
    }

    /// The two inputs, or an error naming the one that is not configured.
    pub fn input_specs(&self) -> Result<(&InputSpec, &InputSpec)> {
        let engagement = self.engagement.as_ref().ok_or_else(|| {
            Error::config("no engagement input: set `engagement` or --engagement")
        })?;
        let neighbours = self.neighbours.as_ref().ok_or_else(|| {
            Error::config("no neighbours input: set `neighbours` or --neighbours")
        })?;
        Ok((engagement, neighbours))
    }

    /// Validates and returns the inputs and output a feature job needs.
    pub fn job_paths(&self) -> Result<(&InputSpec, &InputSpec, &str)> {
        let (engagement, neighbours) = self.input_specs()?;
        let output = self
            .output
            .as_deref()
            .ok_or_else(|| Error::config("no output: set `output` or --output"))?;
        Ok((engagement, neighbours, output))
    }
}

/// Joins a local relative path onto `base`; URLs and absolute paths are returned unchanged.
fn resolve_relative(base: &Path, uri: &str) -> String {
    if uri.contains("://") || Path::new(uri).is_absolute() {
        return uri.to_string();
    }
    base.join(uri).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_issue() {
        let c = JobConfig::from_toml_str("").unwrap();
        assert_eq!(c.features, FeatureParams::default());
        assert_eq!(c.features.top_k, 3);
        assert_eq!(c.features.gamma, 10_000.0);
        assert_eq!(c.format, None);
        assert!(c.execution.sort_output);
    }

    #[test]
    fn inputs_as_string_or_table() {
        let c = JobConfig::from_toml_str(
            "engagement = \"e.parquet\"\nneighbours = { uri = \"n.txt\", format = \"csv\" }\n",
        )
        .unwrap();
        assert_eq!(c.engagement, Some(InputSpec::new("e.parquet")));
        assert_eq!(
            c.neighbours,
            Some(InputSpec {
                uri: "n.txt".into(),
                format: Some(InputFormat::Csv),
                partitioned: true,
                normalize: false,
                paths: Vec::new(),
            })
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = JobConfig::from_toml_str("[features]\ntop_kk = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("top_kk"), "{err}");
        let err = JobConfig::from_toml_str("outptu = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("outptu"), "{err}");
        let err = JobConfig::from_toml_str("neighbours = { uri = \"x\", fromat = \"csv\" }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fromat"), "{err}");
    }

    #[test]
    fn memory_limit_parses_human_sizes() {
        let c = JobConfig::from_toml_str("[execution]\nmemory_limit = \"4GiB\"\n").unwrap();
        assert_eq!(c.execution.memory_limit, Some(ByteSize::gib(4)));
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let mut c = JobConfig::default();
        c.features.top_k = 0;
        assert!(c.validate().unwrap_err().to_string().contains("top_k"));
        let mut c = JobConfig::default();
        c.features.gamma = 0.0;
        assert!(c.validate().unwrap_err().to_string().contains("gamma"));
        let mut c = JobConfig::default();
        c.features.add_weight = -1.0;
        assert!(c.validate().unwrap_err().to_string().contains("add_weight"));
        let mut c = JobConfig::default();
        c.features.smoothing = f64::NAN;
        assert!(c.validate().unwrap_err().to_string().contains("smoothing"));
        assert!(JobConfig::default().validate().is_ok());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        assert_eq!(resolve_relative(Path::new("/jobs"), "e.csv"), "/jobs/e.csv");
        assert_eq!(
            resolve_relative(Path::new("/jobs"), "s3://b/e.csv"),
            "s3://b/e.csv"
        );
        assert_eq!(
            resolve_relative(Path::new("/jobs"), "/abs/e.csv"),
            "/abs/e.csv"
        );
    }

    #[test]
    fn cluster_urls() {
        assert_eq!(
            scheduler_address("df://10.0.0.5:50051").unwrap(),
            "http://10.0.0.5:50051"
        );
        assert_eq!(
            scheduler_address("df://scheduler").unwrap(),
            "http://scheduler:50050"
        );
        for bad in ["http://x:1", "df://", "scheduler:50050"] {
            let e = scheduler_address(bad).unwrap_err().to_string();
            assert!(e.contains("df://HOST:PORT"), "{e}");
        }
    }
}
