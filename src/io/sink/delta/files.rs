//! A Delta table written on a cluster: each task writes its partition's data files where it
//! runs (delta-rs's own [`DeltaWriter`]: the table's Parquet settings, file statistics, Hive
//! folders for partition columns), and the client commits all of them in one transaction.
//!
//! ```text
//! executors  PartsWriterExec (PartWriter::Delta) -> <table>/[dt=D/]part-00000-<uuid>-c000.zstd.parquet
//!            each task reports its files' Add actions (one row per file, never the features)
//! client     one commit: Remove the files the write replaces, Add the reported files
//! ```
//!
//! Readers of the table see nothing of the write until the commit, which is one put of
//! `_delta_log/<version>.json` (as for a write by the client, [`super::write`]). A write that
//! fails after some tasks finished leaves their files in no version of the log: invisible to
//! readers, removed at once when the client knows them (a failed commit) and otherwise by
//! [`super::vacuum`] once older than the retention. A table that did not exist before the run is
//! removed again on failure. A new table is created by an empty first commit, the data comes in
//! the second (the backfill creates it that way locally too).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::unparser::expr_to_sql;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add};
use deltalake::protocol::{DeltaOperation, SaveMode};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{COMMIT_INFO_KEY, Commit, delta_error, discard_new_table, open_for_write};
use crate::error::{Error, Result};
use crate::io::sink::WriteStats;
use crate::io::sink::parts::WrittenPart;
use crate::io::storage::Root;

/// The key of the commit's `commitInfo` entry listing the processes that wrote its files
/// (`<host>:<pid>`).
pub const WRITERS_KEY: &str = "q2qPriorWriters";

/// Writes `input` as data files of the Delta table whose folder is `table` in `store`, split by
/// `partition_columns` (their values become the files' folders and leave the rows). Returns the
/// files as Add actions; on an error nothing of this call's is left half-written.
pub async fn write_files(
    mut input: SendableRecordBatchStream,
    store: Arc<dyn ObjectStore>,
    table: ObjectPath,
    partition_columns: Vec<String>,
) -> std::result::Result<Vec<Add>, DataFusionError> {
    let external = |e: deltalake::DeltaTableError| DataFusionError::External(Box::new(e));
    let config = WriterConfig::new(
        input.schema(),
        partition_columns,
        Some(crate::io::sink::parquet_properties()),
        None,
        None,
        // delta-rs's default: statistics of the first 32 columns
        Default::default(),
        None,
    );
    let mut writer = DeltaWriter::new(Arc::new(PrefixStore::new(store, table)), config);
    while let Some(batch) = input.next().await {
        let written = match batch {
            Ok(batch) => writer.write(&batch).await.map_err(external),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            if let Err(abort) = writer.abort().await {
                tracing::warn!("could not abort a Delta file upload: {abort}");
            }
            return Err(e);
        }
    }
    writer.close().await.map_err(external)
}

/// The rows of an Add action's statistics (`numRecords`), when it has them.
pub fn rows_of(add: &Add) -> Option<u64> {
    let stats: serde_json::Value = serde_json::from_str(add.stats.as_deref()?).ok()?;
    stats.get("numRecords")?.as_u64()
}

/// The destination of a cluster's Delta write, prepared before any task runs.
#[derive(Debug)]
pub struct Target {
    root: Root,
    commit: Commit,
    existed: bool,
    created_dirs: Vec<std::path::PathBuf>,
}

impl Target {
    /// Checks the destination as a write by the client does (a table partitioned as `commit`
    /// says, or a folder with no other files) and, with `commit.create_first`, creates the
    /// table.
    pub async fn prepare(root: Root, commit: Commit, schema: SchemaRef) -> Result<Target> {
        let (_, existed, created_dirs) = open_for_write(&root, &commit, schema).await?;
        Ok(Target {
            root,
            commit,
            existed,
            created_dirs,
        })
    }

    /// The URL the tasks write under: the table's folder, with a trailing slash.
    pub fn url(&self) -> String {
        self.root.url.to_string()
    }

    /// Commits the files the tasks reported: one transaction that removes the files the commit
    /// replaces and adds these. On failure the reported files are deleted.
    pub async fn commit(&self, schema: SchemaRef, parts: Vec<WrittenPart>) -> Result<WriteStats> {
        let committed = self.try_commit(schema, &parts).await;
        if committed.is_err() {
            self.discard(&parts).await;
        }
        committed
    }

    async fn try_commit(&self, schema: SchemaRef, parts: &[WrittenPart]) -> Result<WriteStats> {
        let root = &self.root;
        let mut adds = Vec::with_capacity(parts.len());
        for part in parts {
            let add: Add = part
                .action
                .as_deref()
                .and_then(|json| serde_json::from_str(json).ok())
                .ok_or_else(|| {
                    Error::DataFusion(DataFusionError::Internal(format!(
                        "the writer of {} reported no Delta Add action",
                        part.file
                    )))
                })?;
            adds.push(add);
        }
        // the table as it is now (made meanwhile by another writer, or by this commit)
        let creating = Commit {
            create_first: true,
            ..self.commit.clone()
        };
        let (table, _, _) = open_for_write(root, &creating, schema).await?;
        let snapshot = table.snapshot().map_err(|e| delta_error(root, e))?;
        let mut actions = Vec::with_capacity(parts.len());
        for file in snapshot.log_data().iter() {
            if self.commit.replace.covers(&file.partition_values_map()) {
                actions.push(Action::Remove(file.remove_action(true)));
            }
        }
        let predicate = match self.commit.replace.predicate() {
            Some(expr) => Some(expr_to_sql(&expr)?.to_string()),
            None => None,
        };
        let partition_by = (!self.commit.partition_columns.is_empty())
            .then(|| self.commit.partition_columns.clone());
        let removed = actions.len();
        let mut stats = WriteStats::default();
        for (add, part) in adds.into_iter().zip(parts) {
            stats.rows += part.rows;
            stats.bytes += part.bytes;
            actions.push(Action::Add(add));
        }
        // as delta-rs's own write records them (the backfill reads num_added_rows back)
        let metrics = serde_json::json!({
            "num_added_files": parts.len(),
            "num_removed_files": removed,
            "num_added_rows": stats.rows,
        });
        let writers: std::collections::BTreeSet<&str> =
            parts.iter().map(|p| p.writer.as_str()).collect();
        let mut metadata = vec![
            ("operationMetrics".to_string(), metrics),
            (WRITERS_KEY.to_string(), serde_json::json!(writers)),
        ];
        if let Some(record) = &self.commit.record {
            metadata.push((COMMIT_INFO_KEY.to_string(), record.clone()));
        }
        let properties = CommitProperties::default().with_metadata(metadata);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by,
            predicate,
        };
        let done = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(|e| delta_error(root, e))?;
        stats.delta_version = Some(done.version);
        stats.parts = parts.to_vec();
        Ok(stats)
    }

    /// After a failure: deletes the files the tasks reported (in no version of the log), and
    /// the table if this run was to create it.
    pub async fn discard(&self, parts: &[WrittenPart]) {
        for part in parts {
            let path = self.root.path_of(&part.file);
            if let Err(e) = self.root.store.delete(&path).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!("could not delete {path}: {e}");
            }
        }
        if !self.existed {
            discard_new_table(&self.root, &self.created_dirs).await;
        }
    }
}
