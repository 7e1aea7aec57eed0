//! The feature job end to end: session -> input checks -> stages -> atomic write -> summary.

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
use crate::io::sink;
use crate::io::sink::parts::PartWriter;
use crate::io::storage::{self, OutputLocation};
use crate::pipeline::checks::{self, HistoryKeys};
use crate::pipeline::{self, inputs};
use crate::session;
use tokio_util::sync::CancellationToken;

mod summary;
pub use summary::{JobSummary, MergeProfile};

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
    /// With a file format and an output folder (ending in `/`) the caller owns: the partitions
    /// write their part files there (on a cluster: the executors) and the job reports them in
    /// [`JobSummary::written`]'s parts, checked but not committed; the caller publishes them
    /// (backfill's days on a cluster).
    pub staged_parts: bool,
}

/// Where the rows go: one file (Parquet, CSV, NDJSON), or a Delta table.
enum Destination {
    File(OutputLocation),
    /// A folder of part files, one per partition of the plan (see [`sink::parts`]).
    Parts(sink::parts::Staging),
    /// Part files left in a folder the caller publishes ([`RunOptions::staged_parts`]).
    Staged(storage::Root),
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
    let (engagement, _, _) = config.job_paths()?;
    // keys the merge operator found repeated ([`HistoryKeys::Merge`]: before its first row, so
    // nothing was written) are the engagement input's fault
    run_stages(config, cancel, options)
        .await
        .map_err(|e| checks::repeated_keys(e, &engagement.uri))
}

/// The job's stages, then the summary.
async fn run_stages(
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
            p.blend_description(),
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
    } else if options.staged_parts {
        if !is_folder(output) {
            return Err(Error::config(format!(
                "staged parts need an output folder (ending in '/'), not '{}'",
                crate::redact::text(output)
            )));
        }
        Destination::Staged(storage::Root::open(ctx.runtime_env().as_ref(), output)?)
    } else if is_folder(output) {
        let root = storage::Root::open(ctx.runtime_env().as_ref(), output)?;
        Destination::Parts(cancellable(cancel, sink::parts::Staging::prepare(root)).await?)
    } else {
        let location = OutputLocation::resolve(ctx.runtime_env().as_ref(), output)?;
        // before any work: an unwritable destination fails now; dead runs' staging files go
        cancellable(cancel, sink::staging::prepare(&location)).await?;
        Destination::File(location)
    };

    let merge = config.execution.plan == PlanKind::Merge;
    let keys = if merge
        && !on_cluster
        && !inputs.engagement.normalize
        && inputs.engagement.partitions.columns.is_empty()
    {
        HistoryKeys::Merge
    } else {
        HistoryKeys::Aggregate
    };
    progress.set_message("checking inputs");
    tracing::info!("checking inputs");
    let report = cancellable(cancel, checks::check(&inputs, &config.features, keys)).await?;
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

    summary.plan = match (merge, on_cluster) {
        (true, false) => "merge",
        (true, true) => "merge (cluster)",
        (false, false) => "sql",
        (false, true) => "sql (cluster)",
    };
    if merge {
        // the operator computes the neighbour sets itself: nothing to materialise
        session::register_job_views(&ctx, &inputs, config, &[]).await?;
        // on a cluster the operators' own counts stay on the executors: where the executors
        // write the output their writers report them with the parts (below); where the client
        // writes a file, they are counted with the SQL stage, in a job of their own
        if on_cluster && matches!(destination, Destination::File(_)) {
            let ns_start = Instant::now();
            (summary.neighbour_set_rows, summary.queries_with_prior) =
                cancellable(cancel, neighbour_set_counts(&ctx)).await?;
            summary.neighbour_sets_time = Some(ns_start.elapsed());
        }
    } else {
        progress.set_message("computing neighbour sets");
        tracing::info!("computing neighbour sets");
        let ns_start = Instant::now();
        let timings = cancellable(
            cancel,
            session::register_job_views(
                &ctx,
                &inputs,
                config,
                // a cluster cannot scan this process's memory: nothing is materialised there
                if on_cluster {
                    &[]
                } else {
                    &[pipeline::neighbour_sets::STAGE.name]
                },
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
        summary.neighbour_sets_time = Some(ns_start.elapsed());
    }

    progress.set_message("computing prior and features, writing");
    tracing::info!("computing prior and features, writing {output}");
    let features_start = Instant::now();
    let mut features = output_frame(&ctx, &inputs, config).await?;
    for (name, value) in &options.constant_columns {
        features = features.with_column(name, lit(value.clone()))?;
    }
    let task = Arc::new(features.task_ctx());
    let (plan, written) = match &destination {
        Destination::Parts(staging) => {
            let written = async {
                let (plan, parts) = write_partitions(
                    &ctx,
                    features,
                    Arc::clone(&task),
                    &staging.url,
                    PartWriter::File(format),
                    on_cluster,
                    cancel,
                )
                .await?;
                // every partition writes one part; on a cluster the writer's plan is the scheduler's
                let expected =
                    (!on_cluster).then(|| plan.properties().partitioning.partition_count());
                // once every part is written the commit is not interrupted: a cancellation
                // arrives too late
                let written = staging.commit(parts, expected, format).await?;
                Ok::<_, Error>((plan, written))
            }
            .await;
            if written.is_err() {
                staging.discard().await;
            }
            written?
        }
        Destination::Staged(root) => {
            let (plan, parts) = write_partitions(
                &ctx,
                features,
                Arc::clone(&task),
                root.url.as_str(),
                PartWriter::File(format),
                on_cluster,
                cancel,
            )
            .await?;
            let expected = (!on_cluster).then(|| plan.properties().partitioning.partition_count());
            let parts = sink::parts::checked(&root.store, &root.prefix, parts, expected).await?;
            (plan, sink::WriteStats::of_parts(parts))
        }
        Destination::File(location) => {
            let plan = pipeline::merge::concat::concat_sorted_ranges(
                features.create_physical_plan().await?,
            )?;
            let mut rows = 0u64;
            let written = sink::write_plan_atomic(
                Arc::clone(&plan),
                task,
                location,
                format,
                cancel,
                |batch| {
                    rows += batch.num_rows() as u64;
                    progress.set_message(format!(
                        "computing prior and features, writing: {rows} rows"
                    ));
                },
            )
            .await?;
            (plan, written)
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
            let written = if on_cluster {
                // the executors write the data files, this process commits them
                let schema = Arc::new(features.schema().as_arrow().clone());
                let target = sink::delta::files::Target::prepare(
                    root.clone(),
                    commit.clone(),
                    Arc::clone(&schema),
                )
                .await?;
                let written = write_partitions(
                    &ctx,
                    features,
                    Arc::clone(&task),
                    &target.url(),
                    PartWriter::Delta {
                        partition_columns: commit.partition_columns.clone(),
                    },
                    true,
                    cancel,
                )
                .await;
                match written {
                    Ok((plan, parts)) => {
                        let written = target.commit(schema, parts).await?;
                        (plan, written)
                    }
                    Err(e) => {
                        target.discard(&[]).await;
                        return Err(e);
                    }
                }
            } else {
                let plan = pipeline::merge::concat::concat_sorted_ranges(
                    features.create_physical_plan().await?,
                )?;
                let written =
                    sink::delta::write(Arc::clone(&plan), &ctx.state(), root, &commit, cancel)
                        .await?;
                (plan, written)
            };
            // the backfill vacuums once, after all its days
            if options.delta.is_none() && config.delta.vacuum {
                summary.vacuumed = Some(sink::delta::vacuum(root, config.delta.retention()).await?);
            }
            written
        }
    };
    summary.written = written;
    summary.features_time = features_start.elapsed();
    if merge
        && on_cluster
        && let Some((rows, queries)) = sink::parts::neighbour_sets(&summary.written.parts)
    {
        (summary.neighbour_set_rows, summary.queries_with_prior) = (rows, queries);
    }
    if merge && !on_cluster {
        let mut profile = MergeProfile::default();
        for exec in pipeline::merge::find_merges(&plan) {
            let m = exec.measured();
            profile.partitions += exec.partitions();
            summary.neighbour_set_rows += m.neighbour_set_rows.value() as u64;
            summary.queries_with_prior += m.queries_with_prior.value() as u64;
            profile.add(m);
        }
        if keys == HistoryKeys::Merge {
            summary.history_rows = profile.history_rows;
        }
        summary.merge = Some(profile);
    }
    summary.total_time = start.elapsed();
    progress.finish_and_clear();
    Ok(summary)
}

/// Runs `features` with each partition written where it runs, by `writer` under `url`: locally
/// by this process (each partition of the plan), on a cluster by the executors (the client
/// gets one report row per file, never the features). Returns the plan (for its metrics) and
/// the files reported, which the caller commits.
async fn write_partitions(
    ctx: &SessionContext,
    features: DataFrame,
    task: Arc<datafusion::execution::TaskContext>,
    url: &str,
    writer: PartWriter,
    on_cluster: bool,
    cancel: &CancellationToken,
) -> Result<(
    Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    Vec<sink::parts::WrittenPart>,
)> {
    use sink::parts::{PartsTable, PartsWriterExec, parts_of, without_final_merge};
    let plan: Arc<dyn datafusion::physical_plan::ExecutionPlan> = if on_cluster {
        let table = PartsTable {
            input: features.logical_plan().clone(),
            staging: url.to_string(),
            writer,
        };
        ctx.read_table(Arc::new(table))?
            .create_physical_plan()
            .await?
    } else {
        let input = without_final_merge(features.create_physical_plan().await?);
        Arc::new(PartsWriterExec::new(input, url.to_string(), writer))
    };
    let report = if on_cluster {
        cancellable(cancel, async {
            Ok(datafusion::physical_plan::collect(Arc::clone(&plan), task).await?)
        })
        .await?
    } else {
        cancellable(cancel, write_every_partition(&plan, task)).await?
    };
    Ok((plan, parts_of(&report)?))
}

/// Runs every partition of the local parts writer `plan` to its end, even after one failed, and
/// returns their reports or the first error. (Collecting the plan would return at the first
/// error while the other writers still finish or delete their files: the caller then removed the
/// staging folder before a writer put its file there.)
async fn write_every_partition(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    task: Arc<datafusion::execution::TaskContext>,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
    use futures::TryStreamExt;
    let mut writers = tokio::task::JoinSet::new();
    for partition in 0..plan.properties().partitioning.partition_count() {
        let stream = plan.execute(partition, Arc::clone(&task))?;
        writers.spawn(stream.try_collect::<Vec<_>>());
    }
    let mut reports = Vec::new();
    let mut failed = None;
    while let Some(written) = writers.join_next().await {
        match written {
            Ok(Ok(batches)) => reports.extend(batches),
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(e) => {
                failed.get_or_insert(datafusion::error::DataFusionError::ExecutionJoin(Box::new(
                    e,
                )));
            }
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(reports),
    }
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
    session::register_job_views(&ctx, &inputs, config, &[]).await?;
    let plan = output_frame(&ctx, &inputs, config)
        .await?
        .create_physical_plan()
        .await?;
    let plan = pipeline::merge::concat::concat_sorted_ranges(plan)?;
    Ok(displayable(plan.as_ref()).indent(true).to_string())
}
