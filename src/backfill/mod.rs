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

/// What one day needs and what its partition holds.
#[derive(Debug, Clone)]
pub struct DayPlan {
    pub day: NaiveDate,
    pub folder: String,
    pub action: Action,
    pub window: (NaiveDate, NaiveDate),
    /// Engagement day folders read, as URIs.
    pub engagement: Vec<String>,
    pub engagement_files: usize,
    /// Neighbour lists read: a snapshot folder or the fixed path.
    pub neighbours: String,
    pub input_fingerprint: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Build(String),
    Skip(String),
    /// The day cannot be built (no engagement in its window, no snapshot).
    Fail(String),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Build(_) => "build",
            Action::Skip(_) => "skip",
            Action::Fail(_) => "fail",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Action::Build(r) | Action::Skip(r) | Action::Fail(r) => r,
        }
    }
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

/// The name of the data file a run writes in each day's folder: its own, so that a build never
/// overwrites the file of the build readers are reading.
fn data_file(format: OutputFormat, run_id: &str) -> String {
    let ext = match format {
        // a Delta table's files are Parquet, named by delta-rs
        OutputFormat::Parquet | OutputFormat::Delta => "parquet",
        OutputFormat::Csv => "csv",
        OutputFormat::Json => "json",
    };
    let id = crate::hash::hex(&sha2::Sha256::digest(run_id.as_bytes()));
    format!("part-{}.{ext}", &id[..16])
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

async fn plan_days(backfill: &Backfill, request: &Request) -> Result<Vec<DayPlan>> {
    let config = &backfill.config;
    let key = config.backfill.date_partition.as_str();
    let (engagement_spec, neighbours_spec) = config.input_specs()?;
    let engagement_root = Root::open(&backfill.runtime, &engagement_spec.uri)?;
    let engagement = DatedFiles::list(&engagement_root, key).await?;
    layout::require_days("engagement", &engagement_root, &engagement, key)?;
    let neighbours_root = Root::open(&backfill.runtime, &neighbours_spec.uri)?;
    let neighbours = DatedFiles::list(&neighbours_root, key).await?;
    let snapshots = config.backfill.neighbours_snapshot == SnapshotMode::Latest
        && !neighbours.by_day.is_empty();
    let fixed_files: Vec<ObjectMeta> = if snapshots {
        Vec::new()
    } else if neighbours.undated.is_empty() && neighbours.by_day.is_empty() {
        // a single file rather than a folder
        match neighbours_root.store.head(&neighbours_root.prefix).await {
            Ok(meta) => vec![meta],
            Err(e) => {
                return Err(Error::config(format!(
                    "neighbours '{}': no files found ({e})",
                    neighbours_spec.uri
                )));
            }
        }
    } else {
        neighbours
            .undated
            .iter()
            .chain(neighbours.by_day.values().flatten())
            .cloned()
            .collect()
    };

    // what the output holds: partition folders, or the days of a Delta table
    let (outputs, delta_days) = if backfill.format == OutputFormat::Delta {
        (
            Vec::new(),
            Some(delta::Days::load(&backfill.output, key).await?),
        )
    } else {
        (list_partitions(&backfill.output, key).await?, None)
    };
    let mut plans = Vec::new();
    for day in layout::days(request.from, request.to) {
        let (first, last) = layout::window(day, config.backfill.window_days);
        let days: Vec<(&NaiveDate, &Vec<ObjectMeta>)> =
            engagement.by_day.range(first..=last).collect();
        let engagement_files: Vec<&ObjectMeta> =
            days.iter().flat_map(|(_, files)| files.iter()).collect();
        let (neighbours_uri, neighbour_files): (String, Vec<&ObjectMeta>) = if snapshots {
            match neighbours.by_day.range(..=day).next_back() {
                Some((snapshot, files)) => (
                    format!(
                        "{}/",
                        neighbours_root.uri_of(&layout::folder(key, *snapshot))
                    ),
                    files.iter().collect(),
                ),
                None => (String::new(), Vec::new()),
            }
        } else {
            (neighbours_spec.uri.clone(), fixed_files.iter().collect())
        };
        let folder = layout::folder(key, day);
        let fingerprint = layout::fingerprint(
            engagement_files
                .iter()
                .copied()
                .chain(neighbour_files.iter().copied()),
        );
        let action = if days.is_empty() {
            Action::Fail(format!(
                "no engagement in its window {first}..{last} under {}/",
                engagement_root.uri
            ))
        } else if neighbour_files.is_empty() {
            Action::Fail(format!(
                "no neighbour snapshot on or before {day} under {}/",
                neighbours_root.uri
            ))
        } else {
            let state = match &delta_days {
                Some(days) => Ok(days.judge(day, &backfill.config_hash, &fingerprint)),
                None => {
                    let files = outputs
                        .iter()
                        .find(|(f, _)| *f == folder)
                        .map(|(_, files)| files.clone())
                        .unwrap_or_default();
                    read_manifest(&backfill.output, &folder, &files)
                        .await
                        .map(|manifest| {
                            PartitionState::judge(
                                &files,
                                manifest.as_deref(),
                                &backfill.config_hash,
                                &fingerprint,
                            )
                        })
                        .map_err(|e| format!("cannot read its {MANIFEST}: {e}"))
                }
            };
            match state.map(|state| (state.reason(), request.force)) {
                Err(why) => Action::Fail(why),
                Ok((Some(reason), _)) => Action::Build(reason),
                Ok((None, true)) => Action::Build("forced".into()),
                Ok((None, false)) => Action::Skip("up to date".into()),
            }
        };
        plans.push(DayPlan {
            day,
            folder,
            action,
            window: (first, last),
            engagement: days
                .iter()
                .map(|(d, _)| format!("{}/", engagement_root.uri_of(&layout::folder(key, **d))))
                .collect(),
            engagement_files: engagement_files.len(),
            neighbours: neighbours_uri,
            input_fingerprint: fingerprint,
        });
    }
    Ok(plans)
}

/// The output's partition folders and their files (name, metadata), from one listing.
async fn list_partitions(
    output: &Root,
    key: &str,
) -> Result<Vec<(String, Vec<(String, ObjectMeta)>)>> {
    let mut partitions: Vec<(String, Vec<(String, ObjectMeta)>)> = Vec::new();
    for meta in output.list().await? {
        let parts = output.relative(&meta);
        let [folder, name] = parts.as_slice() else {
            continue;
        };
        if layout::parse_day(key, folder).is_none() {
            continue;
        }
        match partitions.iter_mut().find(|(f, _)| f == folder) {
            Some((_, files)) => files.push((name.clone(), meta)),
            None => partitions.push((folder.clone(), vec![(name.clone(), meta)])),
        }
    }
    Ok(partitions)
}

async fn partition_files(output: &Root, folder: &str) -> Result<Vec<(String, ObjectMeta)>> {
    let prefix = output.path_of(folder);
    Ok(output
        .list_below(&prefix)
        .await?
        .into_iter()
        .filter_map(|meta| {
            let name = meta
                .location
                .prefix_match(&prefix)?
                .next()?
                .as_ref()
                .to_string();
            Some((name, meta))
        })
        .collect())
}

async fn read_manifest(
    output: &Root,
    folder: &str,
    files: &[(String, ObjectMeta)],
) -> Result<Option<Vec<u8>>> {
    if !files.iter().any(|(n, _)| n == MANIFEST) {
        return Ok(None);
    }
    let path = output.path_of(&format!("{folder}/{MANIFEST}"));
    match output.store.get(&path).await {
        Ok(got) => Ok(Some(got.bytes().await?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
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

/// Locks of partitions this run did not build, left by runs killed after publishing (their
/// partitions are up to date, so no build takes the lock over): removed when their holder is gone.
async fn clear_abandoned_locks(backfill: &Backfill, report: &Report) {
    let output = &backfill.output;
    let folder = output.path_of("_q2q/locks");
    let Ok(locks) = output.list_below(&folder).await else {
        return;
    };
    let built: Vec<String> = report
        .built
        .iter()
        .map(|(day, _, _)| layout::folder(&backfill.config.backfill.date_partition, *day))
        .collect();
    let timeout = Duration::from_secs(backfill.config.backfill.lock_timeout_secs.max(1));
    for meta in locks {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        let Some(partition) = name.strip_suffix(".lock") else {
            continue;
        };
        if built.iter().any(|b| b == partition) {
            continue;
        }
        match lock::clear_abandoned(&output.store, &meta.location, &backfill.run_id, timeout).await
        {
            Ok(true) => tracing::info!("removed the abandoned lock {}", meta.location),
            Ok(false) => {}
            Err(e) => tracing::warn!("could not clear the lock {}: {e}", meta.location),
        }
    }
}

enum Built {
    Written(u64),
    AlreadyCurrent,
}

/// Builds one partition under its lock.
async fn build(backfill: &Backfill, plan: &DayPlan, cancel: &CancellationToken) -> Result<Built> {
    let output = &backfill.output;
    let lock_path = output.path_of(&format!("_q2q/locks/{}.lock", plan.folder));
    let timeout = Duration::from_secs(backfill.config.backfill.lock_timeout_secs.max(1));
    let lock = lock::acquire(
        Arc::clone(&output.store),
        lock_path,
        &backfill.run_id,
        timeout,
        cancel,
        |holder| {
            tracing::info!(
                "{} is being built by run {} (pid {} on {}); waiting",
                plan.folder,
                holder.run_id,
                holder.pid,
                holder.host
            )
        },
    )
    .await?;
    // the store's temp files of lock puts killed midway (a live put's is milliseconds old)
    for temp in layout::local_temp_files(output, "_q2q/locks", Duration::from_secs(60)) {
        let name = temp.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with(&format!("{}.lock", plan.folder))) {
            remove_local(&temp)?;
        }
    }
    let result = if backfill.format == OutputFormat::Delta {
        delta::build(backfill, plan, cancel).await
    } else {
        build_locked(backfill, plan, cancel, &lock).await
    };
    lock.release().await;
    result
}

async fn build_locked(
    backfill: &Backfill,
    plan: &DayPlan,
    cancel: &CancellationToken,
    lock: &lock::PartitionLock,
) -> Result<Built> {
    let output = &backfill.output;
    let folder = plan.folder.as_str();
    // another run may have built it while this one waited for the lock
    let files = partition_files(output, folder).await?;
    let manifest = read_manifest(output, folder, &files).await?;
    let state = PartitionState::judge(
        &files,
        manifest.as_deref(),
        &backfill.config_hash,
        &plan.input_fingerprint,
    );
    if matches!(state, PartitionState::Current) && plan.action.reason() != "forced" {
        return Ok(Built::AlreadyCurrent);
    }

    let previous: Option<Manifest> = manifest
        .as_deref()
        .and_then(|text| serde_json::from_slice(text).ok());
    let listed = |name: &str| {
        previous
            .as_ref()
            .is_some_and(|m| m.files.iter().any(|f| f.path == name))
    };
    // published and intact: put back if this rebuild fails
    let was_published = matches!(state, PartitionState::Current | PartitionState::Stale(_));

    // 1. leftovers of killed runs; nobody else writes here while this run holds the lock
    for (name, meta) in &files {
        if name.starts_with("_q2q_staging.") || (!layout::is_hidden(name) && !listed(name)) {
            tracing::info!("removing the leftover {}", meta.location);
            delete(output, &meta.location).await?;
        }
    }
    for temp in layout::local_temp_files(output, folder, Duration::ZERO) {
        tracing::info!("removing the leftover {}", temp.display());
        remove_local(&temp)?;
    }
    // 2. readers that list the folder stop reading it
    let success = output.path_of(&format!("{folder}/{SUCCESS}"));
    if files.iter().any(|(n, _)| n == SUCCESS) {
        delete(output, &success).await?;
    }

    // 3. the new build, under a name of its own
    let data_name = data_file(backfill.format, &backfill.run_id);
    let data_path = output.path_of(&format!("{folder}/{data_name}"));
    let (config, options) = backfill.day_job(plan, output.uri_of(&format!("{folder}/{data_name}")));
    let built = job::run_with(&config, cancel, &options).await;
    let lost = match &built {
        Ok(_) => !lock.confirm().await?, // 4.
        Err(_) => false,
    };
    let summary = match built {
        Ok(summary) if !lost => summary,
        failed => {
            if let Err(e) = delete(output, &data_path).await {
                tracing::warn!("could not delete {data_path}: {e}");
            }
            if was_published && !lost {
                match put_success(output, &success).await {
                    Ok(()) => tracing::info!(
                        "{folder}: the rebuild failed; the previous build stays published"
                    ),
                    Err(e) => tracing::warn!("could not republish {folder}: {e}"),
                }
            }
            return match failed {
                Err(e) => Err(e),
                Ok(_) => Err(Error::Io(std::io::Error::other(format!(
                    "{folder}: another run took over this partition's lock (this run stalled \
                     longer than backfill.lock_timeout_secs); not publishing"
                )))),
            };
        }
    };

    // 5. the manifest switches to the new build
    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        partition: folder.to_string(),
        date: plan.day,
        row_count: summary.written.rows,
        files: vec![ManifestFile {
            path: data_name.clone(),
            size: summary.written.bytes,
            sha256: summary.written.sha256.clone(),
        }],
        build: backfill.build_record(plan),
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("plain data serializes");
    let previous_version =
        files
            .iter()
            .find(|(n, _)| n == MANIFEST)
            .map(|(_, meta)| UpdateVersion {
                e_tag: meta.e_tag.clone(),
                version: meta.version.clone(),
            });
    if let Err(e) = publish_manifest(output, folder, previous_version, text, &backfill.run_id).await
    {
        if let Err(e) = delete(output, &data_path).await {
            tracing::warn!("could not delete {data_path}: {e}");
        }
        return Err(e);
    }
    // 6. the previous build's files
    for (name, meta) in partition_files(output, folder).await? {
        if !layout::is_hidden(&name) && name != data_name {
            delete(output, &meta.location).await?;
        }
    }
    // 7.
    put_success(output, &success).await?;
    Ok(Built::Written(summary.written.rows))
}

async fn delete(output: &Root, path: &ObjectPath) -> Result<()> {
    match output.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes the partition's manifest: create-only when there was none, else a conditional update of
/// the version this run found (a plain overwrite where the store has no conditional update; the
/// lock covers it). Either fails, rather than overwrite, when another run published meanwhile.
async fn publish_manifest(
    output: &Root,
    folder: &str,
    previous: Option<UpdateVersion>,
    text: Vec<u8>,
    run_id: &str,
) -> Result<()> {
    let path = output.path_of(&format!("{folder}/{MANIFEST}"));
    let mode = match previous {
        None => PutMode::Create,
        Some(version) if version.e_tag.is_some() || version.version.is_some() => {
            PutMode::Update(version)
        }
        Some(_) => PutMode::Overwrite,
    };
    let put = |mode: PutMode| {
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        output
            .store
            .put_opts(&path, PutPayload::from(text.clone()), options)
    };
    let result = match put(mode).await {
        Err(object_store::Error::NotImplemented { .. }) => put(PutMode::Overwrite).await,
        other => other,
    };
    match result {
        Ok(_) => Ok(()),
        Err(
            e @ (object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }),
        ) => {
            // a put retried after it succeeded finds its own manifest
            let current = output.store.get(&path).await?.bytes().await?;
            if serde_json::from_slice::<Manifest>(&current).is_ok_and(|m| m.build.run_id == run_id)
            {
                return Ok(());
            }
            Err(Error::Io(std::io::Error::other(format!(
                "{path} was published by another run while this one held the partition's lock \
                 (it stalled longer than backfill.lock_timeout_secs?); not overwriting it ({e})"
            ))))
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates `_SUCCESS` (create-only: a put retried after it succeeded finds it there, which is
/// what it wanted).
async fn put_success(output: &Root, path: &ObjectPath) -> Result<()> {
    let options = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match output
        .store
        .put_opts(path, PutPayload::from_static(b""), options)
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn remove_local(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))),
        _ => Ok(()),
    }
}
