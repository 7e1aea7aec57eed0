//! Planning a backfill: list the inputs and the output once, then for each day its engagement
//! window, neighbour snapshot, input fingerprint and state, and what to do about it.

use super::*;

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

pub(super) async fn plan_days(backfill: &Backfill, request: &Request) -> Result<Vec<DayPlan>> {
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
pub(super) async fn list_partitions(
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

pub(super) async fn partition_files(
    output: &Root,
    folder: &str,
) -> Result<Vec<(String, ObjectMeta)>> {
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

pub(super) async fn read_manifest(
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
