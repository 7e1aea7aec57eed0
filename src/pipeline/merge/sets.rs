//! C_q, the neighbour sets, with the semantics of `sql/neighbour_sets.sql`, from the candidates
//! (neighbour rows that passed the row filters, with provisional ids): one row per (query,
//! neighbour), the highest score kept; the `top_k` best by score, ties by neighbour ascending;
//! weights 1 (`mean`) or the score (`score`, unless every kept score is 0).
//!
//! Candidates held in memory are sorted and ranked in place ([`in_memory`]). Candidates that
//! were spilled are in sorted runs, by provisional (query, neighbour, score descending);
//! DataFusion's streaming merge reads them back in that order and each query's set is ranked
//! as it is met ([`from_runs`]).

use std::mem::size_of;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Float64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, UInt32Type};
use datafusion::common::{Result, internal_err};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
use datafusion::physical_plan::sorts::streaming_merge::{SortedSpillFile, StreamingMergeBuilder};
use datafusion::physical_plan::spill::SpillManager;
use futures::StreamExt;
use rayon::prelude::*;

use super::MergeParams;
use super::intern::Ranks;
use super::spill::SpillRow;
use crate::formula;

/// A neighbour row that survived the row filters (`weight` holds its score), then a kept member c
/// of C_q with its weight in the prior.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub weight: f64,
    pub query: u32,
    pub neighbour: u32,
}

/// The order of a candidates' spill file: (query, neighbour), the highest score first.
fn spill_order(a: &Member, b: &Member) -> std::cmp::Ordering {
    (a.query, a.neighbour)
        .cmp(&(b.query, b.neighbour))
        .then(b.weight.total_cmp(&a.weight))
}

impl SpillRow for Member {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("query", DataType::UInt32, false),
            Field::new("neighbour", DataType::UInt32, false),
            Field::new("score", DataType::Float64, false),
        ]))
    }

    fn batch(rows: &[Self], schema: &SchemaRef) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.query))),
                Arc::new(UInt32Array::from_iter_values(
                    rows.iter().map(|r| r.neighbour),
                )),
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|r| r.weight),
                )),
            ],
        )?)
    }

    fn prepare(rows: &mut [Self]) {
        rows.par_sort_unstable_by(spill_order);
    }
}

/// Where each query's C_q is among the members: `start[q]..start[q] + len[q]`. The sets need
/// not be in the queries' order: those merged from spill runs stay in the order they were read
/// (provisional ids), so that no second buffer of the members is needed to reorder them.
pub struct Spans {
    start: Vec<usize>,
    len: Vec<u32>,
}

impl Spans {
    /// Sets stored one after another in query order, `len[q]` members each.
    pub fn contiguous(len: Vec<u32>) -> Spans {
        let mut next = 0usize;
        let start = len
            .iter()
            .map(|&l| {
                let s = next;
                next += l as usize;
                s
            })
            .collect();
        Spans { start, len }
    }

    /// C_q's position among the members.
    pub fn of(&self, query: u32) -> std::ops::Range<usize> {
        let q = query as usize;
        self.start[q]..self.start[q] + self.len[q] as usize
    }
}

/// Every query's C_q.
pub struct Sets {
    /// C_q: `members[spans.of(q)]`, by rank.
    pub members: Vec<Member>,
    pub spans: Spans,
    /// The prior's divisor per query (|C_q|, or the sum of kept scores).
    pub weight_total: Vec<f64>,
    /// Queries with a non-empty C_q.
    pub sets: usize,
}

/// Ranks one query's candidates (one per neighbour, final ids): the kept members first, with
/// their weights in the prior; returns how many are kept and the prior's divisor.
fn rank(set: &mut [Member], params: &MergeParams) -> (usize, f64) {
    // score descending, neighbour ascending (ids are in byte order)
    set.sort_unstable_by(|a, b| {
        b.weight
            .total_cmp(&a.weight)
            .then(a.neighbour.cmp(&b.neighbour))
    });
    let kept = set.len().min(params.top_k as usize);
    let score_sum: f64 = set[..kept].iter().map(|m| m.weight).sum();
    let weighting = params.prior_weighting;
    for member in &mut set[..kept] {
        member.weight = formula::neighbour_weight(weighting, member.weight, score_sum);
    }
    (
        kept,
        formula::weight_total(weighting, kept as f64, score_sum),
    )
}

/// Keeps the first of each neighbour's rows of one query's candidates in spill order (its
/// highest score) at the front of `set`; returns how many there are.
fn first_per_neighbour(set: &mut [Member]) -> usize {
    let mut unique = 0;
    for i in 0..set.len() {
        if unique == 0 || set[i].neighbour != set[unique - 1].neighbour {
            set[unique] = set[i];
            unique += 1;
        }
    }
    unique
}

/// The sets of `candidates` held in memory (provisional ids, `query_rank` their final ones);
/// C_q is compacted in place at the front of the vector: no second allocation.
pub fn in_memory(
    mut candidates: Vec<Member>,
    query_rank: &Ranks,
    n_queries: usize,
    params: &MergeParams,
) -> Sets {
    candidates.par_iter_mut().for_each(|row| {
        row.query = query_rank.of(row.query);
        row.neighbour = query_rank.of(row.neighbour);
    });
    candidates.par_sort_unstable_by(spill_order);
    // each query's candidates deduplicated and ranked where they lie, on every core: (query,
    // candidates, kept, the prior's divisor), in the queries' order
    let ranked: Vec<(u32, usize, usize, f64)> = candidates
        .par_chunk_by_mut(|a, b| a.query == b.query)
        .map(|set| {
            let unique = first_per_neighbour(set);
            let (kept, total) = rank(&mut set[..unique], params);
            (set[0].query, set.len(), kept, total)
        })
        .collect();

    let mut counts = vec![0u32; n_queries];
    let mut weight_total = vec![0.0f64; n_queries];
    let (mut read, mut write) = (0usize, 0usize);
    for &(query, len, kept, total) in &ranked {
        weight_total[query as usize] = total;
        // write <= read: moving members forward never overwrites an unread row
        candidates.copy_within(read..read + kept, write);
        counts[query as usize] = kept as u32;
        write += kept;
        read += len;
    }
    let sets = ranked.len();
    candidates.truncate(write);
    // the sets keep at most k of a query's candidates: return the rest of the memory
    candidates.shrink_to_fit();
    Sets {
        members: candidates,
        spans: Spans::contiguous(counts),
        weight_total,
        sets,
    }
}

/// The sets of candidates spilled as sorted runs `files` (through `manager`), merged back by
/// DataFusion's streaming merge with `merge_reservation`; `reserve(bytes)` is called before
/// the members take more memory.
pub async fn from_runs(
    files: Vec<SortedSpillFile>,
    manager: &SpillManager,
    merge_reservation: MemoryReservation,
    query_rank: &Ranks,
    n_queries: usize,
    params: &MergeParams,
    reserve: &mut (dyn FnMut(usize) -> Result<()> + Send),
) -> Result<Sets> {
    let ascending = SortOptions {
        descending: false,
        nulls_first: false,
    };
    let column = |name: &str, i: usize, options| {
        PhysicalSortExpr::new(Arc::new(Column::new(name, i)), options)
    };
    let Some(ordering) = LexOrdering::new([
        column("query", 0, ascending),
        column("neighbour", 1, ascending),
        column(
            "score",
            2,
            SortOptions {
                descending: true,
                nulls_first: false,
            },
        ),
    ]) else {
        return internal_err!("the candidates' spill order is empty");
    };
    let mut merged = StreamingMergeBuilder::new()
        .with_sorted_spill_files(files)
        .with_spill_manager(manager.clone())
        .with_schema(Arc::clone(manager.schema()))
        .with_expressions(&ordering)
        .with_metrics(BaselineMetrics::new(&ExecutionPlanMetricsSet::new(), 0))
        .with_batch_size(8192)
        .with_reservation(merge_reservation)
        .build()?;

    let mut members: Vec<Member> = Vec::new();
    // the sets in the order they are read: by provisional query
    let mut start = vec![0usize; n_queries];
    let mut len = vec![0u32; n_queries];
    let mut weight_total = vec![0.0f64; n_queries];
    let mut sets = 0usize;
    // the set being read: its provisional query and last neighbour, and its rows (final ids)
    let mut current: Option<(u32, u32)> = None;
    let mut set: Vec<Member> = Vec::new();
    let mut close = |set: &mut Vec<Member>, members: &mut Vec<Member>| -> Result<()> {
        if set.is_empty() {
            return Ok(());
        }
        let (kept, total) = rank(set, params);
        let query = set[0].query as usize;
        weight_total[query] = total;
        sets += 1;
        if members.len() + kept > members.capacity() {
            let more = members.capacity().max(kept).max(1024);
            reserve(more * size_of::<Member>())?;
            members.reserve_exact(more);
        }
        start[query] = members.len();
        len[query] = kept as u32;
        members.extend_from_slice(&set[..kept]);
        set.clear();
        Ok(())
    };
    while let Some(batch) = merged.next().await {
        let batch = batch?;
        let query = batch.column(0).as_primitive::<UInt32Type>().values();
        let neighbour = batch.column(1).as_primitive::<UInt32Type>().values();
        let score = batch.column(2).as_primitive::<Float64Type>().values();
        for i in 0..batch.num_rows() {
            let (q, c) = (query[i], neighbour[i]);
            match current {
                // a duplicated (query, neighbour): the first had the highest score
                Some(last) if last == (q, c) => continue,
                Some((last, _)) if last == q => {}
                _ => close(&mut set, &mut members)?,
            }
            current = Some((q, c));
            set.push(Member {
                weight: score[i],
                query: query_rank.of(q),
                neighbour: query_rank.of(c),
            });
        }
    }
    close(&mut set, &mut members)?;
    Ok(Sets {
        members,
        spans: Spans { start, len },
        weight_total,
        sets,
    })
}
