//! How the merge's output is cut: queries (ids in byte order) into chunks of about equal work,
//! and chunks into the operator's output partitions.
//!
//! A chunk is a contiguous range of query ids whose rows cost about the same (a query's own
//! history rows plus its neighbours' history rows: what the merge reads for it): 1/[`CHUNKS`]
//! of the whole, at most [`MAX_CHUNK_COST`], so small inputs are cut as finely as large ones
//! and a large one has many chunks of bounded size. Workers
//! compute chunks in parallel and a partition emits its chunks in order, so each partition is
//! sorted and partition i's last query sorts before partition i+1's first: read one after the
//! other, the partitions are the globally sorted output.
//!
//! The chunks depend on the index only, never on the number of partitions or workers, and a
//! chunk always ends a batch; so the batches, and the files written from them, are the same
//! whatever the partitioning.

use std::ops::Range;

use super::index::Index;

/// Chunks of a small input: enough for any number of cores and partitions one would use.
pub const CHUNKS: usize = 256;

/// The most work of one chunk, in history rows read: small enough that a few chunks in flight
/// per worker hold little memory (a chunk writes at most this many rows), large enough that
/// scheduling costs nothing next to it.
pub const MAX_CHUNK_COST: usize = 1 << 16;

/// Chunk boundaries over an index's queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunks {
    /// The first query id of every chunk, then the number of queries.
    bounds: Vec<u32>,
}

impl Chunks {
    /// Cuts `index`'s queries into chunks (a query that alone costs more than a chunk is a
    /// chunk of its own).
    pub fn new(index: &Index) -> Self {
        let n = index.queries.len() as u32;
        let work_of = |q: u32| -> usize {
            if !index.is_emitted(q, None) {
                return 1;
            }
            let theirs: usize = index
                .members_of(q)
                .iter()
                .map(|m| index.history_len(m.neighbour))
                .sum();
            1 + index.history_len(q) + theirs
        };
        // each query's work once: it reads the neighbours' offsets, a cache miss apiece
        let works: Vec<usize> = (0..n).map(work_of).collect();
        let total: usize = works.iter().sum();
        let cost = (total / CHUNKS).clamp(1, MAX_CHUNK_COST);
        let mut bounds = vec![0u32];
        let mut work = 0usize;
        for (q, w) in (0..n).zip(&works) {
            work += w;
            if work >= cost && q + 1 < n {
                bounds.push(q + 1);
                work = 0;
            }
        }
        bounds.push(n);
        if n == 0 {
            bounds.truncate(1);
        }
        Chunks { bounds }
    }

    pub fn len(&self) -> usize {
        self.bounds.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The query ids of chunk `chunk`.
    pub fn queries(&self, chunk: usize) -> Range<u32> {
        self.bounds[chunk]..self.bounds[chunk + 1]
    }

    /// The chunks of output partition `partition` of `partitions`: contiguous, about as many
    /// for each partition, in order (a partition past the chunks gets none).
    pub fn of_partition(&self, partition: usize, partitions: usize) -> Range<usize> {
        let (m, n) = (self.len(), partitions.max(1));
        (partition * m / n)..((partition + 1) * m / n)
    }
}

/// History rows the partitions need, summed over `partitions` partitions: each needs its own
/// queries' history and that of every neighbour of one of them. Divided by the history's rows it
/// is the replication factor a split by query costs: 1 when no neighbour crosses a partition,
/// up to min(k + 1, N) (docs/DISTRIBUTED.md).
pub fn history_rows_needed(index: &Index, chunks: &Chunks, partitions: usize) -> usize {
    let n = index.queries.len();
    // the last partition that counted each query's history
    let mut counted = vec![usize::MAX; n];
    let mut rows = 0;
    for p in 0..partitions.max(1) {
        let range = chunks.of_partition(p, partitions);
        if range.is_empty() {
            continue;
        }
        let queries = chunks.queries(range.start).start..chunks.queries(range.end - 1).end;
        for q in queries {
            let needed = std::iter::once(q).chain(index.members_of(q).iter().map(|m| m.neighbour));
            for c in needed {
                if counted[c as usize] != p {
                    counted[c as usize] = p;
                    rows += index.history_len(c);
                }
            }
        }
    }
    rows
}

/// A contiguous run of one partition's chunks whose history is loaded at once when it is
/// spilled, with the history rows its queries and their neighbours need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub chunks: Range<usize>,
    pub rows: usize,
}

/// Every partition's chunks cut into [`Block`]s of at most `budget_rows` history rows (a chunk
/// that alone needs more is a block of its own); a block never spans two partitions, so each
/// partition can load its blocks whatever the others do.
pub fn blocks(index: &Index, chunks: &Chunks, partitions: usize, budget_rows: usize) -> Vec<Block> {
    let n = index.queries.len();
    // `taken[q]`: the block that holds q's history; `seen[q]`: the last count that met q
    let (mut taken, mut seen) = (vec![usize::MAX; n], vec![usize::MAX; n]);
    let mut counts = 0usize;
    let mut blocks: Vec<Block> = Vec::new();
    let needed = |q: u32| std::iter::once(q).chain(index.members_of(q).iter().map(|m| m.neighbour));
    for p in 0..partitions.max(1) {
        let mut open: Option<Block> = None;
        for chunk in chunks.of_partition(p, partitions) {
            let queries = chunks.queries(chunk);
            let block_id = blocks.len();
            // the rows this chunk adds to the open block
            let mut added = |block: usize, taken: &[usize], seen: &mut [usize]| {
                counts += 1;
                let mut rows = 0;
                for c in queries.clone().flat_map(needed) {
                    let c = c as usize;
                    if taken[c] != block && seen[c] != counts {
                        seen[c] = counts;
                        rows += index.history_len(c as u32);
                    }
                }
                rows
            };
            let mut rows = added(block_id, &taken, &mut seen);
            if let Some(block) = &open
                && block.rows + rows > budget_rows
            {
                blocks.push(open.take().expect("open"));
                rows = added(block_id + 1, &taken, &mut seen);
            }
            let block_id = blocks.len();
            for c in queries.clone().flat_map(needed) {
                taken[c as usize] = block_id;
            }
            let block = open.get_or_insert(Block {
                chunks: chunk..chunk,
                rows: 0,
            });
            block.chunks.end = chunk + 1;
            block.rows += rows;
        }
        blocks.extend(open);
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_every_chunk_once_in_order() {
        let chunks = Chunks {
            bounds: (0..=10).map(|i| i * 3).collect(),
        };
        for n in [1, 2, 3, 7, 10, 11, 50] {
            let mut next = 0;
            for p in 0..n {
                let range = chunks.of_partition(p, n);
                assert_eq!(
                    range.start, next,
                    "{n} partitions: partition {p} starts where the last ended"
                );
                next = range.end;
            }
            assert_eq!(next, chunks.len(), "{n} partitions cover every chunk");
        }
        assert_eq!(chunks.queries(2), 6..9);
    }

    /// 30 queries with q % 4 + 1 history rows each, each with the next two queries as
    /// neighbours (wrapping round).
    fn ring() -> Index {
        use super::super::history::History;
        use super::super::index::{Member, Products, Spans, Stored};
        use std::sync::Arc;
        let n = 30u32;
        let members: Vec<Member> = (0..n)
            .flat_map(|q| {
                [1, 2].map(|d| Member {
                    weight: 1.0,
                    query: q,
                    neighbour: (q + d) % n,
                })
            })
            .collect();
        Index {
            queries: (0..n).map(|q| Arc::from(format!("q{q:02}"))).collect(),
            products: Products::Strings(Vec::new()),
            history_lens: (0..n).map(|q| q % 4 + 1).collect(),
            history: Stored::Resident(Arc::new(History::from_rows(Vec::new(), n as usize))),
            member_spans: Spans::contiguous(vec![2; n as usize]),
            members,
            weight_total: vec![2.0; n as usize],
            emitted: None,
        }
    }

    #[test]
    fn blocks_cut_each_partition_within_the_budget_and_count_each_row_once() {
        let index = ring();
        let chunks = Chunks {
            bounds: (0..=10).map(|i| i * 3).collect(),
        };
        for (partitions, budget) in [(1, 1000), (1, 20), (3, 20), (4, 7), (2, 1)] {
            let blocks = blocks(&index, &chunks, partitions, budget);
            let mut next = 0;
            for block in &blocks {
                assert_eq!(block.chunks.start, next, "blocks are contiguous");
                next = block.chunks.end;
                let within = (0..partitions).any(|p| {
                    let range = chunks.of_partition(p, partitions);
                    range.start <= block.chunks.start && block.chunks.end <= range.end
                });
                assert!(within, "{block:?} spans two of {partitions} partitions");
                // the rows of the distinct queries the block's queries need
                let first = chunks.queries(block.chunks.start).start;
                let end = chunks.queries(block.chunks.end - 1).end;
                let mut needed: Vec<u32> = (first..end)
                    .flat_map(|q| [q, (q + 1) % 30, (q + 2) % 30])
                    .collect();
                needed.sort_unstable();
                needed.dedup();
                let rows: usize = needed.iter().map(|&q| index.history_len(q)).sum();
                assert_eq!(block.rows, rows, "{block:?}");
                assert!(
                    rows <= budget || block.chunks.len() == 1,
                    "{block:?} over a budget of {budget}"
                );
            }
            assert_eq!(next, chunks.len(), "every chunk is in a block");
        }
        assert_eq!(blocks(&index, &chunks, 1, 1000).len(), 1);
    }
}
