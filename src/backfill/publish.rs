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
