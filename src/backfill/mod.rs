//! `q2q-prior backfill`: the feature job once per day, into `<output>/dt=D/`, for a feature store.
//!
//! plan (list inputs and output once; per day: window, snapshot, fingerprint, state) ->
//! build the days that need it, `--parallel` at a time, each under a partition lock:
//!
//! 1. clean leftovers: staging objects, and data files no manifest lists (a killed build's);
//! 2. delete `_SUCCESS`, so that readers that list the folder stop reading it;
//! 3. the feature job writes a data file with a name of its own (`part-<run>.parquet`), staged
//!    beside it and renamed into place; the previous build's file and manifest stay;
//! 4. check that the lock is still this run's (else delete the new file and fail);
//! 5. write `_manifest.json` in one put, create-only or as a conditional update of the version
//!    found (a plain overwrite where the store has none): it now lists the new file;
//! 6. delete the data files the manifest does not list (the previous build's);
//! 7. create `_SUCCESS`.
//!
//! So a reader that follows the manifest always finds every file it lists (the manifest switches
//! from one complete build to the next in one put), and a reader that honours `_SUCCESS` sees the
//! folder only when it holds exactly one build. A run killed at any point leaves a partition
//! without `_SUCCESS`, which the next run rebuilds. A rebuild that fails (bad input, Ctrl-C)
//! deletes its own file and puts `_SUCCESS` back on the previous build, if that was intact.

mod delta;
pub mod layout;
pub mod lock;
pub mod manifest;
mod plan;
mod publish;

pub use plan::{Action, DayPlan};
use plan::{partition_files, plan_days, read_manifest};
use publish::{Built, build, clear_abandoned_locks};

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::common::ScalarValue;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::config::{DuplicatePolicy, InputSpec, JobConfig, OutputFormat, SnapshotMode};
use crate::error::{Error, Result};
use crate::job::{self, RunOptions};
use crate::session;
use layout::{DatedFiles, Root};
use manifest::{MANIFEST, Manifest, ManifestFile, PartitionState, SUCCESS};

/// What to backfill.
#[derive(Debug, Clone)]
pub struct Request {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Partitions built at once.
    pub parallel: usize,
    /// Rebuild partitions that are up to date.
    pub force: bool,
}

/// Everything the days share.
struct Backfill {
    config: JobConfig,
    runtime: Arc<RuntimeEnv>,
    output: Root,
    format: OutputFormat,
    config_hash: String,
    run_id: String,
    started: DateTime<Utc>,
}

impl Backfill {
    /// The feature job of `plan`'s day, writing to `output`: its window and neighbour snapshot
    /// as inputs, the day's timestamps as constant columns.
    fn day_job(&self, plan: &DayPlan, output: String) -> (JobConfig, RunOptions) {
        let mut config = self.config.clone();
        let engagement = config.engagement.as_mut().expect("checked by plan");
        engagement.paths = plan.engagement.clone();
        engagement.partitioned = false;
        let neighbours = config.neighbours.as_mut().expect("checked by plan");
        *neighbours = InputSpec {
            uri: plan.neighbours.clone(),
            partitioned: false,
            ..neighbours.clone()
        };
        config.output = Some(output);
        let event = plan
            .day
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_micros();
        let utc = || Some(Arc::from("UTC"));
        let options = RunOptions {
            constant_columns: vec![
                (
                    "event_timestamp".into(),
                    ScalarValue::TimestampMicrosecond(Some(event), utc()),
                ),
                (
                    "created_timestamp".into(),
                    ScalarValue::TimestampMicrosecond(Some(self.started.timestamp_micros()), utc()),
                ),
            ],
            runtime: Some(Arc::clone(&self.runtime)),
            quiet: true,
            delta: None,
            staged_parts: false,
        };
        (config, options)
    }

    /// What `plan`'s day is built from and by which run, as its record keeps it.
    fn build_record(&self, plan: &DayPlan) -> manifest::Build {
        manifest::Build {
            config_hash: self.config_hash.clone(),
            input_fingerprint: plan.input_fingerprint.clone(),
            engagement_window: [plan.window.0, plan.window.1],
            engagement_days: plan.engagement.len(),
            engagement_files: plan.engagement_files,
            neighbours: plan.neighbours.clone(),
            engine_version: env!("CARGO_PKG_VERSION").into(),
            run_id: self.run_id.clone(),
            created_timestamp: self.started.to_rfc3339(),
        }
    }
}

/// The outcome of a backfill, printed on stderr.
#[derive(Debug, Default)]
pub struct Report {
    pub built: Vec<(NaiveDate, u64, Duration)>,
    pub skipped: Vec<(NaiveDate, String)>,
    pub failed: Vec<(NaiveDate, String)>,
    /// Files the vacuum of a Delta table deleted at the end.
    pub vacuumed: Option<usize>,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows: u64 = self.built.iter().map(|(_, r, _)| r).sum();
        writeln!(
            f,
            "q2q-prior backfill: {} built ({} rows), {} skipped, {} failed in {:.1}s",
            self.built.len(),
            rows,
            self.skipped.len(),
            self.failed.len(),
            self.elapsed.as_secs_f64()
        )?;
        for (day, rows, took) in &self.built {
            writeln!(
                f,
                "  built   {day}  {rows} rows  {:.1}s",
                took.as_secs_f64()
            )?;
        }
        for (day, why) in &self.skipped {
            writeln!(f, "  skipped {day}  {why}")?;
        }
        for (day, why) in &self.failed {
            writeln!(f, "  FAILED  {day}  {why}")?;
        }
        if let Some(n) = self.vacuumed {
            writeln!(
                f,
                "  vacuum: deleted {n} file(s) no table version within the retention needs"
            )?;
        }
        Ok(())
    }
}

fn validate(config: &JobConfig, request: &Request) -> Result<String> {
    config.validate()?;
    if request.from > request.to {
        return Err(Error::config(format!(
            "--from {} is after --to {}",
            request.from, request.to
        )));
    }
    if request.parallel == 0 {
        return Err(Error::config("--parallel must be at least 1"));
    }
    let (engagement, neighbours) = config.input_specs()?;
    let output = config.output.clone().ok_or_else(|| {
        Error::config("no output: set `output` or --output to the feature store's folder")
    })?;
    // its cleanup deletes files no manifest lists: never below an input
    crate::io::storage::refuse_overlap(
        &output,
        true,
        &[
            ("engagement", &engagement.uri),
            ("neighbours", &neighbours.uri),
        ],
    )?;
    let name = output
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    if OutputFormat::from_extension(name).is_some() {
        return Err(Error::config(format!(
            "backfill writes one folder per day below its output: '{output}' names a file; \
             give the dataset's folder (e.g. s3://bucket/features/)"
        )));
    }
    Ok(output)
}

/// Plans every day of `request`: which partitions to build and why. Reads listings and manifests
/// only.
pub async fn plan(config: &JobConfig, request: &Request) -> Result<Vec<DayPlan>> {
    let backfill = prepare(config, request)?;
    plan_days(&backfill, request).await
}

fn prepare(config: &JobConfig, request: &Request) -> Result<Backfill> {
    let output = validate(config, request)?;
    let mut config = config.clone();
    // a window is many daily rows per (query, product): they are summed
    config.features.on_duplicate = DuplicatePolicy::Sum;
    let runtime = session::runtime_env(&config.execution)?;
    let output = Root::open(&runtime, &output)?;
    let format = config.output_format()?;
    let config_hash = manifest::config_hash(&config, &config.features);
    let started = Utc::now();
    let run_id = format!(
        "{}-{}-{}",
        started.format("%Y%m%dT%H%M%S%.6fZ"),
        crate::process::host_name(),
        std::process::id()
    );
    Ok(Backfill {
        config,
        runtime,
        output,
        format,
        config_hash,
        run_id,
        started,
    })
}

/// Runs the backfill: builds what [`plan`] says, `parallel` partitions at a time, with a progress
/// bar on stderr. A failed partition does not stop the others; the report lists it.
pub async fn run(
    config: &JobConfig,
    request: &Request,
    cancel: &CancellationToken,
) -> Result<Report> {
    let start = Instant::now();
    let backfill = Arc::new(prepare(config, request)?);
    let plans = plan_days(&backfill, request).await?;
    let mut report = Report::default();
    let mut to_build = Vec::new();
    for plan in plans {
        match &plan.action {
            Action::Skip(why) => report.skipped.push((plan.day, why.clone())),
            Action::Fail(why) => report.failed.push((plan.day, why.clone())),
            Action::Build(_) => to_build.push(plan),
        }
    }
    tracing::info!(
        "run {} started: {} partition(s) to build",
        backfill.run_id,
        to_build.len()
    );
    let bar = ProgressBar::new(to_build.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} partitions, ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let counts = |r: &Report| {
        format!(
            "(built {}, skipped {}, failed {})",
            r.built.len(),
            r.skipped.len(),
            r.failed.len()
        )
    };
    bar.set_message(counts(&report));
    let mut builds = futures::stream::iter(to_build.into_iter().map(|plan| {
        let backfill = Arc::clone(&backfill);
        let cancel = cancel.clone();
        async move {
            let started = Instant::now();
            let result = build(&backfill, &plan, &cancel).await;
            (plan, result, started.elapsed())
        }
    }))
    .buffer_unordered(request.parallel);
    let mut interrupted = false;
    while let Some((plan, result, took)) = builds.next().await {
        match result {
            Ok(Built::Written(rows)) => {
                tracing::info!("built {} ({rows} rows)", plan.folder);
                report.built.push((plan.day, rows, took));
            }
            Ok(Built::AlreadyCurrent) => report
                .skipped
                .push((plan.day, "built meanwhile by another run".into())),
            Err(Error::Interrupted) => interrupted = true,
            Err(e) => {
                let mut message = e.to_string();
                if let Some(hint) = e.hint() {
                    message.push_str(&format!(" (hint: {hint})"));
                }
                tracing::warn!("{} failed: {message}", plan.folder);
                report.failed.push((plan.day, message));
            }
        }
        bar.inc(1);
        bar.set_message(counts(&report));
    }
    bar.finish_and_clear();
    if !interrupted {
        clear_abandoned_locks(&backfill, &report).await;
        if backfill.format == OutputFormat::Delta && backfill.config.delta.vacuum {
            match crate::io::sink::delta::vacuum(
                &backfill.output,
                backfill.config.delta.retention(),
            )
            .await
            {
                Ok(n) => report.vacuumed = Some(n),
                Err(e) => tracing::warn!("the vacuum after the backfill failed: {e}"),
            }
        }
    }
    report.built.sort_by_key(|(d, _, _)| *d);
    report.skipped.sort_by_key(|(d, _)| *d);
    report.failed.sort_by_key(|(d, _)| *d);
    report.elapsed = start.elapsed();
    tracing::info!("run {} ended", backfill.run_id);
    if interrupted {
        eprintln!("{}", crate::redact::text(&report.to_string()));
        return Err(Error::Interrupted);
    }
    Ok(report)
}
