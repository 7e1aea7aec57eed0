//! The feature job end to end: session -> input checks -> stages -> atomic write -> summary.

use std::fmt;
use std::time::{Duration, Instant};

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{SortExpr, col};
use datafusion::physical_plan::displayable;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::prelude::{ident, lit};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{JobConfig, OutputFormat, PlanKind};
use crate::error::{Error, Result};
use crate::io::sink::{self, WriteStats};
use crate::io::storage::{self, OutputLocation};
use crate::pipeline::{self, inputs};
use crate::session;
use tokio_util::sync::CancellationToken;

/// What a run did, printed on stderr at the end.
#[derive(Debug, Clone, Default)]
pub struct JobSummary {
    pub output: String,
    /// How the features were computed: weighting and blend, e.g. `prior mean, blend bayes (m = 30)`.
    pub formulas: String,
    pub engagement_rows: u64,
    pub neighbour_rows: u64,
    /// Rows of `history`: distinct (query, product_id) engagement pairs.
    pub history_rows: u64,
    pub neighbour_set_rows: u64,
    /// Queries with a non-empty neighbour set, i.e. with at least one prior pair.
    pub queries_with_prior: u64,
    pub written: WriteStats,
    /// Files the vacuum after a Delta commit deleted.
    pub vacuumed: Option<usize>,
    pub warnings: Vec<String>,
    pub check_time: Duration,
    /// The plan's name (`merge` or `sql`).
    pub plan: &'static str,
    /// The merge plan's own measurements (summed over input partitions); `None` for `sql`.
    pub merge: Option<MergeProfile>,
    pub neighbour_sets_time: Duration,
    pub features_time: Duration,
    pub total_time: Duration,
}

/// Where the merge plan's time went (see [`pipeline::merge::MergeMetrics`]). The writer runs
/// concurrently: `prior_blend` and the Parquet encoding overlap.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeProfile {
    pub read_history: Duration,
    pub read_neighbours: Duration,
    pub build_index: Duration,
    /// The workers' time computing rows, summed (more than the wall time when they run at once).
    pub prior_blend: Duration,
    /// Output partitions of the operator (summed over input partitions).
    pub partitions: usize,
    pub history_rows: u64,
    /// History rows the partitions need, summed: over `history_rows`, the replication factor
    /// of a split by query.
    pub history_rows_needed: u64,
    /// The history's spill files, their bytes and rows (0 when it fitted in memory).
    pub spill_files: u64,
    pub spilled_bytes: u64,
    pub spilled_rows: u64,
    /// Blocks the spilled history was read back in, the rows read and the time (summed).
    pub history_blocks: u64,
    pub history_rows_loaded: u64,
    pub load_history: Duration,
}

impl MergeProfile {
    fn add(&mut self, m: &pipeline::merge::MergeMetrics) {
        let d =
            |t: &datafusion::physical_plan::metrics::Time| Duration::from_nanos(t.value() as u64);
        self.read_history += d(&m.read_history);
        self.read_neighbours += d(&m.read_neighbours);
        self.build_index += d(&m.build_index);
        self.prior_blend += d(&m.prior_blend);
        self.history_rows += m.history_rows.value() as u64;
        self.history_rows_needed += m.history_rows_needed.value() as u64;
        self.spill_files += m.spill.spill_file_count.value() as u64;
        self.spilled_bytes += m.spill.spilled_bytes.value() as u64;
        self.spilled_rows += m.spill.spilled_rows.value() as u64;
        self.history_blocks += m.history_blocks.value() as u64;
        self.history_rows_loaded += m.history_rows_loaded.value() as u64;
        self.load_history += d(&m.load_history);
    }
}

impl JobSummary {
    /// Output pairs that exist only through the prior (no engagement row).
    pub fn prior_only_pairs(&self) -> u64 {
        self.written.rows.saturating_sub(self.history_rows)
    }
}

impl fmt::Display for JobSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: Duration| format!("{:.2}s", d.as_secs_f64());
        writeln!(
            f,
            "q2q-prior run: wrote {} rows ({} bytes) to {}{} (plan: {})",
            self.written.rows,
            self.written.bytes,
            self.output,
            match (&self.written.delta_version, self.written.parts.len()) {
                (Some(v), _) => format!(" (Delta table, version {v})"),
                (None, 0) => String::new(),
                (None, n) => {
                    let writers: std::collections::BTreeSet<&str> = self
                        .written
                        .parts
                        .iter()
                        .map(|p| p.writer.as_str())
                        .collect();
                    format!(" as {n} part files by {} writer(s)", writers.len())
                }
            },
            self.plan
        )?;
        writeln!(f, "  features: {}", self.formulas)?;
        writeln!(
            f,
            "  stage            rows in                        rows out      wall"
        )?;
        writeln!(
            f,
            "  inputs+checks    engagement {:>10}  neighbours {:>10}                 {:>8}",
            self.engagement_rows,
            self.neighbour_rows,
            secs(self.check_time)
        )?;
        writeln!(
            f,
            "  history          {:>10}                        {:>10}  (lazy)",
            self.engagement_rows, self.history_rows
        )?;
        if let Some(m) = &self.merge {
            writeln!(
                f,
                "  merge plan (one operator; the writer encodes concurrently) {:>8}",
                secs(self.features_time)
            )?;
            writeln!(
                f,
                "    read history + H, intern        {:>10}                 {:>8}",
                self.history_rows,
                secs(m.read_history)
            )?;
            writeln!(
                f,
                "    read neighbours, filter         {:>10}                 {:>8}",
                self.neighbour_rows,
                secs(m.read_neighbours)
            )?;
            writeln!(
                f,
                "    index + neighbour sets                     {:>10}  {:>8}",
                self.neighbour_set_rows,
                secs(m.build_index)
            )?;
            writeln!(
                f,
                "    prior + blend ({:>3} partitions)           {:>10}  {:>8} (workers' time, summed)",
                m.partitions,
                self.written.rows,
                secs(m.prior_blend)
            )?;
            writeln!(
                f,
                "    history a partition needs, summed: {:.2}x the history (a split by query \
                 replicates a neighbour's history into every partition citing it)",
                m.history_rows_needed as f64 / m.history_rows.max(1) as f64
            )?;
            if m.spill_files == 0 {
                writeln!(
                    f,
                    "    spilled: nothing (history and neighbour candidates fitted in memory)"
                )?;
            } else {
                writeln!(
                    f,
                    "    spilled: {} rows of history and neighbour candidates, {} bytes in {} \
                     spill files; history read back in {} blocks, {:.2}x the history, {} \
                     (partitions' time, summed)",
                    m.spilled_rows,
                    m.spilled_bytes,
                    m.spill_files,
                    m.history_blocks,
                    m.history_rows_loaded as f64 / m.history_rows.max(1) as f64,
                    secs(m.load_history)
                )?;
            }
        } else {
            writeln!(
                f,
                "  neighbour_sets   {:>10}                        {:>10}  {:>8}",
                self.neighbour_rows,
                self.neighbour_set_rows,
                secs(self.neighbour_sets_time)
            )?;
            writeln!(
                f,
                "  prior+blend+sink {:>10}                        {:>10}  {:>8}  (one fused plan)",
                self.history_rows,
                self.written.rows,
                secs(self.features_time)
            )?;
        }
        writeln!(f, "  queries with a prior: {}", self.queries_with_prior)?;
        writeln!(
            f,
            "  (q,p) pairs only through the prior: {}",
            self.prior_only_pairs()
        )?;
        if let Some(n) = self.vacuumed {
            writeln!(
                f,
                "  vacuum: deleted {n} file(s) no table version within the retention needs"
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        write!(f, "  total wall time: {}", secs(self.total_time))
    }
}

/// Progress on stderr: a spinner with the current stage (hidden when stderr is not a terminal).
fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Runs the feature job described by `config` (already merged and validated).
/// Resolves `fut` unless `cancel` fires first; then the run stops with [`Error::Interrupted`].
async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Interrupted),
        result = fut => result,
    }
}

/// How a caller other than `run` (the backfill) adapts a run.
#[derive(Default, Clone)]
pub struct RunOptions {
    /// Columns with one value for every row, appended to the output (backfill's timestamps).
    pub constant_columns: Vec<(String, ScalarValue)>,
    /// The runtime (memory pool, spill folder, object stores) to share instead of a new one.
    pub runtime: Option<Arc<RuntimeEnv>>,
    /// No spinner: the caller shows its own progress.
    pub quiet: bool,
    /// With `format = "delta"`: what the commit replaces, the table's partition columns and the
    /// record it carries (default: the whole table, partitioned as the engagement input).
    pub delta: Option<sink::delta::Commit>,
}

/// Where the rows go: one file (Parquet, CSV, NDJSON), or a Delta table.
enum Destination {
    File(OutputLocation),
    /// A folder of part files, one per partition of the plan (see [`sink::parts`]).
    Parts(sink::parts::Staging),
    Delta(storage::Root),
}

/// An output that names a folder of parts: one ending in `/` (an existing folder named without
/// it is refused, as it may not be the job's: see `sink::staging`).
fn is_folder(output: &str) -> bool {
    output.ends_with('/')
}

pub async fn run(config: &JobConfig, cancel: &CancellationToken) -> Result<JobSummary> {
    run_with(config, cancel, &RunOptions::default()).await
}

/// [`run`] with [`RunOptions`].
///
/// With `execution.timeout_secs` the run stops once that much time has passed, as an interrupted
/// run does (nothing written), and fails with [`Error::TimedOut`].
pub async fn run_with(
    config: &JobConfig,
    cancel: &CancellationToken,
    options: &RunOptions,
) -> Result<JobSummary> {
    config.validate()?;
    let Some(secs) = config.execution.timeout_secs else {
        return run_until(config, cancel, options).await;
    };
    let deadline = cancel.child_token();
    let timer = tokio::spawn({
        let deadline = deadline.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            deadline.cancel();
        }
    });
    let result = run_until(config, &deadline, options).await;
    timer.abort();
    match result {
        Err(Error::Interrupted) if !cancel.is_cancelled() => Err(Error::TimedOut {
            secs,
            on_cluster: config.execution.cluster.is_some(),
        }),
        other => other,
    }
}

/// [`run_with`] until `cancel` fires.
async fn run_until(
    config: &JobConfig,
    cancel: &CancellationToken,
    options: &RunOptions,
) -> Result<JobSummary> {
    let on_cluster = config.execution.cluster.is_some();
    let start = Instant::now();
    let (engagement, neighbours, output) = config.job_paths()?;
    // a folder output (parts) must not contain an input either
    storage::refuse_overlap(
        output,
        is_folder(output),
        &[
            (inputs::ENGAGEMENT, &engagement.uri),
            (inputs::NEIGHBOURS, &neighbours.uri),
        ],
    )?;
    let progress = if options.quiet {
        ProgressBar::hidden()
    } else {
        spinner()
    };
    let p = &config.features;
    let mut summary = JobSummary {
        output: output.to_string(),
        formulas: format!(
            "top_k {}, prior {}, blend {}, beta {}",
            p.top_k,
            p.prior_weighting.name(),
            p.blend.describe(p),
            p.beta
        ),
        ..Default::default()
    };

    progress.set_message("opening inputs");
    let (ctx, inputs) = match &options.runtime {
        Some(runtime) => {
            cancellable(
                cancel,
                session::open_with_runtime(config, Arc::clone(runtime)),
            )
            .await?
        }
        None => cancellable(cancel, session::open(config)).await?,
    };
    let format = config.output_format()?;
    let destination = if format == OutputFormat::Delta {
        let root = storage::Root::open(ctx.runtime_env().as_ref(), output)?;
        // before any work: an unwritable destination, or a folder that is not a table, fails now
        let probe = OutputLocation::resolve(
            ctx.runtime_env().as_ref(),
            &root.uri_of(sink::delta::WRITE_PROBE),
        )?;
        cancellable(cancel, sink::staging::prepare(&probe)).await?;
        cancellable(cancel, sink::delta::prepare(&root)).await?;
        Destination::Delta(root)
    } else if is_folder(output) {
        let root = storage::Root::open(ctx.runtime_env().as_ref(), output)?;
        Destination::Parts(cancellable(cancel, sink::parts::Staging::prepare(root)).await?)
    } else {
        let location = OutputLocation::resolve(ctx.runtime_env().as_ref(), output)?;
        // before any work: an unwritable destination fails now; dead runs' staging files go
        cancellable(cancel, sink::staging::prepare(&location)).await?;
        Destination::File(location)
    };

    progress.set_message("checking inputs");
    tracing::info!("checking inputs");
    let report = cancellable(
        cancel,
        crate::pipeline::checks::check(&inputs, &config.features),
    )
    .await?;
    summary.engagement_rows = report.engagement_rows;
    summary.neighbour_rows = report.neighbour_rows;
    summary.history_rows = report.engagement_pairs;
    for (input, warning) in &report.warnings {
        let text = format!(
            "{input}: {} row(s) fail '{}' ({}){}",
            warning.violations,
            warning.check.id,
            warning.check.expected,
            warning
                .example
                .as_deref()
                .map(|e| format!("; e.g. {e}"))
                .unwrap_or_default()
        );
        tracing::info!("{text}");
        summary.warnings.push(text);
    }
    summary.check_time = start.elapsed();

    let merge = config.execution.plan == PlanKind::Merge;
    summary.plan = match (merge, on_cluster) {
        (true, false) => "merge",
        (true, true) => "merge (cluster)",
        (false, false) => "sql",
        (false, true) => "sql (cluster)",
    };
    if merge {
        // the operator computes the neighbour sets itself: nothing to materialise
        pipeline::register_job_views(
            &ctx,
            &inputs,
            &config.execution,
            &config.features,
            &[],
            &session::siblings(&ctx, &config.execution),
        )
        .await?;
        if on_cluster {
            // the operator's own counts stay on the executors: count with the SQL stage instead
            let ns_start = Instant::now();
            (summary.neighbour_set_rows, summary.queries_with_prior) =
                cancellable(cancel, neighbour_set_counts(&ctx)).await?;
            summary.neighbour_sets_time = ns_start.elapsed();
        }
    } else {
        progress.set_message("computing neighbour sets");
        tracing::info!("computing neighbour sets");
        let ns_start = Instant::now();
        let timings = cancellable(
            cancel,
            pipeline::register_job_views(
                &ctx,
                &inputs,
                &config.execution,
                &config.features,
                // a cluster cannot scan this process's memory: nothing is materialised there
                if on_cluster {
                    &[]
                } else {
                    &[pipeline::neighbour_sets::STAGE.name]
                },
                &session::siblings(&ctx, &config.execution),
            ),
        )
        .await?;
        let (rows, queries) = cancellable(cancel, neighbour_set_counts(&ctx)).await?;
        summary.neighbour_set_rows = if on_cluster {
            rows
        } else {
            timings
                .materialized
                .iter()
                .map(|(_, rows, _)| rows)
                .sum::<u64>()
        };
        summary.queries_with_prior = queries;
        summary.neighbour_sets_time = ns_start.elapsed();
    }

    progress.set_message("computing prior and features, writing");
    tracing::info!("computing prior and features, writing {output}");
    let features_start = Instant::now();
    let mut features = output_frame(&ctx, &inputs, config).await?;
    for (name, value) in &options.constant_columns {
        features = features.with_column(name, lit(value.clone()))?;
    }
    let task = Arc::new(features.task_ctx());
    let (plan, parts) = match &destination {
        Destination::Parts(staging) => {
            let written = write_parts(
                &ctx,
                features,
                Arc::clone(&task),
                staging,
                format,
                on_cluster,
                cancel,
            )
            .await;
            if written.is_err() {
                staging.discard().await;
            }
            let (plan, parts) = written?;
            (plan, Some(parts))
        }
        _ => (
            pipeline::merge::concat::concat_sorted_ranges(features.create_physical_plan().await?)?,
            None,
        ),
    };
    let written = match &destination {
        Destination::Parts(_) => parts.expect("set for a parts destination"),
        Destination::File(location) => {
            let mut rows = 0u64;
            sink::write_plan_atomic(Arc::clone(&plan), task, location, format, cancel, |batch| {
                rows += batch.num_rows() as u64;
                progress.set_message(format!(
                    "computing prior and features, writing: {rows} rows"
                ));
            })
            .await?
        }
        Destination::Delta(root) => {
            progress.set_message("computing prior and features, writing the Delta table");
            let commit = options
                .delta
                .clone()
                .unwrap_or_else(|| sink::delta::Commit {
                    replace: sink::delta::Replace::All,
                    partition_columns: inputs.engagement.partitions.columns.clone(),
                    record: None,
                    create_first: false,
                });
            let written =
                sink::delta::write(Arc::clone(&plan), &ctx.state(), root, &commit, cancel).await?;
            // the backfill vacuums once, after all its days
            if options.delta.is_none() && config.delta.vacuum {
                summary.vacuumed = Some(sink::delta::vacuum(root, config.delta.retention()).await?);
            }
            written
        }
    };
    summary.written = written;
    summary.features_time = features_start.elapsed();
    if merge && !on_cluster {
        let mut profile = MergeProfile::default();
        for exec in pipeline::merge::find_merges(&plan) {
            let m = exec.measured();
            profile.partitions += exec.partitions();
            summary.neighbour_set_rows += m.neighbour_set_rows.value() as u64;
            summary.queries_with_prior += m.queries_with_prior.value() as u64;
            profile.add(m);
        }
        summary.merge = Some(profile);
    }
    summary.total_time = start.elapsed();
    progress.finish_and_clear();
    Ok(summary)
}

/// Writes `features` as a folder of parts through `staging` and commits it: locally by this
/// process (each partition of the plan one part), on a cluster by the executors (the client
/// gets one report row per part). Returns the plan (for its metrics) and what was committed.
async fn write_parts(
    ctx: &SessionContext,
    features: DataFrame,
    task: Arc<datafusion::execution::TaskContext>,
    staging: &sink::parts::Staging,
    format: OutputFormat,
    on_cluster: bool,
    cancel: &CancellationToken,
) -> Result<(
    Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    WriteStats,
)> {
    use sink::parts::{PartsTable, PartsWriterExec, parts_of, without_final_merge};
    let (plan, report) = if on_cluster {
        let table = PartsTable {
            input: features.logical_plan().clone(),
            staging: staging.url.clone(),
            format,
        };
        let report = ctx.read_table(Arc::new(table))?;
        let plan = report.clone().create_physical_plan().await?;
        let batches = cancellable(cancel, async {
            Ok(datafusion::physical_plan::collect(Arc::clone(&plan), task).await?)
        })
        .await?;
        (plan, batches)
    } else {
        let input = without_final_merge(features.create_physical_plan().await?);
        let plan: Arc<dyn datafusion::physical_plan::ExecutionPlan> =
            Arc::new(PartsWriterExec::new(input, staging.url.clone(), format));
        let batches = cancellable(cancel, async {
            Ok(datafusion::physical_plan::collect(Arc::clone(&plan), task).await?)
        })
        .await?;
        (plan, batches)
    };
    let parts = parts_of(&report)?;
    // every partition writes one part; on a cluster the writer's plan is the scheduler's
    let expected = (!on_cluster).then(|| plan.properties().partitioning.partition_count());
    // once every part is written the commit is not interrupted: a cancellation arrives too late
    let written = staging.commit(parts, expected, format).await?;
    Ok((plan, written))
}

/// Rows of the neighbour-set stage, and queries with a neighbour set (rank 1 rows).
async fn neighbour_set_counts(ctx: &SessionContext) -> Result<(u64, u64)> {
    let sets = ctx.table(pipeline::neighbour_sets::STAGE.name).await?;
    let rows = sets.clone().count().await? as u64;
    let queries = sets.filter(col("rank").eq(lit(1i64)))?.count().await? as u64;
    Ok((rows, queries))
}

/// The table `run` writes: the `features` view (with the partition columns of a partitioned
/// input), sorted by (partition columns, query, product_id) unless `sort_output` is off.
async fn output_frame(
    ctx: &SessionContext,
    inputs: &inputs::Inputs,
    config: &JobConfig,
) -> Result<DataFrame> {
    let features = ctx.table(pipeline::blend::STAGE.name).await?;
    if !config.execution.sort_output {
        return Ok(features);
    }
    let mut order: Vec<SortExpr> = inputs
        .engagement
        .partitions
        .columns
        .iter()
        .map(|k| ident(k.as_str()).sort(true, false))
        .collect();
    order.extend([
        col("query").sort(true, false),
        col("product_id").sort(true, false),
    ]);
    Ok(features.sort(order)?)
}

/// The physical plan `run` would execute for `config`, as indented text (`run --explain`). Reads
/// the inputs' metadata only. With `plan = "sql"` the neighbour sets appear as their SQL plan;
/// `run` computes them first into memory and reads that instead.
pub async fn explain(config: &JobConfig) -> Result<String> {
    config.validate()?;
    let (ctx, inputs) = session::open(config).await?;
    pipeline::register_job_views(
        &ctx,
        &inputs,
        &config.execution,
        &config.features,
        &[],
        &session::siblings(&ctx, &config.execution),
    )
    .await?;
    let plan = output_frame(&ctx, &inputs, config)
        .await?
        .create_physical_plan()
        .await?;
    let plan = pipeline::merge::concat::concat_sorted_ranges(plan)?;
    Ok(displayable(plan.as_ref()).indent(true).to_string())
}
