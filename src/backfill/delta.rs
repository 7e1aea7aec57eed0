//! The backfill into a Delta table (`format = "delta"`): one table at the output, partitioned by
//! the date key (`dt`, a DATE column), each day built as one commit that replaces exactly that
//! day's rows (replaceWhere `dt = D`), so that a reader sees the day's previous build or its new
//! one, never both and never neither.
//!
//! A day's state comes from the Delta log, not from files of our own: the rows the table holds
//! for it, and the newest backfill commit that replaced it, whose `commitInfo` carries the day's
//! record (config hash, input fingerprint, run id: [`DayRecord`]) and whose
//! `operationMetrics.num_added_rows` is the row count it wrote. Builds of one day are serialised
//! by the same partition lock as the Parquet layout (in `_q2q/locks/`, which Delta readers
//! ignore); builds of different days commit concurrently, the log ordering their commits. A build
//! killed before its commit leaves files no version refers to: invisible to every reader, removed
//! by the vacuum that ends each backfill once they are older than the retention.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use datafusion::common::ScalarValue;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

use super::manifest::{DELTA_FORMAT, DayRecord, PartitionState};
use super::{Backfill, Built, DayPlan};
use crate::error::Result;
use crate::io::sink::delta::{self as sink, COMMIT_INFO_KEY, Commit, Replace};
use crate::io::storage::Root;
use crate::job;

/// What the Delta table says about each day.
#[derive(Debug, Default)]
pub struct Days {
    /// Rows the table holds per day (days with at least one file).
    rows: BTreeMap<NaiveDate, u64>,
    /// The newest backfill commit of each day: its record and the rows it added.
    built: BTreeMap<NaiveDate, (DayRecord, u64)>,
}

impl Days {
    /// Reads the table's current version and its history (nothing when there is no table yet).
    pub async fn load(root: &Root, key: &str) -> Result<Days> {
        let table = sink::open(root).await?;
        let mut days = Days::default();
        let Ok(snapshot) = table.snapshot() else {
            return Ok(days);
        };
        for file in snapshot.log_data().iter() {
            let day = file
                .partition_values_map()
                .get(key)
                .cloned()
                .flatten()
                .and_then(|v| NaiveDate::parse_from_str(&v, "%Y-%m-%d").ok());
            if let Some(day) = day {
                *days.rows.entry(day).or_default() += file.num_records().unwrap_or(0) as u64;
            }
        }
        let mut history = table.history(None);
        while let Some(commit) = history.try_next().await.map_err(|e| {
            crate::Error::Io(std::io::Error::other(format!(
                "cannot read the history of the Delta table '{}': {e}",
                crate::redact::text(&root.uri)
            )))
        })? {
            let Some(record) = commit
                .info
                .get(COMMIT_INFO_KEY)
                .and_then(|v| serde_json::from_value::<DayRecord>(v.clone()).ok())
            else {
                continue;
            };
            let added = commit
                .info
                .get("operationMetrics")
                .and_then(|m| m.get("num_added_rows"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            // newest first: the first commit met for a day is its last build
            days.built.entry(record.date).or_insert((record, added));
        }
        Ok(days)
    }

    pub fn judge(&self, day: NaiveDate, config_hash: &str, fingerprint: &str) -> PartitionState {
        PartitionState::judge_delta(
            self.rows.get(&day).copied(),
            self.built.get(&day).map(|(r, added)| (r, *added)),
            config_hash,
            fingerprint,
        )
    }
}

/// Builds `plan`'s day as one commit (the caller holds the day's lock).
pub(super) async fn build(
    backfill: &Backfill,
    plan: &DayPlan,
    cancel: &CancellationToken,
) -> Result<Built> {
    let output = &backfill.output;
    let key = backfill.config.backfill.date_partition.clone();
    // another run may have built it while this one waited for the lock
    let state = Days::load(output, &key).await?.judge(
        plan.day,
        &backfill.config_hash,
        &plan.input_fingerprint,
    );
    if state == PartitionState::Current && plan.action.reason() != "forced" {
        return Ok(Built::AlreadyCurrent);
    }
    let record = DayRecord {
        format: DELTA_FORMAT.into(),
        partition: plan.folder.clone(),
        date: plan.day,
        build: backfill.build_record(plan),
    };
    let (config, mut options) = backfill.day_job(plan, output.uri.clone());
    let day = ScalarValue::Date32(Some(
        (plan.day - NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch exists")).num_days()
            as i32,
    ));
    options.constant_columns.push((key.clone(), day.clone()));
    options.delta = Some(Commit {
        replace: Replace::Partition {
            column: key,
            value: day,
        },
        partition_columns: vec![config.backfill.date_partition.clone()],
        record: Some(serde_json::to_value(&record).expect("plain data serializes")),
        create_first: true,
    });
    let folder = output.path_of(&plan.folder);
    let before = file_names(output, &folder).await?;
    match job::run_with(&config, cancel, &options).await {
        Ok(summary) => Ok(Built::Written(summary.written.rows)),
        Err(e) => {
            discard_uncommitted(output, &plan.folder, &before).await;
            Err(e)
        }
    }
}

async fn file_names(root: &Root, folder: &object_store::path::Path) -> Result<HashSet<String>> {
    Ok(root
        .list_below(folder)
        .await?
        .into_iter()
        .filter_map(|m| m.location.filename().map(str::to_string))
        .collect())
}

/// Deletes the data files a failed build wrote into its day's folder: those that were not there
/// before it and that the table's current version does not hold (no one else writes this day
/// while the build holds its lock).
async fn discard_uncommitted(root: &Root, partition: &str, before: &HashSet<String>) {
    let folder = root.path_of(partition);
    let Ok(table) = sink::open(root).await else {
        return;
    };
    let committed: HashSet<String> = match table.snapshot() {
        Ok(snapshot) => snapshot
            .log_data()
            .iter()
            .filter_map(|f| f.path().rsplit('/').next().map(str::to_string))
            .collect(),
        Err(_) => HashSet::new(),
    };
    let Ok(files) = root.list_below(&folder).await else {
        return;
    };
    for meta in files {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        if before.contains(name) || committed.contains(name) {
            continue;
        }
        tracing::info!(
            "removing {}, written by a build that did not commit",
            meta.location
        );
        if let Err(e) = root.store.delete(&meta.location).await {
            tracing::warn!("could not delete {}: {e}", meta.location);
        }
    }
}
