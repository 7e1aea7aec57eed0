//! The merge plan's in-memory index, built from the `history` and `neighbours` streams:
//!
//! - queries and products interned to dense `u32` ids, renumbered so that id order is the strings'
//!   byte order (the order `ORDER BY query, product_id` gives), so sorting ids sorts strings;
//! - the history grouped by query (CSR: one offset per query, rows sorted by product);
//! - C_q for every query, with the semantics of `sql/neighbour_sets.sql`: self-pairs, rows
//!   scoring below `min_score` and neighbours without history dropped; the highest score of a
//!   duplicated (query, neighbour) kept; the `top_k` best by score, ties by neighbour ascending;
//!   weights 1 (`mean`) or the score (`score`, unless every kept score is 0).
//!
//! Memory: 40 bytes per history row and 16 per surviving neighbour row while building, plus each
//! distinct string once. Every allocation is reserved from the session's memory pool first, so a
//! `--memory-limit` too small for the index fails with a clear error instead of over-committing.

use std::cmp::Ordering;
use std::mem::size_of;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, HashMap, Result, internal_datafusion_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::MemoryReservation;
use futures::StreamExt;

use super::{MergeMetrics, MergeParams};
use crate::config::PriorWeighting;

/// Distinct strings and their ids, in first-seen order until [`Interner::into_sorted`].
#[derive(Default)]
pub struct Interner {
    ids: HashMap<Arc<str>, u32>,
    strings: Vec<Arc<str>>,
    /// The last string looked up and its id: inputs often arrive grouped by query.
    last: Option<u32>,
}

/// Bytes one interned string costs besides its text: map entry, vector slot, `Arc` header.
const STRING_OVERHEAD: usize = 2 * size_of::<Arc<str>>() + size_of::<u32>() + 16 + 8;

impl Interner {
    /// The id of `s`, adding it if new; `Some(bytes)` of new memory when it was added.
    fn intern(&mut self, s: &str) -> Result<(u32, usize)> {
        if let Some(last) = self.last
            && *self.strings[last as usize] == *s
        {
            return Ok((last, 0));
        }
        if let Some(&id) = self.ids.get(s) {
            self.last = Some(id);
            return Ok((id, 0));
        }
        let id = u32::try_from(self.strings.len())
            .map_err(|_| internal_datafusion_err!("more than 2^32 distinct keys"))?;
        let text: Arc<str> = Arc::from(s);
        self.ids.insert(Arc::clone(&text), id);
        self.strings.push(text);
        self.last = Some(id);
        Ok((id, s.len() + STRING_OVERHEAD))
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn len(&self) -> usize {
        self.strings.len()
    }

    /// The strings in byte order, and for each first-seen id its position in that order.
    fn into_sorted(self) -> (Vec<Arc<str>>, Vec<u32>) {
        drop(self.ids);
        let mut order: Vec<u32> = (0..self.strings.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.strings[a as usize].cmp(&self.strings[b as usize]));
        let mut rank = vec![0u32; order.len()];
        for (position, &id) in order.iter().enumerate() {
            rank[id as usize] = position as u32;
        }
        let sorted = order
            .iter()
            .map(|&id| Arc::clone(&self.strings[id as usize]))
            .collect();
        (sorted, rank)
    }
}

/// One history row: H(q,p) and I(q,p) of a (query, product) pair.
#[derive(Debug, Clone, Copy)]
pub struct HistoryRow {
    pub h: f64,
    pub impressions: i64,
    /// The product's Arrow string view (little-endian halves) when the id is at most 12 bytes,
    /// so writing a row never looks the string up (a cache miss per output row otherwise);
    /// for a longer id, any value whose low 32 bits (the length) exceed 12. Set once ranked.
    pub view: [u64; 2],
    pub query: u32,
    pub product: u32,
}

/// A neighbour row that survived the row filters (`weight` holds its score), then a kept member c
/// of C_q with its weight in the prior.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub weight: f64,
    pub query: u32,
    pub neighbour: u32,
}

/// Everything the merge needs, ids in byte order of their strings.
pub struct Index {
    /// Query strings by id.
    pub queries: Vec<Arc<str>>,
    /// Product strings by id.
    pub products: Vec<Arc<str>>,
    /// History of query `q`: `history[history_offsets[q]..history_offsets[q + 1]]`, by product.
    pub history: Vec<HistoryRow>,
    pub history_offsets: Vec<usize>,
    /// C_q: `members[member_offsets[q]..member_offsets[q + 1]]`, by rank.
    pub members: Vec<Member>,
    pub member_offsets: Vec<usize>,
    /// The prior's divisor per query (|C_q|, or the sum of kept scores).
    pub weight_total: Vec<f64>,
}

impl Index {
    pub fn history_of(&self, query: u32) -> &[HistoryRow] {
        let q = query as usize;
        &self.history[self.history_offsets[q]..self.history_offsets[q + 1]]
    }

    pub fn members_of(&self, query: u32) -> &[Member] {
        let q = query as usize;
        &self.members[self.member_offsets[q]..self.member_offsets[q + 1]]
    }
}

/// Grows `reservation` by `bytes`, explaining what a failure means for this plan.
fn reserve(reservation: &mut MemoryReservation, bytes: usize) -> Result<()> {
    reservation.try_grow(bytes).map_err(|e| {
        DataFusionError::ResourcesExhausted(format!(
            "the merge plan keeps the history and neighbour sets in memory and needs more than \
             {} MiB for them ({e}); raise --memory-limit, or run with --plan sql, whose joins \
             spill to disk",
            reservation.size() / (1 << 20)
        ))
    })
}

/// A string column of `batch` as `Utf8`, whatever string type the plan produced.
fn strings(batch: &RecordBatch, index: usize) -> Result<Arc<dyn Array>> {
    let column = batch.column(index);
    Ok(match column.data_type() {
        DataType::Utf8 => Arc::clone(column),
        _ => cast(column, &DataType::Utf8)?,
    })
}

fn numbers(batch: &RecordBatch, index: usize, to: &DataType) -> Result<Arc<dyn Array>> {
    let column = batch.column(index);
    Ok(if column.data_type() == to {
        Arc::clone(column)
    } else {
        cast(column, to)?
    })
}

fn null_key(input: &str, column: &str) -> DataFusionError {
    DataFusionError::Execution(format!(
        "{input} has a null {column}; the merge plan needs every key set (`q2q-prior validate` \
         lists such rows)"
    ))
}

/// Reads both inputs and builds the [`Index`].
///
/// `history` yields (query, product_id, impressions, h); `neighbours` (query, neighbour, score).
pub async fn build(
    mut history: SendableRecordBatchStream,
    mut neighbours: SendableRecordBatchStream,
    params: &MergeParams,
    reservation: &mut MemoryReservation,
    metrics: &MergeMetrics,
) -> Result<Index> {
    let mut queries = Interner::default();
    let mut products = Interner::default();

    let start = Instant::now();
    let mut rows: Vec<HistoryRow> = Vec::new();
    while let Some(batch) = history.next().await {
        let batch = batch?;
        let (q, p) = (strings(&batch, 0)?, strings(&batch, 1)?);
        let (q, p) = (q.as_string::<i32>(), p.as_string::<i32>());
        let impressions = numbers(&batch, 2, &DataType::Int64)?;
        let impressions = impressions.as_primitive::<Int64Type>();
        let h = numbers(&batch, 3, &DataType::Float64)?;
        let h = h.as_primitive::<Float64Type>();
        let capacity = rows.capacity();
        rows.reserve(batch.num_rows());
        // reserve what the vector really allocates (it grows by doubling)
        let mut grown = (rows.capacity() - capacity) * size_of::<HistoryRow>();
        for i in 0..batch.num_rows() {
            if q.is_null(i) {
                return Err(null_key("history", "query"));
            }
            if p.is_null(i) {
                return Err(null_key("history", "product_id"));
            }
            let (query, new_q) = queries.intern(q.value(i))?;
            let (product, new_p) = products.intern(p.value(i))?;
            grown += new_q + new_p;
            // As in sql/features.sql: a NULL h or impression count counts as 0.
            rows.push(HistoryRow {
                h: if h.is_null(i) { 0.0 } else { h.value(i) },
                impressions: if impressions.is_null(i) {
                    0
                } else {
                    impressions.value(i)
                },
                view: [0, 0],
                query,
                product,
            });
        }
        reserve(reservation, grown)?;
    }
    metrics.history_rows.add(rows.len());
    metrics.read_history.add_elapsed(start);

    // Every query interned so far has history: a neighbour must be one of them.
    let start = Instant::now();
    let with_history = queries.len() as u32;
    let mut candidates: Vec<Member> = Vec::new();
    let mut read = 0usize;
    while let Some(batch) = neighbours.next().await {
        let batch = batch?;
        read += batch.num_rows();
        let (q, c) = (strings(&batch, 0)?, strings(&batch, 1)?);
        let (q, c) = (q.as_string::<i32>(), c.as_string::<i32>());
        let score = numbers(&batch, 2, &DataType::Float64)?;
        let score = score.as_primitive::<Float64Type>();
        let capacity = candidates.capacity();
        candidates.reserve(batch.num_rows());
        let mut grown = (candidates.capacity() - capacity) * size_of::<Member>();
        for i in 0..batch.num_rows() {
            // NULLs fail every condition of the SQL's WHERE clause
            if q.is_null(i) || c.is_null(i) || score.is_null(i) {
                continue;
            }
            let (query, neighbour, s) = (q.value(i), c.value(i), score.value(i));
            // arrow compares floats in total order (NaN above everything), as here
            if query == neighbour || s.total_cmp(&params.min_score) == Ordering::Less {
                continue;
            }
            let Some(neighbour) = queries.get(neighbour).filter(|&id| id < with_history) else {
                continue;
            };
            let (query, new) = queries.intern(query)?;
            grown += new;
            candidates.push(Member {
                weight: s,
                query,
                neighbour,
            });
        }
        reserve(reservation, grown)?;
    }
    metrics.neighbour_rows.add(read);
    metrics.read_neighbours.add_elapsed(start);

    let start = Instant::now();
    // the rank tables and offsets below; members at most one per candidate
    let n = queries.len() + products.len();
    reserve(
        reservation,
        n * (size_of::<u32>() + size_of::<Arc<str>>())
            + products.len() * size_of::<[u64; 2]>()
            + queries.len() * (2 * size_of::<usize>() + size_of::<f64>()),
    )?;
    let (query_strings, query_rank) = queries.into_sorted();
    let (product_strings, product_rank) = products.into_sorted();
    let n_queries = query_strings.len();

    let views: Vec<[u64; 2]> = product_strings
        .iter()
        .map(|p| {
            let view = match p.len() {
                0..=12 => make_view(p.as_bytes(), 0, 0),
                _ => u128::from(u32::MAX),
            };
            [view as u64, (view >> 64) as u64]
        })
        .collect();
    for row in &mut rows {
        row.query = query_rank[row.query as usize];
        row.product = product_rank[row.product as usize];
        row.view = views[row.product as usize];
    }
    drop(views);
    rows.sort_unstable_by_key(|r| (r.query, r.product));
    let history_offsets = offsets(n_queries, rows.iter().map(|r| r.query));

    for row in &mut candidates {
        row.query = query_rank[row.query as usize];
        row.neighbour = query_rank[row.neighbour as usize];
    }
    drop((query_rank, product_rank));
    // one row per (query, neighbour), the highest score first
    candidates.sort_unstable_by(|a, b| {
        (a.query, a.neighbour)
            .cmp(&(b.query, b.neighbour))
            .then(b.weight.total_cmp(&a.weight))
    });
    candidates.dedup_by(|next, kept| (next.query, next.neighbour) == (kept.query, kept.neighbour));

    // C_q is compacted in place at the front of `candidates`: no second allocation
    let mut member_offsets = vec![0usize; n_queries + 1];
    let mut weight_total = vec![0.0f64; n_queries];
    let mut sets = 0usize;
    let (mut read, mut write) = (0usize, 0usize);
    while read < candidates.len() {
        let query = candidates[read].query;
        let end = read + candidates[read..].partition_point(|c| c.query == query);
        let set = &mut candidates[read..end];
        // rank: score descending, neighbour ascending (ids are in byte order)
        set.sort_unstable_by(|a, b| {
            b.weight
                .total_cmp(&a.weight)
                .then(a.neighbour.cmp(&b.neighbour))
        });
        let kept = set.len().min(params.top_k as usize);
        let score_sum: f64 = set[..kept].iter().map(|m| m.weight).sum();
        let by_score = params.prior_weighting == PriorWeighting::Score && score_sum > 0.0;
        weight_total[query as usize] = if by_score { score_sum } else { kept as f64 };
        for i in 0..kept {
            // write <= read: moving members forward never overwrites an unread row
            let member = candidates[read + i];
            candidates[write + i] = Member {
                weight: if by_score { member.weight } else { 1.0 },
                ..member
            };
        }
        member_offsets[query as usize + 1] = kept;
        write += kept;
        sets += 1;
        read = end;
    }
    candidates.truncate(write);
    let members = candidates;
    for q in 0..n_queries {
        member_offsets[q + 1] += member_offsets[q];
    }
    metrics.neighbour_set_rows.add(members.len());
    metrics.queries_with_prior.add(sets);
    metrics.build_index.add_elapsed(start);

    Ok(Index {
        queries: query_strings,
        products: product_strings,
        history: rows,
        history_offsets,
        members,
        member_offsets,
        weight_total,
    })
}

/// CSR offsets of `n` groups from the sorted group id of every row.
fn offsets(n: usize, groups: impl Iterator<Item = u32>) -> Vec<usize> {
    let mut offsets = vec![0usize; n + 1];
    for g in groups {
        offsets[g as usize + 1] += 1;
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_ids_sort_like_the_strings_in_byte_order() {
        let mut interner = Interner::default();
        let words = ["b", "a b", "B", "ab", "a", "b", "é", "e"];
        let ids: Vec<u32> = words
            .iter()
            .map(|w| interner.intern(w).unwrap().0)
            .collect();
        assert_eq!(ids[0], ids[5], "a repeated string keeps its id");
        let (sorted, rank) = interner.into_sorted();
        let sorted: Vec<&str> = sorted.iter().map(|s| &**s).collect();
        assert_eq!(sorted, ["B", "a", "a b", "ab", "b", "e", "é"]);
        for (word, id) in words.iter().zip(&ids) {
            assert_eq!(sorted[rank[*id as usize] as usize], *word);
        }
    }

    #[test]
    fn offsets_delimit_groups() {
        assert_eq!(offsets(4, [0, 0, 2, 3, 3, 3].into_iter()), [0, 2, 2, 3, 6]);
        assert_eq!(offsets(2, std::iter::empty()), [0, 0, 0]);
    }
}
