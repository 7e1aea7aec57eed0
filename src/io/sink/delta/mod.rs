//! Delta Lake output (`--format delta`): the job's rows committed to a Delta table in one
//! transaction by delta-rs (the `deltalake` crate), so that a reader sees the table's previous
//! version or the new one, never a mix of the two.
//!
//! `run` replaces the whole table (an overwrite); the backfill replaces one day of a table
//! partitioned by `dt` (replaceWhere `dt = D`: the day's files are removed and the new ones added
//! in the same commit). delta-rs's writer executes the job's physical plan (the same plan the
//! Parquet sink streams) and writes the data files; nothing is visible before the commit, and
//! concurrent commits are serialised by the log: a put-if-absent of `_delta_log/<version>.json`
//! (S3's `If-None-Match`, a no-clobber rename on local disks), retried against newer versions when
//! they do not conflict.
//!
//! A failed run that created the table removes what it wrote; on an existing table, a failed
//! write's files are in no version of the log, so no reader sees them, and [`vacuum`] removes them
//! once they are older than the retention.

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableType, provider_as_source};
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, col, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

pub mod files;

use super::WriteStats;
use crate::error::{Error, Result};
use crate::io::storage::Root;

/// The key of this engine's record in a commit's `commitInfo` (what was built, from what).
pub const COMMIT_INFO_KEY: &str = "q2qPrior";

/// Registers delta-rs's log stores for `s3://`, `gs://` and `az://` tables (idempotent). Called by
/// [`crate::session::runtime_env`], the one place every session is prepared.
pub fn register_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        deltalake::aws::register_handlers(None);
        deltalake::gcp::register_handlers(None);
        deltalake::azure::register_handlers(None);
    });
}

/// Opens the Delta table at `root` through the root's own object store (the same credentials,
/// endpoint and retries as every other input and output); a table that does not exist yet comes
/// back unloaded (`version()` is `None`).
pub async fn open(root: &Root) -> Result<DeltaTable> {
    register_handlers();
    let mut table = DeltaTableBuilder::from_url(root.url.clone())
        .map_err(|e| delta_error(root, e))?
        .with_storage_backend(Arc::clone(&root.store), root.url.clone())
        .build()
        .map_err(|e| delta_error(root, e))?;
    if root
        .local
        .as_ref()
        .is_some_and(|dir| !dir.join("_delta_log").is_dir())
    {
        return Ok(table); // nothing to load (and delta-rs refuses a folder that does not exist)
    }
    match table.load().await {
        Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
        Err(e) => Err(delta_error(root, e)),
    }
}

fn delta_error(root: &Root, e: DeltaTableError) -> Error {
    Error::Io(std::io::Error::other(format!(
        "Delta table '{}': {e}",
        crate::redact::text(&root.uri)
    )))
}

/// Which rows of the table a commit replaces.
#[derive(Debug, Clone)]
pub enum Replace {
    /// All of them (`run`).
    All,
    /// Those whose partition column `column` equals `value` (a backfill day).
    Partition { column: String, value: ScalarValue },
}

impl Replace {
    fn predicate(&self) -> Option<Expr> {
        match self {
            Replace::All => None,
            Replace::Partition { column, value } => Some(col(column).eq(lit(value.clone()))),
        }
    }

    /// Whether a file with these partition values holds rows this commit replaces.
    fn covers(&self, partition_values: &std::collections::HashMap<String, Option<String>>) -> bool {
        match self {
            Replace::All => true,
            Replace::Partition { column, value } => {
                partition_values.get(column).cloned().flatten() == Some(value.to_string())
            }
        }
    }
}

/// One commit: what it replaces, the table's partition columns, and this engine's record.
#[derive(Debug, Clone)]
pub struct Commit {
    pub replace: Replace,
    pub partition_columns: Vec<String>,
    /// Stored in the commit's `commitInfo` under [`COMMIT_INFO_KEY`].
    pub record: Option<serde_json::Value>,
    /// Create a missing table in a commit of its own first, so that writers of different
    /// partitions starting at once do not conflict on creating it (the backfill).
    pub create_first: bool,
}

/// Creates the table empty, with the schema and partition columns the write will have; another
/// writer creating it at the same time is fine, as long as it is partitioned the same way.
async fn create(
    root: &Root,
    table: DeltaTable,
    schema: SchemaRef,
    partition_columns: &[String],
) -> Result<()> {
    let created = table
        .write(vec![RecordBatch::new_empty(schema)])
        .with_save_mode(SaveMode::ErrorIfExists)
        .with_partition_columns(partition_columns.to_vec())
        // no retry: of writers creating it at once, exactly one wins version 0 (a retry at
        // version 1 would commit a second table definition, conflicting with every write that
        // started from version 0)
        .with_commit_properties(CommitProperties::default().with_max_retries(0))
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) => match open(root).await?.version() {
            Some(_) => Ok(()), // made meanwhile by another writer; `write` checks its partitioning
            None => Err(delta_error(root, e)),
        },
    }
}

/// The table at `root` opened for `commit`'s write: created empty first with `create_first`,
/// its partitioning checked against the commit's; for a table that does not exist yet, its
/// folder checked to hold no other files. Returns the table, whether it existed, and the
/// folders a failed first write removes again.
async fn open_for_write(
    root: &Root,
    commit: &Commit,
    schema: SchemaRef,
) -> Result<(DeltaTable, bool, Vec<std::path::PathBuf>)> {
    let mut table = open(root).await?;
    if table.version().is_none() && commit.create_first {
        create(root, table, schema, &commit.partition_columns).await?;
        table = open(root).await?;
    }
    if table.version().is_none() {
        refuse_non_table_folder(root).await?;
        let created_dirs = match &root.local {
            Some(dir) => missing_dirs(dir),
            None => Vec::new(),
        };
        return Ok((table, false, created_dirs));
    }
    if let Ok(snapshot) = table.snapshot() {
        let found = snapshot.metadata().partition_columns().to_vec();
        if found != commit.partition_columns {
            return Err(Error::config(format!(
                "the Delta table '{}' is partitioned by {found:?}; this job writes one \
                 partitioned by {:?}: write to another table",
                crate::redact::text(&root.uri),
                commit.partition_columns
            )));
        }
    }
    Ok((table, true, Vec::new()))
}

/// Writes the rows of `plan` to the Delta table at `root` as one commit (creating the table on
/// the first write). Returns the rows and bytes the commit added.
pub async fn write(
    plan: Arc<dyn ExecutionPlan>,
    state: &SessionState,
    root: &Root,
    commit: &Commit,
    cancel: &CancellationToken,
) -> Result<WriteStats> {
    let (table, existed, created_dirs) = open_for_write(root, commit, plan.schema()).await?;

    let failure = Arc::new(Mutex::new(None));
    let input = Arc::new(PlanInput {
        plan,
        failure: Arc::clone(&failure),
    });
    let source =
        LogicalPlanBuilder::scan("q2q_prior_output", provider_as_source(input), None)?.build()?;
    let mut properties = CommitProperties::default();
    if let Some(record) = &commit.record {
        properties = properties.with_metadata([(COMMIT_INFO_KEY.to_string(), record.clone())]);
    }
    let mut builder = table
        .write(Vec::new())
        .with_input_plan(source)
        .with_session_state(Arc::new(delta_state(state)))
        .with_save_mode(SaveMode::Overwrite)
        .with_partition_columns(commit.partition_columns.clone())
        .with_writer_properties(super::parquet_properties())
        .with_commit_properties(properties);
    if let Some(predicate) = commit.replace.predicate() {
        builder = builder.with_replace_where(predicate);
    }
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Interrupted),
        written = builder.into_future() => written.map_err(|e| {
            // the plan's own error (bad input, memory limit) rather than delta-rs's rendering of it
            match failure.lock().expect("not poisoned").take() {
                Some(e) => Error::DataFusion(e),
                None => delta_error(root, e),
            }
        }),
    };
    match result {
        Ok(table) => {
            let mut stats = WriteStats {
                delta_version: table.version(),
                ..Default::default()
            };
            for file in table
                .snapshot()
                .map_err(|e| delta_error(root, e))?
                .log_data()
                .iter()
            {
                if commit.replace.covers(&file.partition_values_map()) {
                    stats.rows += file.num_records().unwrap_or(0) as u64;
                    stats.bytes += file.size().max(0) as u64;
                }
            }
            Ok(stats)
        }
        Err(e) => {
            if !existed {
                discard_new_table(root, &created_dirs).await;
            }
            Err(e)
        }
    }
}

/// `state` with delta-rs's query planner, which plans the writer's own nodes (and delegates the
/// rest, our operators included, to DataFusion's).
fn delta_state(state: &SessionState) -> SessionState {
    SessionStateBuilder::new_from_existing(state.clone())
        .with_query_planner(deltalake::delta_datafusion::planner::DeltaPlanner::new())
        .build()
}

/// The object `run` puts and deletes in the table's folder to learn it can write there.
pub const WRITE_PROBE: &str = "_q2q_write_probe";

/// Before any work: fails (exit 2) when the output is a folder that holds files but no table.
pub async fn prepare(root: &Root) -> Result<()> {
    if open(root).await?.version().is_none() {
        refuse_non_table_folder(root).await?;
    }
    Ok(())
}

/// A table's first write goes to a new or empty folder: files that are not a Delta table would be
/// mixed into it (and removed with it if the write fails).
async fn refuse_non_table_folder(root: &Root) -> Result<()> {
    let mut listing = root.store.list(Some(&root.prefix));
    while let Some(meta) = listing.try_next().await? {
        // hidden folders are not data (the backfill keeps its partition locks in `_q2q/`)
        if root
            .relative(&meta)
            .first()
            .is_some_and(|top| is_hidden(top))
        {
            continue;
        }
        return Err(Error::config(format!(
            "output '{}' is not a Delta table (no _delta_log/) but holds files (e.g. {}): \
             write the Delta table to a new or empty folder",
            crate::redact::text(&root.uri),
            meta.location
        )));
    }
    Ok(())
}

/// A name readers and delta-rs skip (`_delta_log` aside, which is the table).
fn is_hidden(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('.')
}

/// The folders of `dir` and its ancestors that do not exist, innermost first.
fn missing_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    dir.ancestors()
        .take_while(|d| !d.exists())
        .map(std::path::Path::to_path_buf)
        .collect()
}

/// Removes what a failed first write left (the table's folder held no data before it), unless
/// another writer has created the table meanwhile: its files cannot be told from this run's,
/// and vacuum removes this run's once they are older than the retention.
async fn discard_new_table(root: &Root, created_dirs: &[std::path::PathBuf]) {
    if !matches!(open(root).await.map(|t| t.version()), Ok(None)) {
        return;
    }
    match root.list().await {
        Ok(files) => {
            for meta in files {
                // hidden folders other than the log are not the table's (the backfill's locks)
                let parts = root.relative(&meta);
                if parts.len() > 1 && is_hidden(&parts[0]) && parts[0] != "_delta_log" {
                    continue;
                }
                if let Err(e) = root.store.delete(&meta.location).await {
                    tracing::warn!("could not delete {}: {e}", meta.location);
                }
            }
        }
        Err(e) => tracing::warn!("could not list {} to clean up: {e}", root.uri),
    }
    if let Some(dir) = &root.local {
        // the writer's folders (partitions, _delta_log), then those this run created
        let mut dirs: Vec<std::path::PathBuf> = walk_dirs(dir);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs.iter().chain(created_dirs) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn walk_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.extend(walk_dirs(&entry.path()));
                found.push(entry.path());
            }
        }
    }
    found
}

/// A physical plan already made, as a table delta-rs's writer can scan: the Delta sink runs the
/// same plan as the Parquet sink. Keeps the plan's first error for the caller.
#[derive(Debug)]
struct PlanInput {
    plan: Arc<dyn ExecutionPlan>,
    failure: Arc<Mutex<Option<DataFusionError>>>,
}

#[async_trait::async_trait]
impl TableProvider for PlanInput {
    fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        let plan: Arc<dyn ExecutionPlan> = Arc::new(KeepFirstError {
            input: Arc::clone(&self.plan),
            failure: Arc::clone(&self.failure),
        });
        match projection {
            None => Ok(plan),
            Some(columns) => {
                let schema = plan.schema();
                let exprs = columns
                    .iter()
                    .map(|&i| {
                        let name = schema.field(i).name().clone();
                        let column: Arc<dyn PhysicalExpr> = Arc::new(
                            datafusion::physical_expr::expressions::Column::new(&name, i),
                        );
                        (column, name)
                    })
                    .collect::<Vec<_>>();
                Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
            }
        }
    }
}

/// Runs the job's plan as a leaf, keeping the first error it yields (delta-rs turns errors into
/// text).
#[derive(Debug)]
struct KeepFirstError {
    input: Arc<dyn ExecutionPlan>,
    failure: Arc<Mutex<Option<DataFusionError>>>,
}

impl DisplayAs for KeepFirstError {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "KeepFirstError")
    }
}

impl ExecutionPlan for KeepFirstError {
    fn name(&self) -> &str {
        "KeepFirstError"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DataFusionResult<TreeNodeRecursion>,
    ) -> DataFusionResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> DataFusionResult<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let failure = Arc::clone(&self.failure);
        let schema = stream.schema();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.map(move |batch| {
                batch.map_err(|e| {
                    let text = e.to_string();
                    failure.lock().expect("not poisoned").get_or_insert(e);
                    DataFusionError::Execution(text)
                })
            }),
        )))
    }
}

/// Removes the files no version of the table still needs once they are older than `retention`
/// (`None`: the table's `delta.deletedFileRetentionDuration`, 7 days by default): the files of
/// replaced builds, and those of writes that failed or were killed before their commit.
/// Returns how many files it deleted.
pub async fn vacuum(root: &Root, retention: Option<std::time::Duration>) -> Result<usize> {
    let table = open(root).await?;
    if table.version().is_none() {
        return Ok(0);
    }
    let mut builder = table
        .vacuum()
        .with_mode(deltalake::operations::vacuum::VacuumMode::Full);
    if let Some(retention) = retention {
        let retention = chrono::Duration::from_std(retention)
            .map_err(|e| Error::config(format!("retention {retention:?}: {e}")))?;
        // the user chose it: shorter than the table's own minimum is theirs to decide
        builder = builder
            .with_retention_period(retention)
            .with_enforce_retention_duration(false);
    }
    let (_, metrics) = builder.await.map_err(|e| delta_error(root, e))?;
    Ok(metrics.files_deleted.len())
}
