//! Building and publishing one day under its partition lock: the protocol of the module's steps
//! 1-7 (leftovers, `_SUCCESS` removed, the data file, the lock checked, the manifest, the previous
//! build's files deleted, `_SUCCESS` created), and clearing abandoned locks.

use super::*;

/// Locks of partitions this run did not build, left by runs killed after publishing (their
/// partitions are up to date, so no build takes the lock over): removed when their holder is gone.
pub(super) async fn clear_abandoned_locks(backfill: &Backfill, report: &Report) {
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

pub(super) enum Built {
    Written(u64),
    AlreadyCurrent,
}

/// Builds one partition under its lock.
pub(super) async fn build(
    backfill: &Backfill,
    plan: &DayPlan,
    cancel: &CancellationToken,
) -> Result<Built> {
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

pub(super) async fn build_locked(
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

    // 3. the new build, under names of its own: one file, or on a cluster the executors' parts,
    // staged in a hidden folder of the day's and then moved next to it
    let data_name = data_file(backfill.format, &backfill.run_id);
    let staged = backfill.config.execution.cluster.is_some();
    let (job_output, staging) = if staged {
        let staging = format!("{folder}/{}", staging_folder(&backfill.run_id));
        (output.uri_of(&format!("{staging}/")), Some(staging))
    } else {
        (output.uri_of(&format!("{folder}/{data_name}")), None)
    };
    let (config, mut options) = backfill.day_job(plan, job_output);
    options.staged_parts = staged;
    let built = async {
        let summary = job::run_with(&config, cancel, &options).await?;
        let files = match &staging {
            None => vec![ManifestFile {
                path: data_name.clone(),
                size: summary.written.bytes,
                sha256: summary.written.sha256.clone(),
            }],
            Some(staging) => move_parts(output, folder, staging, &data_name, &summary).await?,
        };
        Ok::<_, Error>((summary, files))
    }
    .await;
    let lost = match &built {
        Ok(_) => !lock.confirm().await?, // 4.
        Err(_) => false,
    };
    // what this build wrote, to delete if it is not published
    let discard = || async {
        if let Some(staging) = &staging
            && let Err(e) = remove_staging(output, staging).await
        {
            tracing::warn!("could not remove the staging folder {staging}: {e}");
        }
        let ours = |name: &str| name == data_name || parts_of_build(name, &data_name).is_some();
        for (name, meta) in partition_files(output, folder).await.unwrap_or_default() {
            if ours(&name)
                && let Err(e) = delete(output, &meta.location).await
            {
                tracing::warn!("could not delete {}: {e}", meta.location);
            }
        }
    };
    let (summary, new_files) = match built {
        Ok(built) if !lost => built,
        failed => {
            discard().await;
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
        files: new_files,
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
        discard().await;
        return Err(e);
    }
    // 6. the previous build's files
    for (name, meta) in partition_files(output, folder).await? {
        if !layout::is_hidden(&name) && !manifest.files.iter().any(|f| f.path == name) {
            delete(output, &meta.location).await?;
        }
    }
    // 7.
    put_success(output, &success).await?;
    Ok(Built::Written(summary.written.rows))
}

pub(super) async fn delete(output: &Root, path: &ObjectPath) -> Result<()> {
    match output.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes the partition's manifest: create-only when there was none, else a conditional update of
/// the version this run found (a plain overwrite where the store has no conditional update; the
/// lock covers it). Either fails, rather than overwrite, when another run published meanwhile.
pub(super) async fn publish_manifest(
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
pub(super) async fn put_success(output: &Root, path: &ObjectPath) -> Result<()> {
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

pub(super) fn remove_local(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))),
        _ => Ok(()),
    }
}

/// The hidden folder of a day's folder where a run's executors stage their parts.
fn staging_folder(run_id: &str) -> String {
    let id = crate::hash::hex(&sha2::Sha256::digest(run_id.as_bytes()));
    format!("_q2q_staging.{}.parts.partial", &id[..16])
}

/// Part `i` of the build whose single file would be `data_name`: `part-<id>-00000.parquet`.
fn part_of_build(data_name: &str, i: usize) -> String {
    let (stem, ext) = data_name
        .rsplit_once('.')
        .expect("data_file has an extension");
    format!("{stem}-{i:05}.{ext}")
}

/// The part number of `name` if it is a part of the build whose single file is `data_name`.
fn parts_of_build(name: &str, data_name: &str) -> Option<usize> {
    let (stem, ext) = data_name.rsplit_once('.')?;
    let (digits, rest) = name
        .strip_prefix(stem)?
        .strip_prefix('-')?
        .split_once('.')?;
    (rest == ext && digits.len() == 5 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Moves the parts the job staged in `staging` into the day's `folder`, in the order of their
/// partitions, as `part-<id>-00000.<ext>`, ...; returns them as the manifest lists them.
async fn move_parts(
    output: &Root,
    folder: &str,
    staging: &str,
    data_name: &str,
    summary: &job::JobSummary,
) -> Result<Vec<ManifestFile>> {
    let prefix = output.path_of(staging);
    let mut files = Vec::with_capacity(summary.written.parts.len());
    for (i, part) in summary.written.parts.iter().enumerate() {
        let name = part_of_build(data_name, i);
        output
            .store
            .rename(
                &prefix.clone().join(part.file.as_str()),
                &output.path_of(&format!("{folder}/{name}")),
            )
            .await?;
        files.push(ManifestFile {
            path: name,
            size: part.bytes,
            sha256: part.sha256.clone(),
        });
    }
    remove_staging(output, staging).await?;
    Ok(files)
}

/// Removes a build's staging folder: whatever objects are left in it and, on a local disk, the
/// folder itself (an object store has no folders to leave behind).
async fn remove_staging(output: &Root, staging: &str) -> Result<()> {
    for meta in output.list_below(&output.path_of(staging)).await? {
        delete(output, &meta.location).await?;
    }
    if let Some(dir) = &output.local {
        let path = dir.join(staging);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The name of the data file a run writes in each day's folder: its own, so that a build never
/// overwrites the file of the build readers are reading.
pub(super) fn data_file(format: OutputFormat, run_id: &str) -> String {
    let ext = match format {
        // a Delta table's files are Parquet, named by delta-rs
        OutputFormat::Parquet | OutputFormat::Delta => "parquet",
        OutputFormat::Csv => "csv",
        OutputFormat::Json => "json",
    };
    let id = crate::hash::hex(&sha2::Sha256::digest(run_id.as_bytes()));
    format!("part-{}.{ext}", &id[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builds_parts_are_named_after_its_single_file_and_recognised_as_its_own() {
        let data = data_file(OutputFormat::Parquet, "run-1");
        let first = part_of_build(&data, 0);
        assert_eq!(
            first,
            format!("{}-00000.parquet", data.trim_end_matches(".parquet"))
        );
        assert_eq!(parts_of_build(&first, &data), Some(0));
        assert_eq!(parts_of_build(&part_of_build(&data, 12), &data), Some(12));
        // another run's parts, the single file itself, other extensions: not this build's parts
        let other = data_file(OutputFormat::Parquet, "run-2");
        assert_eq!(parts_of_build(&part_of_build(&other, 0), &data), None);
        assert_eq!(parts_of_build(&data, &data), None);
        assert_eq!(
            parts_of_build(&first.replace(".parquet", ".csv"), &data),
            None
        );
        // the staging folder is hidden, so readers and the partition's judge skip it
        assert!(layout::is_hidden(&staging_folder("run-1")));
    }

    /// A failed day on a local disk leaves no staging folder behind: not its files, not the
    /// empty folder (the object-store listing alone would miss the folder).
    #[tokio::test]
    async fn removing_a_staging_folder_on_a_local_disk_leaves_no_folder() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("dt=2026-01-01");
        let staging = format!("dt=2026-01-01/{}", staging_folder("run-1"));
        let nested = dir.path().join(&staging).join("sub");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(dir.path().join(&staging).join("part-0.parquet"), b"x").unwrap();
        std::fs::write(day.join("kept.parquet"), b"y").unwrap();
        let output = Root::open(&RuntimeEnv::default(), dir.path().to_str().unwrap()).unwrap();

        remove_staging(&output, &staging).await.unwrap();
        let left: Vec<_> = std::fs::read_dir(&day)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["kept.parquet"]);
        // a folder that is already gone is no error
        remove_staging(&output, &staging).await.unwrap();
    }
}
