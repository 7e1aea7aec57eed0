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

pub mod codec;
pub mod concat;
pub mod emit;
pub mod history;
pub mod index;
pub mod intern;
pub mod sets;
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
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
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
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::inputs::OUTPUT_COLUMNS;
use crate::config::{Blend, FeatureParams, PriorWeighting};
use emit::Emitter;

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
    /// Output partitions of the operator.
    partitions: usize,
}

impl MergedFeatures {
    /// Reads `history` and `neighbours` from `ctx`; `schema` is the SQL `features` view's.
    /// `partitions`: the operator's output partitions (the session's target partitions, its
    /// cores, if absent).
    pub async fn new(
        ctx: &SessionContext,
        params: &FeatureParams,
        partitions: Option<usize>,
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
        })
    }

    /// The table as a codec decodes it (on a Ballista scheduler).
    pub fn from_parts(
        schema: SchemaRef,
        history: LogicalPlan,
        neighbours: LogicalPlan,
        params: MergeParams,
        partitions: usize,
    ) -> Result<Self> {
        check_schema(&schema)?;
        Ok(MergedFeatures {
            schema,
            history,
            neighbours,
            params,
            partitions: partitions.max(1),
        })
    }

    pub fn partitions(&self) -> usize {
        self.partitions
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
    params: MergeParams,
    partitions: usize,
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

/// History rows a partition reads, with the memory they hold.
struct Held {
    history: Arc<history::History>,
    _reservation: Option<MemoryReservation>,
}

/// Of the memory free when the index is built, the share blocks of history may take, in tenths
/// (the rest: output batches in flight and the writer's buffers).
const BLOCK_SHARE_TENTHS: usize = 8;

type SharedIndex = Shared<BoxFuture<'static, Result<Arc<Built>, Arc<DataFusionError>>>>;

impl PriorMergeExec {
    /// The operator with `partitions` output partitions (at least 1).
    pub fn try_new(
        history: Arc<dyn ExecutionPlan>,
        neighbours: Arc<dyn ExecutionPlan>,
        params: MergeParams,
        partitions: usize,
        schema: SchemaRef,
    ) -> Result<Self> {
        check_schema(&schema)?;
        if partitions == 0 {
            return plan_err!("PriorMergeExec needs at least one partition");
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
        let properties = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        let metrics = ExecutionPlanMetricsSet::new();
        let measured = MergeMetrics::new(&metrics);
        Ok(PriorMergeExec {
            history,
            neighbours,
            params,
            partitions,
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

    /// The index build, started by the first partition to execute and awaited by all.
    fn shared_index(&self, context: &Arc<TaskContext>) -> Result<SharedIndex> {
        let mut built = self.built.lock().expect("no panic holds this lock");
        if let Some(shared) = &*built {
            return Ok(shared.clone());
        }
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
        let partitions = self.partitions;
        // its own task, so the build goes on whichever partition polls
        let task = SpawnedTask::spawn(async move {
            let index =
                index::build(history, neighbours, &params, workers, &mut memory, &metrics).await?;
            let chunks = split::Chunks::new(&index);
            metrics
                .history_rows_needed
                .add(split::history_rows_needed(&index, &chunks, partitions));
            let blocks = match index.history {
                index::Stored::Resident(_) => Vec::new(),
                index::Stored::Spilled(_) => {
                    let budget = block_budget(pool.as_ref(), index.queries.len(), partitions);
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
        *built = Some(shared.clone());
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
             {} partitions, sorted ranges of query, each ordered by query, product_id",
            p.top_k,
            p.min_score,
            p.prior_weighting,
            p.blend.name(),
            p.gamma,
            p.beta,
            p.pseudo_impressions,
            self.partitions
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
        vec![&self.history, &self.neighbours]
    }

    /// Each child as one partition: the operator reads all of both. Locally that is the coalesce
    /// `execute` would do anyway; on Ballista it makes each child a stage of its own whose whole
    /// output the operator's single task reads (a multi-partition child would hand that task
    /// only its partition's share of the shuffle).
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition; 2]
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
        let [history, neighbours]: [Arc<dyn ExecutionPlan>; 2] = match children.try_into() {
            Ok(children) => children,
            Err(_) => return internal_err!("PriorMergeExec has two children"),
        };
        Ok(Arc::new(PriorMergeExec::try_new(
            history,
            neighbours,
            self.params,
            self.partitions,
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
        let shared = self.shared_index(&context)?;
        let (params, schema, metrics) = (self.params, self.schema(), self.measured.clone());
        let partitions = self.partitions;
        let batch_size = context.session_config().batch_size();
        // Workers per partition: all cores, since a single-file sink reads the partitions one
        // after the other; a few chunks in flight each.
        let workers = context.session_config().target_partitions().max(1);
        let out_schema = Arc::clone(&schema);
        let measured_rows = self.measured.output_rows.clone();
        let pool = Arc::clone(context.memory_pool());
        let emit = Emit {
            params,
            schema,
            metrics,
            batch_size,
            workers,
        };
        let batches = futures::stream::once(shared)
            .map_err(DataFusionError::Shared)
            .map_ok(move |built| {
                let chunks = built.chunks.of_partition(partition, partitions);
                match built.index.resident() {
                    Some(history) => {
                        let held = Arc::new(Held {
                            history: Arc::clone(history),
                            _reservation: None,
                        });
                        emit.chunks(built, held, chunks).boxed()
                    }
                    None => {
                        // this partition's blocks, one at a time
                        let blocks: Vec<split::Block> = built
                            .blocks
                            .iter()
                            .filter(|b| chunks.contains(&b.chunks.start))
                            .cloned()
                            .collect();
                        let (emit, pool) = (emit.clone(), Arc::clone(&pool));
                        let metrics = emit.metrics.clone();
                        futures::stream::iter(blocks)
                            .then(move |block| {
                                let (built, pool) = (Arc::clone(&built), Arc::clone(&pool));
                                let metrics = metrics.clone();
                                async move {
                                    let held =
                                        load_block(&built, &block, partition, &pool, &metrics)
                                            .await?;
                                    Ok::<_, DataFusionError>((built, held, block))
                                }
                            })
                            .map_ok(move |(built, held, block)| {
                                emit.chunks(built, held, block.chunks)
                            })
                            .try_flatten()
                            .boxed()
                    }
                }
            })
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

/// What computing a partition's chunks needs.
#[derive(Clone)]
struct Emit {
    params: MergeParams,
    schema: SchemaRef,
    metrics: MergeMetrics,
    batch_size: usize,
    workers: usize,
}

impl Emit {
    /// The batches of `chunks`, in order, computed by up to `workers` blocking tasks at once
    /// from `held`'s history.
    fn chunks(
        &self,
        built: Arc<Built>,
        held: Arc<Held>,
        chunks: std::ops::Range<usize>,
    ) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
        let this = self.clone();
        if self.workers == 1 {
            // One worker: each batch is computed when the consumer asks for it, on its thread,
            // and encoded while still in cache (a chunk computed whole on another thread was
            // cold by the time the writer read it).
            let state = (built, held, this, chunks, None::<(usize, Emitter)>);
            return futures::stream::try_unfold(
                state,
                |(built, held, this, mut chunks, mut current)| async move {
                    loop {
                        if current.is_none() {
                            let Some(chunk) = chunks.next() else {
                                return Ok(None);
                            };
                            let queries = built.chunks.queries(chunk);
                            let emitter = Emitter::new(
                                &built.index,
                                queries,
                                this.params,
                                Arc::clone(&this.schema),
                                this.batch_size,
                            );
                            current = Some((chunk, emitter));
                        }
                        let (_, emitter) = current.as_mut().expect("set above");
                        let timer = this.metrics.prior_blend.timer();
                        let batch = emitter.next_batch(&built.index, &held.history)?;
                        timer.done();
                        match batch {
                            Some(batch) => {
                                return Ok(Some((batch, (built, held, this, chunks, current))));
                            }
                            None => current = None,
                        }
                    }
                },
            )
            .boxed();
        }
        futures::stream::iter(chunks)
            .map(move |chunk| {
                let (built, held, this) = (Arc::clone(&built), Arc::clone(&held), this.clone());
                SpawnedTask::spawn_blocking(move || {
                    let timer = this.metrics.prior_blend.timer();
                    let queries = built.chunks.queries(chunk);
                    let batches = Emitter::new(
                        &built.index,
                        queries,
                        this.params,
                        this.schema,
                        this.batch_size,
                    )
                    .all_batches(&built.index, &held.history);
                    timer.done();
                    batches
                })
                .join_unwind()
            })
            // no more chunks computing than workers: on one core a second would only preempt
            // the first and the writer, evicting their caches
            .buffered(self.workers)
            .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))
            .and_then(futures::future::ready)
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }
}

/// History rows a block of each partition may hold, when the history is spilled: a share of
/// the memory the pool has left once the index is built, split between the partitions (which
/// may all load a block at once) less each block's offsets and marks.
fn block_budget(
    pool: &dyn datafusion::execution::memory_pool::MemoryPool,
    n_queries: usize,
    partitions: usize,
) -> usize {
    let free = match pool.memory_limit() {
        MemoryLimit::Finite(limit) => limit.saturating_sub(pool.reserved()),
        _ => usize::MAX,
    };
    let per_partition = free / 10 * BLOCK_SHARE_TENTHS / partitions.max(1);
    per_partition.saturating_sub(history::History::bytes(0, n_queries) + n_queries)
        / std::mem::size_of::<history::HistoryRow>()
}

/// Reads `block`'s history back from the spill files, its memory reserved from `pool`.
async fn load_block(
    built: &Built,
    block: &split::Block,
    partition: usize,
    pool: &Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    metrics: &MergeMetrics,
) -> Result<Arc<Held>> {
    let index::Stored::Spilled(spilled) = &built.index.history else {
        return internal_err!("a block of history is loaded only when it is spilled");
    };
    let timer = metrics.load_history.timer();
    let n = built.index.queries.len();
    let reservation =
        MemoryConsumer::new(format!("PriorMergeExec[{partition}] history block")).register(pool);
    reservation
        .try_grow(history::History::bytes(block.rows, n) + n)
        .map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "the merge plan reads its spilled history back a block of queries at a time, \
                 and a block of {} rows does not fit ({e}); raise --memory-limit or lower \
                 --partitions",
                block.rows
            ))
        })?;
    let mut needed = vec![false; n];
    let first = built.chunks.queries(block.chunks.start).start;
    let end = built.chunks.queries(block.chunks.end - 1).end;
    for q in first..end {
        needed[q as usize] = true;
        for m in built.index.members_of(q) {
            needed[m.neighbour as usize] = true;
        }
    }
    let history = spilled.load(&needed, block.rows).await?;
    drop(needed);
    debug_assert_eq!(
        history.rows(),
        block.rows,
        "a block holds the rows it was cut for"
    );
    metrics.history_blocks.add(1);
    metrics.history_rows_loaded.add(history.rows());
    timer.done();
    Ok(Arc::new(Held {
        history: Arc::new(history),
        _reservation: Some(reservation),
    }))
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
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::SessionConfig;

    /// `queries` queries with 20 history rows each and 30 neighbour rows, from a fixed
    /// generator (some neighbours repeat, some have no history, some score below 0.2).
    fn inputs(queries: usize) -> (RecordBatch, RecordBatch) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut hq, mut hp, mut hi, mut hh) = (vec![], vec![], vec![], vec![]);
        for q in 0..queries {
            for j in 0..20u64 {
                hq.push(format!("query {q:05}"));
                hp.push(format!("p{}", (q as u64 * 7 + j * 13 + next() % 5) % 2000));
                hi.push((next() % 1000) as i64);
                hh.push((next() % 10_000) as f64 / 997.0);
            }
        }
        let (mut nq, mut nn, mut ns) = (vec![], vec![], vec![]);
        for q in 0..queries {
            for _ in 0..30 {
                nq.push(format!("query {q:05}"));
                // a tenth of the neighbours are queries without history
                nn.push(format!("query {:05}", next() % (queries as u64 * 11 / 10)));
                ns.push((next() % 1000) as f64 / 1000.0);
            }
        }
        let history = RecordBatch::try_from_iter(vec![
            ("query", Arc::new(StringArray::from(hq)) as _),
            ("product_id", Arc::new(StringArray::from(hp)) as _),
            ("impressions", Arc::new(Int64Array::from(hi)) as _),
            ("h", Arc::new(Float64Array::from(hh)) as _),
        ])
        .unwrap();
        let neighbours = RecordBatch::try_from_iter(vec![
            ("query", Arc::new(StringArray::from(nq)) as _),
            ("neighbour", Arc::new(StringArray::from(nn)) as _),
            ("score", Arc::new(Float64Array::from(ns)) as _),
        ])
        .unwrap();
        (history, neighbours)
    }

    fn params() -> MergeParams {
        MergeParams {
            top_k: 10,
            min_score: 0.2,
            prior_weighting: PriorWeighting::Score,
            gamma: 0.5,
            beta: 0.8,
            blend: Blend::Paper,
            smoothing: 0.0,
            pseudo_impressions: 10.0,
        }
    }

    /// The operator's partitions, each collected whole, in order; `concurrently`: all polled
    /// at once (as a folder write does) rather than one after the other.
    async fn run(
        limit: Option<usize>,
        partitions: usize,
        concurrently: bool,
        queries: usize,
        workers: usize,
    ) -> Result<(Vec<Vec<RecordBatch>>, MergeMetrics)> {
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = limit {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        }
        let config = SessionConfig::new()
            .with_target_partitions(workers)
            .with_batch_size(512);
        let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
        let (history, neighbours) = inputs(queries);
        ctx.register_batch("history", history)?;
        ctx.register_batch("neighbours", neighbours)?;
        let history = ctx.table("history").await?.create_physical_plan().await?;
        let neighbours = ctx
            .table("neighbours")
            .await?
            .create_physical_plan()
            .await?;
        let schema = Arc::new(Schema::new(
            OUTPUT_COLUMNS
                .iter()
                .zip(TYPES)
                .map(|(name, t)| Field::new(*name, t, true))
                .collect::<Vec<_>>(),
        ));
        let exec = Arc::new(PriorMergeExec::try_new(
            history,
            neighbours,
            params(),
            partitions,
            schema,
        )?);
        let task = ctx.task_ctx();
        let collect = |p: usize| {
            let stream = exec.execute(p, Arc::clone(&task));
            async move { stream?.try_collect::<Vec<_>>().await }
        };
        let out = if concurrently {
            futures::future::try_join_all((0..partitions).map(collect)).await?
        } else {
            let mut out = Vec::new();
            for p in 0..partitions {
                out.push(collect(p).await?);
            }
            out
        };
        Ok((out, exec.measured().clone()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_a_limit_far_below_its_history_the_merge_spills_and_writes_the_same_batches() {
        let queries = 3000;
        let (unlimited, free) = run(None, 1, false, queries, 2).await.unwrap();
        assert_eq!(free.spill.spill_file_count.value(), 0);
        let expected: Vec<RecordBatch> = unlimited.into_iter().flatten().collect();
        assert!(expected.iter().map(|b| b.num_rows()).sum::<usize>() > 100_000);
        // 60,000 history rows hold 2.4 MB in memory, 90,000 neighbour rows 1.4 MB
        for (limit, partitions, concurrently) in [
            (3_500_000, 1, false),
            (3_500_000, 3, false),
            (3_500_000, 3, true),
            (3_500_000, 8, true),
            (1_600_000, 1, false),
            (1_600_000, 2, true),
        ] {
            // one worker computes batches as they are asked for, two compute chunks ahead
            let (out, m) = run(
                Some(limit),
                partitions,
                concurrently,
                queries,
                partitions % 2 + 1,
            )
            .await
            .unwrap();
            let got: Vec<RecordBatch> = out.into_iter().flatten().collect();
            assert!(
                got == expected,
                "{partitions} partitions (concurrently: {concurrently}) under {limit} bytes \
                 differ from an unlimited run"
            );
            let spilled = m.spill.spilled_rows.value();
            assert!(
                m.spill.spill_file_count.value() >= 2,
                "spilled more than once"
            );
            assert!(spilled >= 60_000, "{spilled} rows spilled");
            if limit < 2_000_000 {
                assert!(
                    spilled > 60_000,
                    "the candidates spilled too: {spilled} rows"
                );
            }
            assert!(m.spill.spilled_bytes.value() > 60_000 * 24);
            assert!(
                m.history_blocks.value() > partitions,
                "{partitions} partitions read the history back in {} blocks",
                m.history_blocks.value()
            );
            assert!(m.history_rows_loaded.value() >= 60_000);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_limit_too_small_for_the_strings_and_neighbour_sets_fails_clearly() {
        let e = run(Some(200_000), 2, false, 3000, 2).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("raise --memory-limit"), "{text}");
        assert!(text.contains("neighbour sets"), "{text}");
    }
}
