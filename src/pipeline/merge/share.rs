//! Shares: the merge cut into independent tasks, for a cluster where partitions run in different
//! processes and cannot share one index ([`Split::Shares`](super::Split::Shares)).
//!
//! Partition i of N owns the queries whose key hashes to i ([`share_of`]). Its task reads both
//! inputs whole but keeps only what its queries need:
//!
//! 1. the neighbour rows of its own queries, and the set of neighbours they name;
//! 2. the history rows of its own queries and of those neighbours.
//!
//! From these it builds an index of its own and emits its queries' rows, sorted by (query,
//! product_id). What a task holds is its share of the history plus the neighbours' history it
//! needs (the replication a split by query costs: see docs/DISTRIBUTED.md), and 1/N of the
//! neighbour rows. The shares' rows together are the whole output; each share is sorted, the
//! shares are not ranges of one order.

use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, UInt32Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DataFusionError, HashSet, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::Count;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, replace_children_if_necessary};
use futures::{FutureExt, StreamExt};

use super::index::{KeepRows, NOT_EMITTED, numbers, strings};

/// The physical optimizer rule that lets a share's task read its input files itself.
///
/// A share's task reads both inputs whole (`SinglePartition`). Over a scan of several partitions
/// (DataFusion splits files into ranges to read them on every core) the planner merges them
/// with a `CoalescePartitionsExec`, where Ballista ends a stage: the inputs were scanned in
/// stages of their own, and every task fetched their whole output through the shuffle (written,
/// compressed, sent, decompressed, decoded again). This rule, run after DataFusion's own, puts
/// the scan back as one partition ([`read_whole`]) under each such merge: it stays in the merge
/// stage and each task reads the files. An input that is aggregated (duplicates summed,
/// variants normalized) keeps its stage: the aggregate must be complete before any share reads
/// it. The local plan ([`Split::Ranges`](super::Split::Ranges)) is left as it is.
#[derive(Debug, Default)]
pub struct ReadInputsInMergeStage;

impl PhysicalOptimizerRule for ReadInputsInMergeStage {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(merge) = node.downcast_ref::<super::PriorMergeExec>() else {
                return Ok(Transformed::no(node));
            };
            if merge.shares.is_none() {
                return Ok(Transformed::no(node));
            }
            let mut changed = false;
            let mut children: Vec<Arc<dyn ExecutionPlan>> =
                node.children().into_iter().cloned().collect();
            // history and neighbours; the third child numbers the shares
            for child in children.iter_mut().take(2) {
                if !child.is::<CoalescePartitionsExec>() {
                    continue;
                }
                let whole = read_whole(Arc::clone(child.children()[0]))?;
                if whole.properties().output_partitioning().partition_count() == 1 {
                    *child = whole;
                    changed = true;
                }
            }
            if !changed {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(replace_children_if_necessary(
                node, children,
            )?))
        })
        .data()
    }

    fn name(&self) -> &str {
        "q2q_read_inputs_in_merge_stage"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` reading its files as one partition, when it is a scan under operators that work
/// partition by partition (projections, filters); otherwise `plan` itself.
fn read_whole(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    if plan.properties().output_partitioning().partition_count() <= 1 {
        return Ok(plan);
    }
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        let source: &dyn std::any::Any = scan.data_source().as_ref();
        let Some(config) = source.downcast_ref::<FileScanConfig>() else {
            return Ok(plan);
        };
        let files: Vec<_> = config
            .file_groups
            .iter()
            .flat_map(|group| group.iter().cloned())
            .collect();
        let config = FileScanConfigBuilder::from(config.clone())
            .with_file_groups(vec![FileGroup::new(files)])
            .build();
        return Ok(DataSourceExec::from_data_source(config));
    }
    let partition_wise = plan.is::<ProjectionExec>() || plan.is::<FilterExec>();
    match plan.children().as_slice() {
        [child] if partition_wise => {
            let child = read_whole(Arc::clone(child))?;
            if child.properties().output_partitioning().partition_count() > 1 {
                return Ok(plan);
            }
            replace_children_if_necessary(plan, vec![child])
        }
        _ => Ok(plan),
    }
}

/// The share of `shares` that query `key` belongs to: FNV-1a (64-bit) of its UTF-8 bytes, modulo
/// `shares`. Fixed, so that every process (client, scheduler, executors, of any build of this
/// version) agrees.
pub fn share_of(key: &str, shares: usize) -> usize {
    (crate::hash::fnv1a64(key.as_bytes()) % shares.max(1) as u64) as usize
}

/// The leaf that numbers the shares: `shares` partitions, partition k one row holding k (column
/// `share`, UInt32). A scheduler that gives each task a slice of the leaves' partitions gives it
/// the rows of its shares with them.
pub fn numbering(shares: usize) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "share",
        DataType::UInt32,
        false,
    )]));
    let partitions = (0..shares)
        .map(|k| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(UInt32Array::from(vec![k as u32]))],
            )
            .map(|batch| vec![batch])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(MemorySourceConfig::try_new_exec(&partitions, schema, None)?)
}

/// The share number a partition of [`numbering`] holds.
pub fn number_of(
    mut partition: SendableRecordBatchStream,
) -> futures::future::BoxFuture<'static, Result<usize>> {
    async move {
        while let Some(batch) = partition.next().await {
            let batch = batch?;
            if let Some(numbers) = batch.column(0).as_primitive_opt::<UInt32Type>()
                && !numbers.is_empty()
            {
                return Ok(numbers.value(0) as usize);
            }
        }
        Err(DataFusionError::Internal(
            "PriorMergeExec: a partition of the shares leaf holds no share number".into(),
        ))
    }
    .boxed()
}

/// The shares one operator instance computes (on a cluster, its task's slice), and for each
/// share the output partition that writes it.
pub struct Mine {
    shares: usize,
    /// By share number: the output partition, or [`NOT_EMITTED`] for another task's share.
    partition: Vec<u32>,
}

impl Mine {
    /// `numbers[k]` is output partition k's share, of `shares`.
    pub fn new(numbers: Vec<usize>, shares: usize) -> Self {
        let mut partition = vec![NOT_EMITTED; shares.max(1)];
        for (k, &n) in numbers.iter().enumerate() {
            if let Some(slot) = partition.get_mut(n) {
                *slot = k as u32;
            }
        }
        Mine { shares, partition }
    }

    /// The output partition that writes `query`'s rows, or [`NOT_EMITTED`].
    pub fn partition_of(&self, query: &str) -> u32 {
        self.partition[share_of(query, self.shares)]
    }

    fn owns(&self, query: &str) -> bool {
        self.partition_of(query) != NOT_EMITTED
    }
}

/// The neighbours a share's queries name, which its history must include.
pub type Needed = Arc<HashSet<Box<str>>>;

/// A share's neighbour rows, held until the index build reads them.
pub struct ShareNeighbours {
    batches: Vec<RecordBatch>,
    reservation: MemoryReservation,
}

fn too_big(e: DataFusionError, shares: usize) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "a task of the merge plan holds its share (1/{shares}) of the neighbour rows and the set \
         of neighbours they name in memory, and they do not fit ({e}); raise --memory-limit or \
         --partitions"
    ))
}

/// Reads `neighbours` (query, neighbour, score) and keeps the rows of `mine`'s queries; returns
/// them with the neighbours they name (in rows that pass `min_score`, not self-pairs). Their memory is taken from `reservation`, and given back
/// as the index build consumes them.
pub async fn neighbours_of_share(
    mut neighbours: SendableRecordBatchStream,
    mine: Arc<Mine>,
    min_score: f64,
    reservation: MemoryReservation,
) -> Result<(ShareNeighbours, Needed)> {
    let shares = mine.shares;
    let mut batches = Vec::new();
    let mut needed: HashSet<Box<str>> = HashSet::new();
    while let Some(batch) = neighbours.next().await {
        let batch = batch?;
        let query = strings(&batch, 0)?;
        let query = query.as_string::<i32>();
        // a null query fails the neighbour-set stage's filters: nothing to keep
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| Some(query.is_valid(i) && mine.owns(query.value(i))))
            .collect();
        let kept = filter_record_batch(&batch, &keep)?;
        if kept.num_rows() == 0 {
            continue;
        }
        let (query, named) = (strings(&kept, 0)?, strings(&kept, 1)?);
        let (query, named) = (query.as_string::<i32>(), named.as_string::<i32>());
        let score = numbers(&kept, 2, &DataType::Float64)?;
        let score = score.as_primitive::<Float64Type>();
        let mut added = 0;
        for i in 0..kept.num_rows() {
            // only a neighbour that can be a member (see `index::neighbour_candidates`)
            let member = named.is_valid(i)
                && score.is_valid(i)
                && score.value(i).total_cmp(&min_score) != Ordering::Less
                && named.value(i) != query.value(i);
            if member && !needed.contains(named.value(i)) {
                added += named.value(i).len() + 2 * size_of::<usize>();
                needed.insert(named.value(i).into());
            }
        }
        reservation
            .try_grow(rows_bytes(&kept)? + added)
            .map_err(|e| too_big(e, shares))?;
        batches.push(kept);
    }
    Ok((
        ShareNeighbours {
            batches,
            reservation,
        },
        Arc::new(needed),
    ))
}

/// The bytes of a batch of neighbour rows: its strings and numbers (a filtered batch may share
/// its input's buffers, whose whole size `get_array_memory_size` would count for each).
fn rows_bytes(batch: &RecordBatch) -> Result<usize> {
    let mut bytes = batch.num_rows() * (size_of::<f64>() + 2 * size_of::<i32>());
    for column in 0..2 {
        let strings = strings(batch, column)?;
        let offsets = strings.as_string::<i32>().value_offsets();
        if let (Some(first), Some(last)) = (offsets.first(), offsets.last()) {
            bytes += (last - first) as usize;
        }
    }
    Ok(bytes)
}

impl ShareNeighbours {
    /// The rows kept.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The kept rows as a stream (schema `schema`), each batch's memory released once read.
    pub fn into_stream(
        self,
        schema: datafusion::arrow::datatypes::SchemaRef,
    ) -> SendableRecordBatchStream {
        let ShareNeighbours {
            batches,
            reservation,
        } = self;
        let stream = futures::stream::unfold(
            (batches.into_iter(), reservation),
            |(mut batches, reservation)| async move {
                let batch = batches.next()?;
                let bytes = rows_bytes(&batch).unwrap_or(0);
                reservation.shrink(bytes.min(reservation.size()));
                Some((Ok(batch), (batches, reservation)))
            },
        );
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }
}

/// What a share keeps of a history batch (query first): the rows of `mine`'s queries and of the
/// `needed` neighbours, counting the rows it reads in `read`. Rows with a null query are kept,
/// so that the index build reports them as it does without shares. The index build's workers
/// run it, each on its batch.
pub fn history_of_share(mine: Arc<Mine>, needed: Needed, read: Count) -> KeepRows {
    Arc::new(move |batch: RecordBatch| {
        read.add(batch.num_rows());
        let query = strings(&batch, 0)?;
        let query = query.as_string::<i32>();
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                Some(
                    query.is_null(i)
                        || mine.owns(query.value(i))
                        || needed.contains(query.value(i)),
                )
            })
            .collect();
        Ok(filter_record_batch(&batch, &keep)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_fixed_and_cover_every_share() {
        // FNV-1a's published test vector: "a" hashes to 0xaf63dc4c8601ec8c
        assert_eq!(
            share_of("a", usize::MAX),
            (0xaf63_dc4c_8601_ec8c_u64 % usize::MAX as u64) as usize
        );
        assert_eq!(share_of("anything", 1), 0);
        let mut seen = [0usize; 7];
        for q in 0..7000 {
            seen[share_of(&format!("query {q}"), 7)] += 1;
        }
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");
    }
}
