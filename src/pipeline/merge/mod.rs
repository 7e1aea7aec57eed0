//! Stages 2-4 (neighbour sets, prior, blend) as one operator: the merge plan (`execution.plan =
//! "merge"`, the default).
//!
//! ```text
//! history ──┐
//!           ├─> PriorMergeExec: intern + group by query (index) ─> per query: merge C_q's lists
//! neighbours┘                                                     (prior), join own history, blend
//! ```
//!
//! The SQL stages compute the prior as a join of neighbour sets with history, a hash aggregation
//! by (query, product_id), a full outer join with history and a sort, all keyed by strings. Here
//! each key is interned once to an integer whose order is the string's, the history is grouped by
//! query, and each query's prior is a merge of at most k short sorted lists; rows come out already
//! in (query, product_id) order, so the job's sort disappears from the plan. The SQL files stay the
//! definition: a test compares both plans on every fixture and on synthetic data.
//!
//! The operator is a [`TableProvider`] (`features`) whose scan plans `history` and `neighbours`
//! in the session it runs in, so the same table works in `run`, in the SQL shell and per input
//! partition. On a Ballista cluster, [`codec`] carries the table to the scheduler and the operator
//! to the executors.
//!
//! In data-flow order: [`index`] reads both inputs ([`intern`] numbers the keys, [`sets`] builds
//! C_q, [`history`] keeps the history, [`spill`] sends both to disk under a memory limit);
//! [`split`] cuts the queries into chunks, partitions and, when the history spilled, blocks;
//! `partition` runs one output partition; [`emit`] computes a query's rows; [`concat`] reads the
//! partitions as one sorted stream. On a cluster each partition is a task of its own over its
//! [`share`] of the queries ([`Split::Shares`]).

pub mod codec;
pub mod concat;
pub mod emit;
pub mod history;
pub mod index;
pub mod intern;
mod partition;
pub mod sets;
pub mod share;
pub mod spill;
pub mod split;

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err, plan_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit};
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, SpillMetrics, Time,
};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, execute_stream,
};
use datafusion::prelude::SessionContext;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::blend::OUTPUT_COLUMNS;
use crate::config::{Blend, FeatureParams, PriorWeighting};

/// The parameters of stages 2-4 (everything but H's weights, which `history` applies).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergeParams {
    pub top_k: u32,
    pub min_score: f64,
    pub prior_weighting: PriorWeighting,
    pub gamma: f64,
    pub beta: f64,
    pub blend: Blend,
    /// kappa: the bayes blend counts it as evidence.
    pub smoothing: f64,
    pub pseudo_impressions: f64,
}

impl From<&FeatureParams> for MergeParams {
    fn from(p: &FeatureParams) -> Self {
        MergeParams {
            top_k: p.top_k,
            min_score: p.min_score,
            prior_weighting: p.prior_weighting,
            gamma: p.gamma,
            beta: p.beta,
            blend: p.blend,
            smoothing: p.smoothing,
            pseudo_impressions: p.pseudo_impressions,
        }
    }
}

impl MergeParams {
    pub fn confidence(&self) -> crate::formula::Confidence {
        crate::formula::Confidence {
            blend: self.blend,
            gamma: self.gamma,
            smoothing: self.smoothing,
            pseudo_impressions: self.pseudo_impressions,
        }
    }
}

/// How the operator's output partitions divide the queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Split {
    /// One index for all partitions, built once in this process by the first partition
    /// executed; partition i is the i-th contiguous range of the queries in sort order, so the
    /// partitions read in order are the sorted output. For one machine.
    #[default]
    Ranges,
    /// Every partition an independent task over its [`share`] of the queries, which reads both
    /// inputs and keeps only what its queries need; each partition sorted. For a cluster, whose
    /// tasks run in different processes (a child is executed once per partition).
    Shares,
}

/// The types of the output columns ([`OUTPUT_COLUMNS`], those of `sql/features.sql`); the key
/// columns are `Utf8` or `Utf8View`, as the inputs give them, and `product_id` may be of any
/// integer type instead (written as the input types it).
const TYPES: [DataType; 9] = [
    DataType::Utf8,
    DataType::Utf8,
    DataType::Float64,
    DataType::Float64,
    DataType::Float64,
    DataType::Float64,
    DataType::Int64,
    DataType::Int64,
    DataType::Int64,
];

fn check_schema(schema: &SchemaRef) -> Result<()> {
    let actual: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match f.data_type() {
            DataType::Utf8View => (f.name().as_str(), &DataType::Utf8),
            t if i == 1 && t.is_integer() => (f.name().as_str(), &DataType::Utf8),
            t => (f.name().as_str(), t),
        })
        .collect();
    let expected: Vec<(&str, &DataType)> = OUTPUT_COLUMNS.into_iter().zip(&TYPES).collect();
    if actual != expected {
        return plan_err!(
            "the merge plan writes {expected:?} but sql/features.sql now gives {actual:?}; \
             update src/pipeline/merge to match"
        );
    }
    Ok(())
}

/// The `features` table of the merge plan: scanning it plans `history` and `neighbours` and
/// puts a [`PriorMergeExec`] on top.
#[derive(Debug)]
pub struct MergedFeatures {
    schema: SchemaRef,
    history: LogicalPlan,
    neighbours: LogicalPlan,
    params: MergeParams,
    /// Output partitions of the operator, and how they divide the queries.
    partitions: usize,
    split: Split,
}

impl MergedFeatures {
    /// Reads `history` and `neighbours` from `ctx`; `schema` is the SQL `features` view's.
    /// `partitions`: the operator's output partitions (the session's target partitions, its
    /// cores, if absent), divided as `split` says.
    pub async fn new(
        ctx: &SessionContext,
        params: &FeatureParams,
        partitions: Option<usize>,
        split: Split,
        schema: SchemaRef,
    ) -> Result<Self> {
        check_schema(&schema)?;
        let history = ctx
            .table(super::history::STAGE.name)
            .await?
            .select_columns(&["query", "product_id", "impressions", "h"])?
            .into_unoptimized_plan();
        let neighbours = ctx
            .table(super::inputs::NEIGHBOURS)
            .await?
            .select_columns(&["query", "neighbour", "score"])?
            .into_unoptimized_plan();
        let partitions = partitions.unwrap_or_else(|| ctx.copied_config().target_partitions());
        Ok(MergedFeatures {
            schema,
            history,
            neighbours,
            params: params.into(),
            partitions: partitions.max(1),
            split,
        })
    }

    /// The table as a codec decodes it (on a Ballista scheduler).
    pub fn from_parts(
        schema: SchemaRef,
        history: LogicalPlan,
        neighbours: LogicalPlan,
        params: MergeParams,
        partitions: usize,
        split: Split,
    ) -> Result<Self> {
        check_schema(&schema)?;
        Ok(MergedFeatures {
            schema,
            history,
            neighbours,
            params,
            partitions: partitions.max(1),
            split,
        })
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    pub fn split(&self) -> Split {
        self.split
    }
}

#[async_trait]
impl TableProvider for MergedFeatures {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let history = state.create_physical_plan(&self.history).await?;
        let neighbours = state.create_physical_plan(&self.neighbours).await?;
        let exec: Arc<dyn ExecutionPlan> = Arc::new(PriorMergeExec::try_new(
            history,
            neighbours,
            self.params,
            self.partitions,
            self.split,
            Arc::clone(&self.schema),
        )?);
        match projection {
            Some(columns) if *columns != (0..self.schema.fields().len()).collect::<Vec<_>>() => {
                let exprs = columns.iter().map(|&i| {
                    let name = self.schema.field(i).name();
                    let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(name, i));
                    ProjectionExpr::new(column, name.clone())
                });
                Ok(Arc::new(ProjectionExec::try_new(exprs, exec)?))
            }
            _ => Ok(exec),
        }
    }
}

/// What the operator measured; shown by EXPLAIN ANALYZE and in `run`'s summary.
#[derive(Debug, Clone)]
pub struct MergeMetrics {
    pub history_rows: Count,
    pub neighbour_rows: Count,
    pub neighbour_set_rows: Count,
    pub queries_with_prior: Count,
    pub output_rows: Count,
    /// History rows the partitions would hold if each held only what its queries need (see
    /// [`split::history_rows_needed`]); over `history_rows`, the replication factor.
    pub history_rows_needed: Count,
    /// Pulling `history` (reading engagement and computing H) and interning it.
    pub read_history: Time,
    /// Pulling `neighbours` and filtering its rows.
    pub read_neighbours: Time,
    /// Sorting the history by query and building C_q.
    pub build_index: Time,
    /// Computing prior, alpha and F into output batches: the workers' time, summed.
    pub prior_blend: Time,
    /// The history's spill files (none when it fits in memory).
    pub spill: SpillMetrics,
    /// Blocks of queries whose history was read back from the spill files, and the rows read
    /// into them (over `history_rows`: how often a row was read back).
    pub history_blocks: Count,
    pub history_rows_loaded: Count,
    /// Reading blocks of history back: the partitions' time, summed.
    pub load_history: Time,
}

impl MergeMetrics {
    fn new(set: &ExecutionPlanMetricsSet) -> Self {
        let count = |name: &'static str| MetricBuilder::new(set).global_counter(name);
        let time = |name: &'static str| MetricBuilder::new(set).subset_time(name, 0);
        MergeMetrics {
            history_rows: count("history_rows"),
            neighbour_rows: count("neighbour_rows"),
            neighbour_set_rows: count("neighbour_set_rows"),
            queries_with_prior: count("queries_with_prior"),
            output_rows: count("output_rows"),
            history_rows_needed: count("history_rows_needed"),
            read_history: time("read_history"),
            read_neighbours: time("read_neighbours"),
            build_index: time("build_index"),
            prior_blend: time("prior_blend"),
            spill: SpillMetrics::new(set, 0),
            history_blocks: count("history_blocks"),
            history_rows_loaded: count("history_rows_loaded"),
            load_history: time("load_history"),
        }
    }
}

/// Neighbour sets, prior and blend over two children, `history` (query, product_id, impressions,
/// h) and `neighbours` (query, neighbour, score); one output partition sorted by (query,
/// product_id). See the module documentation.
#[derive(Debug)]
pub struct PriorMergeExec {
    history: Arc<dyn ExecutionPlan>,
    neighbours: Arc<dyn ExecutionPlan>,
    /// With [`Split::Shares`]: a leaf with one partition per share, whose one row is the
    /// share's number ([`share::numbering`]). The operator's partitions are this child's, so a
    /// Ballista scheduler that restricts a task to its slice of the leaves' partitions hands
    /// the task exactly its shares (the other inputs are read whole: `SinglePartition`).
    shares: Option<Arc<dyn ExecutionPlan>>,
    params: MergeParams,
    /// The operator's partitions, or with shares their number in all (each task may run a few).
    partitions: usize,
    split: Split,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// Set on construction; read after a run.
    measured: MergeMetrics,
    /// The index, built once by the first partition executed and shared by all, whenever they
    /// execute (a child must not be executed twice). It lives, with its memory reservation, as
    /// long as the plan.
    built: Mutex<Option<SharedIndex>>,
}

/// The index and its chunks, with the memory reserved for them (released when the last
/// partition drops it).
struct Built {
    index: index::Index,
    chunks: split::Chunks,
    /// When the history is spilled: the blocks the partitions load it in.
    blocks: Vec<split::Block>,
    /// What the index holds (the history's and candidates' parts empty if they spilled; the
    /// members, when the candidates did not, are in the candidates' memory).
    _memory: index::Memory,
}

type SharedIndex = Shared<BoxFuture<'static, Result<Arc<Built>, Arc<DataFusionError>>>>;

impl PriorMergeExec {
    /// The operator with `partitions` output partitions (at least 1), divided as `split` says.
    pub fn try_new(
        history: Arc<dyn ExecutionPlan>,
        neighbours: Arc<dyn ExecutionPlan>,
        params: MergeParams,
        partitions: usize,
        split: Split,
        schema: SchemaRef,
    ) -> Result<Self> {
        let shares = match split {
            Split::Shares => Some(share::numbering(partitions)?),
            Split::Ranges => None,
        };
        Self::with_children(
            history, neighbours, shares, params, partitions, split, schema,
        )
    }

    /// [`Self::try_new`] with the shares leaf given (as a codec or a restricted plan has it).
    pub fn with_children(
        history: Arc<dyn ExecutionPlan>,
        neighbours: Arc<dyn ExecutionPlan>,
        shares: Option<Arc<dyn ExecutionPlan>>,
        params: MergeParams,
        partitions: usize,
        split: Split,
        schema: SchemaRef,
    ) -> Result<Self> {
        check_schema(&schema)?;
        if partitions == 0 {
            return plan_err!("PriorMergeExec needs at least one partition");
        }
        if (split == Split::Shares) != shares.is_some() {
            return plan_err!("PriorMergeExec: a shares leaf exactly when split by shares");
        }
        let integers = |s: &SchemaRef| {
            s.fields()
                .get(1)
                .is_some_and(|f| f.data_type().is_integer())
        };
        if integers(&history.schema()) != integers(&schema) {
            return plan_err!(
                "PriorMergeExec: history's product_id and the output's differ in type ({:?} vs {})",
                history.schema().fields().get(1).map(|f| f.data_type()),
                schema.field(1).data_type()
            );
        }
        let ascending = SortOptions {
            descending: false,
            nulls_first: false,
        };
        let mut eq = EquivalenceProperties::new(Arc::clone(&schema));
        eq.add_ordering([
            PhysicalSortExpr::new(Arc::new(Column::new("query", 0)), ascending),
            PhysicalSortExpr::new(Arc::new(Column::new("product_id", 1)), ascending),
        ]);
        let output_partitions = match &shares {
            Some(leaf) => leaf.properties().partitioning.partition_count(),
            None => partitions,
        };
        let properties = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(output_partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        let metrics = ExecutionPlanMetricsSet::new();
        let measured = MergeMetrics::new(&metrics);
        Ok(PriorMergeExec {
            history,
            neighbours,
            shares,
            params,
            partitions,
            split,
            properties: Arc::new(properties),
            metrics,
            measured,
            built: Mutex::new(None),
        })
    }

    pub fn params(&self) -> &MergeParams {
        &self.params
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// The index the partitions read, started by the first partition to execute and awaited by
    /// all (a child is executed once: a file scan's partitions share one queue of files, so a
    /// second execution would find it empty). With [`Split::Shares`] it holds the shares of this
    /// operator's partitions only (on a cluster, the task's slice), output partition k writing
    /// the k-th.
    fn index_of(&self, context: &Arc<TaskContext>) -> Result<SharedIndex> {
        let mut built = self.built.lock().expect("no panic holds this lock");
        if let Some(shared) = &*built {
            return Ok(shared.clone());
        }
        let shares = match &self.shares {
            // one share is the whole index
            Some(leaf) if self.partitions > 1 => {
                let numbers = (0..leaf.properties().partitioning.partition_count())
                    .map(|k| Ok(share::number_of(leaf.execute(k, Arc::clone(context))?)))
                    .collect::<Result<Vec<_>>>()?;
                Some(futures::future::try_join_all(numbers).boxed())
            }
            _ => None,
        };
        let shared = self.build_index(context, shares)?;
        *built = Some(shared.clone());
        Ok(shared)
    }

    /// Starts building the index of every query (`shares` absent) or of some shares' queries
    /// (their numbers, once known, in the order of the output partitions).
    fn build_index(
        &self,
        context: &Arc<TaskContext>,
        share: Option<BoxFuture<'static, Result<Vec<usize>>>>,
    ) -> Result<SharedIndex> {
        let history = execute_stream(Arc::clone(&self.history), Arc::clone(context))?;
        let neighbours = execute_stream(Arc::clone(&self.neighbours), Arc::clone(context))?;
        let pool = Arc::clone(context.memory_pool());
        let env = context.runtime_env();
        let mut memory = index::Memory {
            reservation: MemoryConsumer::new("PriorMergeExec").register(&pool),
            // the history's rows give way to the other spilling operators, and spill
            history: MemoryConsumer::new("PriorMergeExec history")
                .with_can_spill(true)
                .register(&pool),
            candidates: MemoryConsumer::new("PriorMergeExec neighbour candidates")
                .with_can_spill(true)
                .register(&pool),
            // only a bounded pool ever refuses memory
            spill: (env.disk_manager.tmp_files_enabled()
                && matches!(pool.memory_limit(), MemoryLimit::Finite(_)))
            .then(|| (Arc::clone(&env), self.measured.spill.clone())),
        };
        let (params, metrics) = (self.params, self.measured.clone());
        let workers = context.session_config().target_partitions();
        let shares = self.partitions;
        // the partitions that cut the index into ranges (shares: one range, each partition
        // writing its share's queries)
        let partitions = if share.is_some() { 1 } else { self.partitions };
        // the partitions that read the index at once (and may each hold a block of history)
        let mut readers = self.properties.partitioning.partition_count().max(1);
        // its own task, so the build goes on whichever partition polls
        let task = SpawnedTask::spawn(async move {
            let mine = match share {
                Some(numbers) => {
                    let numbers = numbers.await?;
                    readers = numbers.len().max(1);
                    Some(Arc::new(share::Mine::new(numbers, shares)))
                }
                None => None,
            };
            let (history, neighbours) = match &mine {
                Some(mine) => {
                    let reservation = MemoryConsumer::new("PriorMergeExec shares' neighbour rows")
                        .register(&pool);
                    let start = std::time::Instant::now();
                    let schema = neighbours.schema();
                    let (kept, needed) = share::neighbours_of_share(
                        neighbours,
                        Arc::clone(mine),
                        params.min_score,
                        reservation,
                    )
                    .await?;
                    metrics.read_neighbours.add_elapsed(start);
                    (
                        share::history_of_share(history, Arc::clone(mine), needed),
                        kept.into_stream(schema),
                    )
                }
                None => (history, neighbours),
            };
            let mut index =
                index::build(history, neighbours, &params, workers, &mut memory, &metrics).await?;
            if let Some(mine) = &mine {
                index.emitted = Some(index.queries.iter().map(|q| mine.partition_of(q)).collect());
            }
            let chunks = split::Chunks::new(&index);
            metrics
                .history_rows_needed
                .add(split::history_rows_needed(&index, &chunks, partitions));
            let blocks = match index.history {
                index::Stored::Resident(_) => Vec::new(),
                index::Stored::Spilled(_) => {
                    let budget =
                        partition::block_budget(pool.as_ref(), index.queries.len(), readers);
                    split::blocks(&index, &chunks, partitions, budget)
                }
            };
            Ok::<_, DataFusionError>(Arc::new(Built {
                index,
                chunks,
                blocks,
                _memory: memory,
            }))
        });
        let shared = async move {
            match task.join().await {
                Ok(Ok(built)) => Ok(built),
                Ok(Err(e)) => Err(Arc::new(e)),
                Err(e) => Err(Arc::new(DataFusionError::ExecutionJoin(Box::new(e)))),
            }
        }
        .boxed()
        .shared();
        Ok(shared)
    }

    /// The figures of the last execution.
    pub fn measured(&self) -> &MergeMetrics {
        &self.measured
    }
}

impl DisplayAs for PriorMergeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let p = &self.params;
        write!(
            f,
            "PriorMergeExec: neighbour sets (top_k={}, min_score={}, weighting={:?}), prior as a \
             per-query merge of the neighbours' history, blend {} (gamma={}, beta={}, m={}); \
             {} partitions, {}, each ordered by query, product_id",
            p.top_k,
            p.min_score,
            p.prior_weighting,
            p.blend.name(),
            p.gamma,
            p.beta,
            p.pseudo_impressions,
            self.partitions,
            match self.split {
                Split::Ranges => "sorted ranges of query",
                Split::Shares => "independent shares of query (by hash)",
            }
        )
    }
}

impl ExecutionPlan for PriorMergeExec {
    fn name(&self) -> &str {
        "PriorMergeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        let mut children = vec![&self.history, &self.neighbours];
        children.extend(&self.shares);
        children
    }

    /// Each child as one partition: the operator reads all of both. Locally that is the coalesce
    /// `execute` would do anyway; on Ballista it makes each child a stage of its own whose whole
    /// output the operator's single task reads (a multi-partition child would hand that task
    /// only its partition's share of the shuffle).
    fn required_input_distribution(&self) -> Vec<Distribution> {
        let mut required = vec![Distribution::SinglePartition; 2];
        if self.shares.is_some() {
            // a task's slice of the shares
            required.push(Distribution::UnspecifiedDistribution);
        }
        required
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: datafusion::physical_plan::ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut children = children.into_iter();
        let (Some(history), Some(neighbours), shares, None) = (
            children.next(),
            children.next(),
            children.next(),
            children.next(),
        ) else {
            return internal_err!("PriorMergeExec has two children (three with shares)");
        };
        Ok(Arc::new(PriorMergeExec::with_children(
            history,
            neighbours,
            shares,
            self.params,
            self.partitions,
            self.split,
            self.schema(),
        )?))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            datafusion::physical_plan::ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition >= self.partitions {
            return internal_err!(
                "PriorMergeExec has {} partitions, not {}",
                self.partitions,
                partition + 1
            );
        }
        let shared = self.index_of(&context)?;
        let (params, schema, metrics) = (self.params, self.schema(), self.measured.clone());
        // a shared index of shares is one range, which each partition reads for its share
        let (partition, partitions, only) = match (self.split, self.partitions) {
            (Split::Shares, 2..) => (0, 1, Some(partition as u32)),
            (Split::Shares, _) => (0, 1, None),
            (Split::Ranges, _) => (partition, self.partitions, None),
        };
        let batch_size = context.session_config().batch_size();
        // Workers per partition: all cores, since a single-file sink reads the partitions one
        // after the other; a few chunks in flight each.
        let workers = context.session_config().target_partitions().max(1);
        let out_schema = Arc::clone(&schema);
        let measured_rows = self.measured.output_rows.clone();
        let pool = Arc::clone(context.memory_pool());
        let emit = partition::Emit {
            params,
            schema,
            metrics,
            batch_size,
            workers,
            partition: only,
        };
        let batches = futures::stream::once(shared)
            .map_err(DataFusionError::Shared)
            .map_ok(move |built| partition::batches(built, partition, partitions, &emit, &pool))
            .try_flatten()
            .inspect_ok(move |batch: &RecordBatch| {
                measured_rows.add(batch.num_rows());
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, batches)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Every [`PriorMergeExec`] in `plan` (one per input partition).
pub fn find_merges(plan: &Arc<dyn ExecutionPlan>) -> Vec<&PriorMergeExec> {
    let mut found = Vec::new();
    let mut stack = vec![plan];
    while let Some(node) = stack.pop() {
        if let Some(merge) = node.downcast_ref::<PriorMergeExec>() {
            found.push(merge);
        }
        stack.extend(node.children());
    }
    found
}

#[cfg(test)]
mod tests;
