//! `q2q-prior backfill`: the feature job once per day, into `<output>/dt=D/`, for a feature store.
//!
//! plan (list inputs and output once; per day: window, snapshot, fingerprint, state) ->
//! build the days that need it, `--parallel` at a time, each under a partition lock:
//! clean leftovers -> unpublish (`_SUCCESS`, then `_manifest.json`) -> the feature job, staged
//! beside the destination and renamed into place -> drop data files of an older build ->
//! `_manifest.json` and `_SUCCESS`, both create-only.
//!
//! A reader that honours `_SUCCESS` or the manifest never sees a partition in between; a run
//! killed at any point leaves a partition without `_SUCCESS`, which the next run rebuilds.

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
use object_store::{ObjectMeta, ObjectStoreExt, PutMode, PutOptions, PutPayload};
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

/// The outcome of a backfill, printed on stderr.
#[derive(Debug, Default)]
pub struct Report {
    pub built: Vec<(NaiveDate, u64, Duration)>,
    pub skipped: Vec<(NaiveDate, String)>,
    pub failed: Vec<(NaiveDate, String)>,
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
        Ok(())
    }
}

/// The name of each day's data file.
fn data_file(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Parquet => "part-00000.parquet",
        OutputFormat::Csv => "part-00000.csv",
        OutputFormat::Json => "part-00000.json",
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
    config.input_specs()?;
    let output = config.output.clone().ok_or_else(|| {
        Error::config("no output: set `output` or --output to the feature store's folder")
    })?;
    let name = output
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    if [".parquet", ".csv", ".json", ".ndjson", ".jsonl"]
        .iter()
        .any(|ext| name.to_ascii_lowercase().ends_with(ext))
    {
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
        lock::host_name(),
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

    let outputs = list_partitions(&backfill.output, key).await?;
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
            let (files, manifest) = match outputs.iter().find(|(f, _)| *f == folder) {
                Some((_, files)) => (
                    files.clone(),
                    read_manifest(&backfill.output, &folder, files).await?,
                ),
                None => (Vec::new(), None),
            };
            let state = PartitionState::judge(
                &files,
                manifest.as_deref(),
                &backfill.config_hash,
                &fingerprint,
            );
            match (state.reason(), request.force) {
                (Some(reason), _) => Action::Build(reason),
                (None, true) => Action::Build("forced".into()),
                (None, false) => Action::Skip("up to date".into()),
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
    report.built.sort_by_key(|(d, _, _)| *d);
    report.skipped.sort_by_key(|(d, _)| *d);
    report.failed.sort_by_key(|(d, _)| *d);
    report.elapsed = start.elapsed();
    if interrupted {
        eprintln!("{report}");
        return Err(Error::Interrupted);
    }
    Ok(report)
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
    let result = build_locked(backfill, plan, cancel, &lock).await;
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
    if matches!(state, PartitionState::Current(_)) && plan.action.reason() != "forced" {
        return Ok(Built::AlreadyCurrent);
    }

    // leftovers of runs killed while staging; nobody else writes here while we hold the lock
    for (name, meta) in &files {
        if name.starts_with("_q2q_staging.") {
            tracing::info!("removing the leftover {}", meta.location);
            delete(output, &meta.location).await?;
        }
    }
    // unpublish first: from here on readers see the partition as incomplete
    for marker in [SUCCESS, MANIFEST] {
        if files.iter().any(|(n, _)| n == marker) {
            delete(output, &output.path_of(&format!("{folder}/{marker}"))).await?;
        }
    }

    let data_name = data_file(backfill.format);
    let mut config = backfill.config.clone();
    let engagement = config.engagement.as_mut().expect("checked by plan");
    engagement.paths = plan.engagement.clone();
    engagement.partitioned = false;
    let neighbours = config.neighbours.as_mut().expect("checked by plan");
    *neighbours = InputSpec {
        uri: plan.neighbours.clone(),
        partitioned: false,
        ..neighbours.clone()
    };
    config.output = Some(output.uri_of(&format!("{folder}/{data_name}")));
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
                ScalarValue::TimestampMicrosecond(Some(backfill.started.timestamp_micros()), utc()),
            ),
        ],
        runtime: Some(Arc::clone(&backfill.runtime)),
        quiet: true,
    };
    let summary = job::run_with(&config, cancel, &options).await?;

    // data files of an older build under other names
    for (name, meta) in &files {
        if !layout::is_hidden(name) && name != data_name {
            delete(output, &meta.location).await?;
        }
    }
    if !lock.still_held() {
        return Err(Error::Io(std::io::Error::other(format!(
            "{folder}: another run took over this partition's lock (this run stalled longer than \
             backfill.lock_timeout_secs); not publishing"
        ))));
    }
    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        partition: folder.to_string(),
        date: plan.day,
        row_count: summary.written.rows,
        files: vec![ManifestFile {
            path: data_name.into(),
            size: summary.written.bytes,
            sha256: summary.written.sha256.clone(),
        }],
        config_hash: backfill.config_hash.clone(),
        input_fingerprint: plan.input_fingerprint.clone(),
        engagement_window: [plan.window.0, plan.window.1],
        engagement_days: plan.engagement.len(),
        engagement_files: plan.engagement_files,
        neighbours: plan.neighbours.clone(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        run_id: backfill.run_id.clone(),
        created_timestamp: backfill.started.to_rfc3339(),
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("plain data serializes");
    create(output, &format!("{folder}/{MANIFEST}"), text).await?;
    create(output, &format!("{folder}/{SUCCESS}"), Vec::new()).await?;
    Ok(Built::Written(summary.written.rows))
}

async fn delete(output: &Root, path: &ObjectPath) -> Result<()> {
    match output.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A create-only put: fails if the object exists (another run published behind our lock).
async fn create(output: &Root, relative: &str, bytes: Vec<u8>) -> Result<()> {
    let path = output.path_of(relative);
    let options = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match output
        .store
        .put_opts(&path, PutPayload::from(bytes), options)
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Io(std::io::Error::other(
            format!("{path} appeared while this run held the partition's lock; not overwriting it"),
        ))),
        Err(e) => Err(e.into()),
    }
}
