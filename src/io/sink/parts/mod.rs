//! A folder of part files (`-o folder/`, and every `run` on a cluster): each partition of the
//! plan is written as one part where it runs — by the executors on a Ballista cluster, so the
//! client never receives the rows — and the client commits the folder.
//!
//! ```text
//! out/features/
//!   _q2q_staging.<machine>.<pid>.<start>.<nanos>.parts.partial/part-00000.parquet ...  (a run)
//!   part-00000.parquet  part-00001.parquet ...                                       (committed)
//!   _SUCCESS                                                                          (committed)
//! ```
//!
//! The protocol:
//!
//! 1. **Prepare** (client, before any work): the destination is a new folder, or one that holds
//!    only a previous run's parts and `_SUCCESS` (anything else is refused: exit 2, untouched).
//!    Staging folders of dead runs are removed (as [`crate::io::sink::staging`] does for files).
//! 2. **Write** ([`PartsWriterExec`], one task per partition): partition i streams its rows
//!    into `<staging>/part-<i>.<ext>`, an object that appears only complete (a multipart upload,
//!    or a local temp file renamed); a task Ballista reruns writes the same object again, whole.
//!    Each task returns one row: its part, rows, bytes, SHA-256 and who wrote it.
//! 3. **Commit** (client, once every task has succeeded): every part 0..N is checked to be
//!    there with the size its writer reported; `_SUCCESS` is deleted; each part is moved onto
//!    `part-<i>.<ext>` (a rename locally, a server-side copy on object stores), replacing the
//!    previous run's part of that number; the previous run's parts numbered N and up are
//!    deleted; `_SUCCESS` is written (a JSON list of the parts); the staging folder is removed.
//! 4. **On failure** (a task failed for good, bad input, Ctrl-C, a timeout) the staging folder
//!    is removed and the destination is as it was; a folder this run created is removed.
//!
//! So a reader that waits for `_SUCCESS` (Spark, Hadoop, Airflow sensors) sees only complete
//! outputs, and a part file is never partial. A reader that lists the folder during step 3 can
//! see some parts of the new run beside some of the old one: where that matters, write a Delta
//! table (`--format delta`), whose commit is one put.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, internal_err};
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::OutputFormat;
use crate::error::{Error, Result};

mod commit;
mod counters;
pub use commit::{Staging, checked};
pub use counters::{
    HISTORY_HELD, HISTORY_READ, MergeCounters, NEIGHBOUR_SET_ROWS, QUERIES_WITH_PRIOR,
    history_held, neighbour_sets,
};

/// The marker of a committed folder (the Hadoop convention), holding the list of its parts.
pub const SUCCESS: &str = "_SUCCESS";

/// The destination name in staging folders' names (see [`crate::io::sink::staging`]).
const STAGED: &str = "parts";

/// The file name of part `part`.
pub fn part_name(part: usize, format: OutputFormat) -> String {
    format!("part-{part:05}.{}", extension(format))
}

fn extension(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Csv => "csv",
        OutputFormat::Json => "json",
        _ => "parquet",
    }
}

/// The part number of a committed part's file name, if it is one.
fn part_number(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("part-")?;
    let (digits, ext) = rest.split_once('.')?;
    (digits.len() >= 5
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["parquet", "csv", "json"].contains(&ext))
    .then(|| digits.parse().ok())
    .flatten()
}

/// What each task writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartWriter {
    /// One file of this format per partition, in the staging folder; the client commits the
    /// folder ([`Staging::commit`]).
    File(OutputFormat),
    /// Delta data files in the table's folder, split by the table's partition columns; the
    /// client commits them to the table's log ([`crate::io::sink::delta::files`]).
    Delta { partition_columns: Vec<String> },
}

impl fmt::Display for PartWriter {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            PartWriter::File(format) => write!(f, "one {format} part"),
            PartWriter::Delta { partition_columns } if partition_columns.is_empty() => {
                write!(f, "Delta data files")
            }
            PartWriter::Delta { partition_columns } => {
                write!(f, "Delta data files by {}", partition_columns.join(", "))
            }
        }
    }
}

/// One part as its writer reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenPart {
    /// The partition its writer wrote (on a cluster each task's own numbering, from 0).
    pub part: usize,
    /// The file's name: in the staging folder, unique to its writer (`part-00000-<writer's
    /// pid>-<nanos>.parquet`); once committed, its place in the folder (`part-00000.parquet`).
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    /// Who wrote it: `<host>:<pid>` of the executor (or of the client, locally).
    pub writer: String,
    /// A Delta data file's Add action (JSON), which the client commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The counters of the merge operators below the writer when the part was done (for the
    /// summary; not in `_SUCCESS`).
    #[serde(skip)]
    pub counters: Option<MergeCounters>,
}

/// What each writing task returns: one row per part.
pub fn report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::UInt32, false),
        Field::new("file", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("sha256", DataType::Utf8, false),
        Field::new("writer", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, true),
        Field::new("counters", DataType::Utf8, true),
    ]))
}

/// The parts in `batches` (rows of [`report_schema`]).
pub fn parts_of(batches: &[RecordBatch]) -> Result<Vec<WrittenPart>> {
    let mut parts = Vec::new();
    for batch in batches {
        let column = |i: usize| batch.column(i).as_any();
        let (
            Some(part),
            Some(file),
            Some(rows),
            Some(bytes),
            Some(sha),
            Some(writer),
            Some(action),
            Some(counters),
        ) = (
            column(0).downcast_ref::<UInt32Array>(),
            column(1).downcast_ref::<StringArray>(),
            column(2).downcast_ref::<UInt64Array>(),
            column(3).downcast_ref::<UInt64Array>(),
            column(4).downcast_ref::<StringArray>(),
            column(5).downcast_ref::<StringArray>(),
            column(6).downcast_ref::<StringArray>(),
            column(7).downcast_ref::<StringArray>(),
        )
        else {
            return Err(Error::DataFusion(DataFusionError::Internal(
                "the part writers' report has other columns".into(),
            )));
        };
        for i in 0..batch.num_rows() {
            parts.push(WrittenPart {
                part: part.value(i) as usize,
                file: file.value(i).to_string(),
                rows: rows.value(i),
                bytes: bytes.value(i),
                sha256: sha.value(i).to_string(),
                writer: writer.value(i).to_string(),
                action: action.is_valid(i).then(|| action.value(i).to_string()),
                counters: match counters.is_valid(i) {
                    true => Some(serde_json::from_str(counters.value(i)).map_err(|e| {
                        Error::DataFusion(DataFusionError::Internal(format!(
                            "the part writers' merge counters: {e}"
                        )))
                    })?),
                    false => None,
                },
            });
        }
    }
    Ok(parts)
}

/// The plan's partitions as they are, when its root only merges sorted partitions into one:
/// each part is then one sorted partition (the merge plan's ranges, read in order, are the
/// sorted output; its shares are each sorted).
pub fn without_final_merge(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    match plan.downcast_ref::<SortPreservingMergeExec>() {
        Some(merge) if merge.fetch().is_none() => Arc::clone(merge.input()),
        _ => plan,
    }
}

/// Writes each partition of its input as one part file into a staging folder; one report row
/// per partition. See the module documentation.
#[derive(Debug)]
pub struct PartsWriterExec {
    input: Arc<dyn ExecutionPlan>,
    /// Where the files go, as a URL with a trailing slash: the staging folder, or the Delta
    /// table's folder.
    staging: String,
    writer: PartWriter,
    properties: Arc<PlanProperties>,
    /// This instance among the process's (a task's plan is an instance of its own).
    instance: u64,
}

impl PartsWriterExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, staging: String, writer: PartWriter) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(report_schema()),
            Partitioning::UnknownPartitioning(input.properties().partitioning.partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        PartsWriterExec {
            input,
            staging,
            writer,
            properties: Arc::new(properties),
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn staging(&self) -> &str {
        &self.staging
    }

    pub fn writer(&self) -> &PartWriter {
        &self.writer
    }
}

impl DisplayAs for PartsWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PartsWriterExec: each partition as {} in {}",
            self.writer,
            crate::redact::text(&self.staging)
        )
    }
}

impl ExecutionPlan for PartsWriterExec {
    fn name(&self) -> &str {
        "PartsWriterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let [input]: [Arc<dyn ExecutionPlan>; 1] = match children.try_into() {
            Ok(children) => children,
            Err(_) => return internal_err!("PartsWriterExec has one child"),
        };
        Ok(Arc::new(PartsWriterExec::new(
            input,
            self.staging.clone(),
            self.writer.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let schema = self.input.schema();
        let url = url::Url::parse(&self.staging)
            .map_err(|e| DataFusionError::Plan(format!("bad staging folder URL: {e}")))?;
        let store = context
            .runtime_env()
            .object_store(ObjectStoreUrl::parse(&url[..url::Position::BeforePath])?)?;
        let folder = ObjectPath::from_url_path(url.path())
            .map_err(|e| DataFusionError::Plan(format!("bad staging folder path: {e}")))?;
        let writer_id = format!("{}:{}", crate::process::host_name(), std::process::id());
        // read once the part is written: by then the operators below have built their index
        let figures = {
            let plan = Arc::clone(&self.input);
            let id = format!("{writer_id}:{}", self.instance);
            move || MergeCounters::of(&plan, id)
        };
        let format = match &self.writer {
            PartWriter::File(format) => *format,
            PartWriter::Delta { partition_columns } => {
                let partition_columns = partition_columns.clone();
                let write = async move {
                    let adds = crate::io::sink::delta::files::write_files(
                        input,
                        store,
                        folder,
                        partition_columns,
                    )
                    .await?;
                    let mut report = Report::default();
                    for add in adds {
                        let rows = crate::io::sink::delta::files::rows_of(&add).unwrap_or(0);
                        let action = serde_json::to_string(&add)
                            .map_err(|e| DataFusionError::External(Box::new(e)))?;
                        report.push(partition, add.path.clone(), rows, add.size.max(0) as u64);
                        report.sha256.push(String::new());
                        report.action.push(Some(action));
                    }
                    report.into_batch(&writer_id, figures())
                };
                return Ok(Box::pin(RecordBatchStreamAdapter::new(
                    report_schema(),
                    futures::stream::once(write),
                )));
            }
        };
        // unique to this writer: on a cluster every task numbers its partitions from 0, and a
        // task Ballista reruns must not replace a file another attempt reported
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let file = format!(
            "part-{partition:05}-{}-{nanos}.{}",
            std::process::id(),
            extension(format)
        );
        let path = folder.join(file.as_str());
        let write = async move {
            let stats = crate::io::sink::write_stream(
                input,
                schema,
                &store,
                &path,
                format,
                &CancellationToken::new(),
                &mut |_| {},
            )
            .await
            .map_err(|e| match e {
                Error::DataFusion(e) => e,
                other => DataFusionError::External(Box::new(other)),
            })?;
            let mut report = Report::default();
            report.push(partition, file, stats.rows, stats.bytes);
            report.sha256.push(stats.sha256);
            report.action.push(None);
            report.into_batch(&writer_id, figures())
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            report_schema(),
            futures::stream::once(write),
        )))
    }
}

/// A task's report rows, column by column (see [`report_schema`]).
#[derive(Default)]
struct Report {
    part: Vec<u32>,
    file: Vec<String>,
    rows: Vec<u64>,
    bytes: Vec<u64>,
    /// Empty for a Delta data file (delta-rs's writer does not hash).
    sha256: Vec<String>,
    action: Vec<Option<String>>,
}

impl Report {
    fn push(&mut self, partition: usize, file: String, rows: u64, bytes: u64) {
        self.part.push(partition as u32);
        self.file.push(file);
        self.rows.push(rows);
        self.bytes.push(bytes);
    }

    fn into_batch(
        self,
        writer: &str,
        counters: Option<MergeCounters>,
    ) -> datafusion::common::Result<RecordBatch> {
        let n = self.part.len();
        let counters = counters
            .map(|h| serde_json::to_string(&h))
            .transpose()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(RecordBatch::try_new(
            report_schema(),
            vec![
                Arc::new(UInt32Array::from(self.part)),
                Arc::new(StringArray::from(self.file)),
                Arc::new(UInt64Array::from(self.rows)),
                Arc::new(UInt64Array::from(self.bytes)),
                Arc::new(StringArray::from(self.sha256)),
                Arc::new(StringArray::from(vec![writer; n])),
                Arc::new(StringArray::from(self.action)),
                Arc::new(StringArray::from(vec![counters; n])),
            ],
        )?)
    }
}

/// A table whose scan writes the parts: how a client gets [`PartsWriterExec`] planned on a
/// Ballista scheduler (which plans `input` and puts the writer over it). Scanning it is the
/// write; its rows are the report.
#[derive(Debug)]
pub struct PartsTable {
    pub input: LogicalPlan,
    pub staging: String,
    pub writer: PartWriter,
}

#[async_trait]
impl TableProvider for PartsTable {
    fn schema(&self) -> SchemaRef {
        report_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let plan = without_final_merge(state.create_physical_plan(&self.input).await?);
        let writer = Arc::new(PartsWriterExec::new(
            plan,
            self.staging.clone(),
            self.writer.clone(),
        ));
        // the report as one partition: Ballista 55's client fetched a final stage of several
        // partitions with rows repeated (16 report rows from 4 tasks that each ran once; the
        // same fault as docs/DISTRIBUTED.md's doubled rows), while a one-partition final stage,
        // as every aggregate ends, is fetched once
        Ok(Arc::new(CoalescePartitionsExec::new(writer)))
    }
}

/// The payload the physical codec carries for [`PartsWriterExec`].
#[derive(Debug, Serialize, Deserialize)]
pub struct WriterPayload {
    pub staging: String,
    pub writer: PartWriter,
}

/// The header the logical codec carries for [`PartsTable`], before the input plan's bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct TablePayload {
    pub staging: String,
    pub writer: PartWriter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_round_trip_and_nothing_else_is_a_part() {
        assert_eq!(part_name(7, OutputFormat::Parquet), "part-00007.parquet");
        assert_eq!(part_number("part-00007.parquet"), Some(7));
        assert_eq!(
            part_number(&part_name(123_456, OutputFormat::Csv)),
            Some(123_456)
        );
        for other in [
            "part-7.parquet",
            "part-00007.txt",
            "xpart-00007.csv",
            "_SUCCESS",
            "part-0000a.json",
        ] {
            assert_eq!(part_number(other), None, "{other}");
        }
    }
}
