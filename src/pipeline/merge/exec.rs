//! [`PriorMergeExec`], the merge plan's physical operator: builds the index once (shared by the
//! operator's partitions), runs each output partition, and reports its metrics.

use super::*;
use datafusion::common::stats::Precision;
use datafusion::physical_plan::{StatisticsArgs, StatisticsContext};

/// What the operator measured; shown by EXPLAIN ANALYZE and in `run`'s summary.
#[derive(Debug, Clone)]
pub struct MergeMetrics {
    /// History rows in the index: all of them, or on a cluster what a task's shares need.
    pub history_rows: Count,
    /// History rows read to build the index (more than `history_rows` in a share's task).
    pub history_rows_read: Count,
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
    /// Rewriting the spilled history in query order (not in `build_index`).
    pub sort_history: Time,
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
            history_rows: count(crate::io::sink::parts::HISTORY_HELD),
            history_rows_read: count(crate::io::sink::parts::HISTORY_READ),
            neighbour_rows: count("neighbour_rows"),
            neighbour_set_rows: count(crate::io::sink::parts::NEIGHBOUR_SET_ROWS),
            queries_with_prior: count(crate::io::sink::parts::QUERIES_WITH_PRIOR),
            output_rows: count("output_rows"),
            history_rows_needed: count("history_rows_needed"),
            read_history: time("read_history"),
            read_neighbours: time("read_neighbours"),
            build_index: time("build_index"),
            prior_blend: time("prior_blend"),
            spill: SpillMetrics::new(set, 0),
            sort_history: time("sort_history"),
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
    pub(super) history: Arc<dyn ExecutionPlan>,
    pub(super) neighbours: Arc<dyn ExecutionPlan>,
    /// With [`Split::Shares`]: a leaf with one partition per share, whose one row is the
    /// share's number ([`share::numbering`]). The operator's partitions are this child's, so a
    /// Ballista scheduler that restricts a task to its slice of the leaves' partitions hands
    /// the task exactly its shares (the other inputs are read whole: `SinglePartition`).
    pub(super) shares: Option<Arc<dyn ExecutionPlan>>,
    pub(super) params: MergeParams,
    /// The operator's partitions, or with shares their number in all (each task may run a few).
    pub(super) partitions: usize,
    pub(super) split: Split,
    pub(super) properties: Arc<PlanProperties>,
    pub(super) metrics: ExecutionPlanMetricsSet,
    /// Set on construction; read after a run.
    pub(super) measured: MergeMetrics,
    /// The index, built once by the first partition executed and shared by all, whenever they
    /// execute (a child must not be executed twice). It lives, with its memory reservation, as
    /// long as the plan.
    pub(super) built: Mutex<Option<SharedIndex>>,
}

/// The index and its chunks, with the memory reserved for them (released when the last
/// partition drops it).
pub(super) struct Built {
    pub(super) index: index::Index,
    pub(super) chunks: split::Chunks,
    /// When the history is spilled: the blocks the partitions load it in.
    pub(super) blocks: Vec<split::Block>,
    /// What the index holds (the history's and candidates' parts empty if they spilled; the
    /// members, when the candidates did not, are in the candidates' memory).
    pub(super) _memory: index::Memory,
}

pub(super) type SharedIndex = Shared<BoxFuture<'static, Result<Arc<Built>, Arc<DataFusionError>>>>;

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
            // a share keeps at most the history's rows (the pages of the buffer past the rows it
            // keeps are never touched), and its own neighbour rows, counted once it has read
            // them (below)
            expected_rows: index::ExpectedRows {
                history: exact_rows(&self.history),
                neighbours: match share {
                    Some(_) => None,
                    None => exact_rows(&self.neighbours),
                },
            },
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
            let (keep_history, neighbours) = match &mine {
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
                    memory.expected_rows.neighbours = Some(kept.rows());
                    (
                        Some(share::history_of_share(
                            Arc::clone(mine),
                            needed,
                            metrics.history_rows_read.clone(),
                        )),
                        kept.into_stream(schema),
                    )
                }
                None => (None, neighbours),
            };
            let mut index = index::build(
                history,
                keep_history,
                neighbours,
                &params,
                workers,
                &mut memory,
                &metrics,
            )
            .await?;
            if mine.is_none() {
                metrics.history_rows_read.add(metrics.history_rows.value());
            }
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

/// The rows `plan` yields, when its statistics know them exactly.
fn exact_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let statistics = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()?;
    match statistics.num_rows {
        Precision::Exact(rows) => Some(rows),
        _ => None,
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
