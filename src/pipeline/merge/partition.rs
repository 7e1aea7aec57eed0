//! What one output partition of [`PriorMergeExec`](super::PriorMergeExec) runs: its chunks,
//! computed from the history in memory, or, when the history spilled, from blocks of it read
//! back one at a time (`split::Block`).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::emit::Emitter;
use super::{Built, MergeMetrics, MergeParams, history, index, split};

/// The batches of output partition `partition` of `partitions`, in order.
pub(super) fn batches(
    built: Arc<Built>,
    partition: usize,
    partitions: usize,
    emit: &Emit,
    pool: &Arc<dyn MemoryPool>,
) -> BoxStream<'static, Result<RecordBatch>> {
    let chunks = built.chunks.of_partition(partition, partitions);
    if let Some(history) = built.index.resident() {
        let held = Arc::new(Held {
            history: Arc::clone(history),
            _reservation: None,
        });
        return emit.chunks(built, held, chunks);
    }
    // this partition's blocks, one at a time
    let blocks: Vec<split::Block> = built
        .blocks
        .iter()
        .filter(|b| chunks.contains(&b.chunks.start))
        .cloned()
        .collect();
    let (emit, pool) = (emit.clone(), Arc::clone(pool));
    let metrics = emit.metrics.clone();
    futures::stream::iter(blocks)
        .then(move |block| {
            let (built, pool, metrics) = (Arc::clone(&built), Arc::clone(&pool), metrics.clone());
            async move {
                let held = load_block(
                    Arc::clone(&built),
                    block.clone(),
                    partition,
                    &pool,
                    &metrics,
                )
                .await?;
                Ok::<_, DataFusionError>((built, held, block))
            }
        })
        .map_ok(move |(built, held, block)| emit.chunks(built, held, block.chunks))
        .try_flatten()
        .boxed()
}

/// History rows a partition reads, with the memory they hold.
pub(super) struct Held {
    history: Arc<history::History>,
    _reservation: Option<MemoryReservation>,
}

/// Of the memory free when the index is built, the share blocks of history may take, in tenths
/// (the rest: output batches in flight and the writer's buffers).
const BLOCK_SHARE_TENTHS: usize = 8;

/// What computing a partition's chunks needs.
#[derive(Clone)]
pub(super) struct Emit {
    pub params: MergeParams,
    pub schema: SchemaRef,
    pub metrics: MergeMetrics,
    pub batch_size: usize,
    pub workers: usize,
    /// With shares: the output partition whose queries this emits (see `Index::emitted`).
    pub partition: Option<u32>,
}

impl Emit {
    /// The batches of `chunks`, in order, computed by up to `workers` blocking tasks at once
    /// from `held`'s history.
    pub(super) fn chunks(
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
                            )
                            .for_partition(this.partition);
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
                    .for_partition(this.partition)
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
/// may all load a block at once) less each block's offsets and its list of needed queries.
pub(super) fn block_budget(pool: &dyn MemoryPool, n_queries: usize, partitions: usize) -> usize {
    let per_partition = index::free_bytes(pool) / 10 * BLOCK_SHARE_TENTHS / partitions.max(1);
    per_partition.saturating_sub(history::History::bytes(0, n_queries))
        / (std::mem::size_of::<history::HistoryRow>() + NEEDED_BYTES_PER_ROW)
}

/// What a block's list of needed queries costs per history row, at most (each needed query
/// has a row, but for the block's own queries, fewer than its rows).
const NEEDED_BYTES_PER_ROW: usize = 2 * std::mem::size_of::<u32>();

/// Reads `block`'s history back from the sorted spill file, its memory reserved from `pool`.
async fn load_block(
    built: Arc<Built>,
    block: split::Block,
    partition: usize,
    pool: &Arc<dyn MemoryPool>,
    metrics: &MergeMetrics,
) -> Result<Arc<Held>> {
    let timer = metrics.load_history.timer();
    let n = built.index.queries.len();
    let reservation =
        MemoryConsumer::new(format!("PriorMergeExec[{partition}] history block")).register(pool);
    reservation
        .try_grow(history::History::bytes(block.rows, n) + NEEDED_BYTES_PER_ROW * block.rows.max(1))
        .map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "the merge plan reads its spilled history back a block of queries at a time, \
                 and a block of {} rows does not fit ({e}); raise --memory-limit or lower \
                 --partitions",
                block.rows
            ))
        })?;
    let rows = block.rows;
    let history = SpawnedTask::spawn_blocking(move || {
        let index::Stored::Spilled(spilled) = &built.index.history else {
            return internal_err!("a block of history is loaded only when it is spilled");
        };
        let first = built.chunks.queries(block.chunks.start).start;
        let end = built.chunks.queries(block.chunks.end - 1).end;
        let mut needed: Vec<u32> = (first..end)
            .flat_map(|q| {
                std::iter::once(q).chain(built.index.members_of(q).iter().map(|m| m.neighbour))
            })
            .filter(|&q| built.index.history_len(q) > 0)
            .collect();
        needed.sort_unstable();
        needed.dedup();
        spilled.load(&needed, rows)
    })
    .join_unwind()
    .await
    .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
    debug_assert_eq!(
        history.rows(),
        rows,
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
