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
use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use super::index::{numbers, strings};

/// The share of `shares` that query `key` belongs to: FNV-1a (64-bit) of its UTF-8 bytes, modulo
/// `shares`. Fixed, so that every process (client, scheduler, executors, of any build of this
/// version) agrees.
pub fn share_of(key: &str, shares: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shares.max(1) as u64) as usize
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

/// Reads `neighbours` (query, neighbour, score) and keeps the rows of `share`'s queries; returns
/// them with the neighbours they name (in rows that pass `min_score`, not self-pairs). Their memory is taken from `reservation`, and given back
/// as the index build consumes them.
pub async fn neighbours_of_share(
    mut neighbours: SendableRecordBatchStream,
    share: usize,
    shares: usize,
    min_score: f64,
    reservation: MemoryReservation,
) -> Result<(ShareNeighbours, Needed)> {
    let mut batches = Vec::new();
    let mut needed: HashSet<Box<str>> = HashSet::new();
    while let Some(batch) = neighbours.next().await {
        let batch = batch?;
        let query = strings(&batch, 0)?;
        let query = query.as_string::<i32>();
        // a null query fails the neighbour-set stage's filters: nothing to keep
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| Some(query.is_valid(i) && share_of(query.value(i), shares) == share))
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
            .try_grow(kept.get_array_memory_size() + added)
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

impl ShareNeighbours {
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
                reservation.shrink(batch.get_array_memory_size().min(reservation.size()));
                Some((Ok(batch), (batches, reservation)))
            },
        );
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }
}

/// `history` (query first) reduced to the rows of `share`'s queries and of the `needed`
/// neighbours. Rows with a null query are kept, so that the index build reports them as it does
/// without shares.
pub fn history_of_share(
    history: SendableRecordBatchStream,
    share: usize,
    shares: usize,
    needed: Needed,
) -> SendableRecordBatchStream {
    let schema = history.schema();
    let stream = history.map(move |batch| {
        let batch = batch?;
        let query = strings(&batch, 0)?;
        let query = query.as_string::<i32>();
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                Some(
                    query.is_null(i)
                        || share_of(query.value(i), shares) == share
                        || needed.contains(query.value(i)),
                )
            })
            .collect();
        Ok(filter_record_batch(&batch, &keep)?)
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
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
