//! The merge plan's index, built from the `history` and `neighbours` streams:
//!
//! - queries and products interned to dense `u32` ids ([`super::intern`]; the batches of both
//!   inputs by several workers at once), renumbered so that id order is the keys' order (the order
//!   `ORDER BY query, product_id` gives: byte order for strings, numeric order for integer product
//!   ids), so sorting ids sorts keys;
//! - the history grouped by query (CSR: one offset per query, rows sorted by product), or, when
//!   it does not fit the memory pool, in spill files and only its row count per query in memory
//!   ([`super::history`]);
//! - C_q for every query, with the semantics of `sql/neighbour_sets.sql`: self-pairs, rows
//!   scoring below `min_score` and neighbours without history dropped; the highest score of a
//!   duplicated (query, neighbour) kept; the `top_k` best by score, ties by neighbour ascending;
//!   weights 1 (`mean`) or the score (`score`, unless every kept score is 0).
//!
//! Memory: 40 bytes per history row held and 16 per surviving neighbour row while building, plus
//! each distinct string once. What each batch adds is reserved from the session's memory pool as
//! it is added, so a `--memory-limit` too small for the strings and the neighbour sets fails with
//! a clear error instead of over-committing.

use std::cmp::Ordering;
use std::mem::size_of;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::metrics::SpillMetrics;
use futures::StreamExt;
use rayon::prelude::*;

pub use super::history::HistoryRow;
use super::history::{History, Runs, Spilled};
pub use super::intern::{Interner, Key};
use super::intern::{Ranks, Sharded};
use super::repeats::reject_repeats;
use super::sets;
pub use super::sets::{Member, Spans};
use super::spill::{self, Buffer, Buffered};
use super::{MergeMetrics, MergeParams};

/// The product ids of the index, by id: strings, or integers of the input's integer type.
pub enum Products {
    Strings(Vec<Arc<str>>),
    Integers(Vec<i128>),
}

/// One batch's product_id column, as the interner reads it.
enum ProductColumn<'a> {
    Strings(&'a datafusion::arrow::array::StringArray),
    Signed(&'a datafusion::arrow::array::Int64Array),
    Unsigned(&'a datafusion::arrow::array::UInt64Array),
}

impl ProductColumn<'_> {
    fn is_null(&self, i: usize) -> bool {
        match self {
            ProductColumn::Strings(c) => c.is_null(i),
            ProductColumn::Signed(c) => c.is_null(i),
            ProductColumn::Unsigned(c) => c.is_null(i),
        }
    }
}

/// A product_id column of any accepted type, cast to the one [`ProductColumn`] reads.
fn product_column(batch: &RecordBatch, index: usize) -> Result<Arc<dyn Array>> {
    let column = batch.column(index);
    match column.data_type() {
        t if t.is_signed_integer() => numbers(batch, index, &DataType::Int64),
        t if t.is_unsigned_integer() => numbers(batch, index, &DataType::UInt64),
        _ => strings(batch, index),
    }
}

fn read_products(column: &Arc<dyn Array>) -> ProductColumn<'_> {
    match column.data_type() {
        DataType::Int64 => ProductColumn::Signed(column.as_primitive::<Int64Type>()),
        DataType::UInt64 => ProductColumn::Unsigned(column.as_primitive::<UInt64Type>()),
        _ => ProductColumn::Strings(column.as_string::<i32>()),
    }
}

/// Where the history rows are: in memory, or in spill files ([`super::history`]).
pub enum Stored {
    Resident(Arc<History>),
    Spilled(Spilled),
}

/// In [`Index::emitted`]: a query no partition of this index writes.
pub const NOT_EMITTED: u32 = u32::MAX;

/// Everything the merge needs, ids in byte order of their strings.
pub struct Index {
    /// Query strings by id.
    pub queries: Vec<Arc<str>>,
    /// Product ids by id.
    pub products: Products,
    /// The history rows of each query, wherever they are kept.
    pub history_lens: Vec<u32>,
    pub history: Stored,
    /// C_q: `members[member_spans.of(q)]`, by rank.
    pub members: Vec<Member>,
    pub member_spans: Spans,
    /// The prior's divisor per query (|C_q|, or the sum of kept scores).
    pub weight_total: Vec<f64>,
    /// With shares: the output partition that writes each query's rows, by id ([`NOT_EMITTED`]
    /// for the queries of other tasks' shares, there for their history only; see
    /// [`super::share`]). `None`: every query, in whichever partition holds it.
    pub emitted: Option<Vec<u32>>,
}

impl Index {
    /// How many history rows query `query` has.
    pub fn history_len(&self, query: u32) -> usize {
        self.history_lens[query as usize] as usize
    }

    /// Whether `query`'s rows are written by output partition `partition` (`None`: by any).
    pub fn is_emitted(&self, query: u32, partition: Option<u32>) -> bool {
        match (&self.emitted, partition) {
            (None, _) => true,
            (Some(emitted), Some(p)) => emitted[query as usize] == p,
            (Some(emitted), None) => emitted[query as usize] != NOT_EMITTED,
        }
    }

    pub fn members_of(&self, query: u32) -> &[Member] {
        &self.members[self.member_spans.of(query)]
    }

    /// Every history row, when they are all in memory.
    pub fn resident(&self) -> Option<&Arc<History>> {
        match &self.history {
            Stored::Resident(history) => Some(history),
            Stored::Spilled(_) => None,
        }
    }
}

/// What the pool can still grant (all it has left under a limit).
pub(super) fn free_bytes(pool: &dyn datafusion::execution::memory_pool::MemoryPool) -> usize {
    match pool.memory_limit() {
        datafusion::execution::memory_pool::MemoryLimit::Finite(limit) => {
            limit.saturating_sub(pool.reserved())
        }
        _ => usize::MAX,
    }
}

/// What a `--memory-limit` too small for what the plan must hold means.
fn out_of_memory(e: DataFusionError, held: usize) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "the merge plan keeps the query and product strings and the neighbour sets in memory \
         (the history spills to disk) and needs more than {} MiB for them ({e}); raise \
         --memory-limit",
        held / (1 << 20)
    ))
}

/// A string column of `batch` as `Utf8`, whatever string type the plan produced.
pub(super) fn strings(batch: &RecordBatch, index: usize) -> Result<Arc<dyn Array>> {
    let column = batch.column(index);
    Ok(match column.data_type() {
        DataType::Utf8 => Arc::clone(column),
        _ => cast(column, &DataType::Utf8)?,
    })
}

pub(super) fn numbers(batch: &RecordBatch, index: usize, to: &DataType) -> Result<Arc<dyn Array>> {
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

/// The product interner of the history's product column type.
enum ProductInterner {
    Strings(Sharded<Arc<str>>),
    Integers(Sharded<i128>),
}

impl ProductInterner {
    fn len(&self) -> usize {
        match self {
            ProductInterner::Strings(i) => i.len(),
            ProductInterner::Integers(i) => i.len(),
        }
    }

    /// The provisional id of every row of `column` (a string column or one of integers).
    fn intern_all(&self, column: &ProductColumn<'_>, ids: &mut [u32]) -> Result<usize> {
        let n = ids.len();
        match (self, column) {
            (ProductInterner::Strings(interner), ProductColumn::Strings(c)) => {
                interner.intern_all(n, |i| Some(c.value(i)), ids)
            }
            (ProductInterner::Integers(interner), ProductColumn::Signed(c)) => {
                let values: Vec<i128> = c.values().iter().map(|&v| i128::from(v)).collect();
                interner.intern_all(n, |i| Some(&values[i]), ids)
            }
            (ProductInterner::Integers(interner), ProductColumn::Unsigned(c)) => {
                let values: Vec<i128> = c.values().iter().map(|&v| i128::from(v)).collect();
                interner.intern_all(n, |i| Some(&values[i]), ids)
            }
            _ => internal_err!("product_id changed type between batches of history"),
        }
    }

    /// The products in key order, and the ranks of their provisional ids.
    fn into_sorted(self) -> (Products, Ranks) {
        match self {
            ProductInterner::Strings(i) => {
                let (keys, rank) = i.into_sorted();
                (Products::Strings(keys), rank)
            }
            ProductInterner::Integers(i) => {
                let (keys, rank) = i.into_sorted();
                (Products::Integers(keys), rank)
            }
        }
    }
}

/// One batch of history as rows with provisional ids, and the bytes of keys it added.
fn history_rows(
    batch: &RecordBatch,
    queries: &Sharded<Arc<str>>,
    products: &ProductInterner,
) -> Result<(Vec<HistoryRow>, usize)> {
    let n = batch.num_rows();
    let (q, p) = (strings(batch, 0)?, product_column(batch, 1)?);
    let (q, p) = (q.as_string::<i32>(), read_products(&p));
    if q.null_count() > 0 {
        return Err(null_key("history", "query"));
    }
    if (0..n).any(|i| p.is_null(i)) {
        return Err(null_key("history", "product_id"));
    }
    let impressions = numbers(batch, 2, &DataType::Int64)?;
    let impressions = impressions.as_primitive::<Int64Type>();
    let h = numbers(batch, 3, &DataType::Float64)?;
    let h = h.as_primitive::<Float64Type>();
    let mut query_ids = vec![0u32; n];
    let mut product_ids = vec![0u32; n];
    let mut bytes = queries.intern_all(n, |i| Some(q.value(i)), &mut query_ids)?;
    bytes += products.intern_all(&p, &mut product_ids)?;
    let rows = (0..n)
        .map(|i| HistoryRow {
            // As in sql/features.sql: a NULL h or impression count counts as 0.
            h: if h.is_null(i) { 0.0 } else { h.value(i) },
            impressions: if impressions.is_null(i) {
                0
            } else {
                impressions.value(i)
            },
            view: [0, 0],
            query: query_ids[i],
            product: product_ids[i],
        })
        .collect();
    Ok((rows, bytes))
}

/// One batch of neighbours as the candidates that pass the row filters of
/// `sql/neighbour_sets.sql` (provisional ids; `weight` holds the score), and the bytes of new
/// query keys. `with_history[shard]`: the queries of each shard that have history.
fn neighbour_candidates(
    batch: &RecordBatch,
    params: &MergeParams,
    queries: &Sharded<Arc<str>>,
    with_history: &[u32],
) -> Result<(Vec<Member>, usize)> {
    let n = batch.num_rows();
    let (q, c) = (strings(batch, 0)?, strings(batch, 1)?);
    let (q, c) = (q.as_string::<i32>(), c.as_string::<i32>());
    let score = numbers(batch, 2, &DataType::Float64)?;
    let score = score.as_primitive::<Float64Type>();
    // NULLs fail every condition of the SQL's WHERE clause; arrow compares floats in total
    // order (NaN above everything), as here
    let keep: Vec<bool> = (0..n)
        .map(|i| {
            !(q.is_null(i) || c.is_null(i) || score.is_null(i))
                && q.value(i) != c.value(i)
                && score.value(i).total_cmp(&params.min_score) != Ordering::Less
        })
        .collect();
    let neighbours = queries.find_all(n, |i| keep[i].then(|| c.value(i)), with_history);
    // a neighbour must be a query with history
    let keep: Vec<bool> = (0..n).map(|i| neighbours[i].is_some()).collect();
    let mut query_ids = vec![0u32; n];
    let bytes = queries.intern_all(n, |i| keep[i].then(|| q.value(i)), &mut query_ids)?;
    let members = (0..n)
        .filter_map(|i| {
            Some(Member {
                weight: score.value(i),
                query: query_ids[i],
                neighbour: neighbours[i]?,
            })
        })
        .collect();
    Ok((members, bytes))
}

/// The memory the index is held in.
pub struct Memory {
    /// Strings, neighbour sets and tables.
    pub reservation: MemoryReservation,
    /// The history's rows and the neighbour candidates while in memory: spillable, they go to
    /// spill files when they cannot grow (if `spill` is set: the runtime whose disk manager
    /// holds them, and what counts them).
    pub history: MemoryReservation,
    pub candidates: MemoryReservation,
    pub spill: Option<(Arc<RuntimeEnv>, SpillMetrics)>,
    /// The rows of the history and of the neighbours, when their plans know how many (Parquet
    /// metadata): the buffers of the history and of the candidates (at most one per neighbour
    /// row) are allocated once at that size.
    pub expected_rows: ExpectedRows,
}

/// The rows each input yields, where known.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExpectedRows {
    pub history: Option<usize>,
    pub neighbours: Option<usize>,
}

/// What is held in spillable memory while the inputs are read.
struct Buffers<'a> {
    history: Buffer<'a, HistoryRow>,
    candidates: Buffer<'a, Member>,
}

impl Buffers<'_> {
    /// Spills what is in memory, the history first; false if nothing could be.
    fn make_room(&mut self) -> Result<bool> {
        Ok(self.history.make_room()? || self.candidates.make_room()?)
    }
}

/// Grows `reservation` by `bytes`, spilling what `make_room` can when that is needed, and
/// explaining what a failure means for this plan.
fn reserve(
    reservation: &mut MemoryReservation,
    make_room: &mut dyn FnMut() -> Result<bool>,
    bytes: usize,
) -> Result<()> {
    loop {
        match reservation.try_grow(bytes) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if !make_room()? {
                    return Err(out_of_memory(e, reservation.size()));
                }
            }
        }
    }
}

/// The rows of a history batch to keep (a share's: [`super::share::history_of_share`]), run by
/// the workers that intern the batch.
pub type KeepRows = Arc<dyn Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync>;

/// Reads both inputs and builds the [`Index`], with `workers` cores to keep busy.
///
/// `history` yields (query, product_id, impressions, h), of which `keep_history` (if given)
/// keeps some rows; `neighbours` yields (query, neighbour, score).
pub async fn build(
    history: SendableRecordBatchStream,
    keep_history: Option<KeepRows>,
    neighbours: SendableRecordBatchStream,
    params: &MergeParams,
    workers: usize,
    memory: &mut Memory,
    metrics: &MergeMetrics,
) -> Result<Index> {
    let spill = memory.spill.as_ref().map(|(env, metrics)| {
        (
            spill::manager::<HistoryRow>(Arc::clone(env), metrics.clone()),
            spill::manager::<Member>(Arc::clone(env), metrics.clone()),
        )
    });
    // for merging the candidates' runs, should they spill
    let merge = memory.candidates.new_empty();
    let reservation = &mut memory.reservation;
    let mut buffers = Buffers {
        history: Buffer::new(&mut memory.history, spill.as_ref().map(|s| &s.0)),
        candidates: Buffer::new(&mut memory.candidates, spill.as_ref().map(|s| &s.1)),
    };
    let expected = memory.expected_rows;
    if let Some(rows) = expected.history {
        buffers.history.expect(rows);
        tracing::debug!(rows, "the history's buffer sized for the input's rows");
    }
    let queries: Arc<Sharded<Arc<str>>> = Arc::default();
    let product_type = history.schema().field(1).data_type().clone();
    let products = Arc::new(if product_type.is_integer() {
        ProductInterner::Integers(Sharded::default())
    } else {
        ProductInterner::Strings(Sharded::default())
    });
    // Batches in work: twice the workers, so that a core whose batch is done finds the next one
    // waiting (with as many as the workers, two cores kept 1.5 busy on 15M neighbour rows).
    let in_flight = 2 * workers.max(1);

    let start = Instant::now();
    let mut pieces = history
        .map(|batch| {
            let (queries, products) = (Arc::clone(&queries), Arc::clone(&products));
            let keep = keep_history.clone();
            SpawnedTask::spawn_blocking(move || {
                let batch = match keep {
                    Some(keep) => keep(batch?)?,
                    None => batch?,
                };
                history_rows(&batch, &queries, &products)
            })
            .join_unwind()
        })
        .buffer_unordered(in_flight);
    let mut history_rows = 0;
    // rows per provisional query id, should the history spill
    let mut counts: Vec<u32> = Vec::new();
    while let Some(piece) = pieces.next().await {
        let (piece, keys) = piece.map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
        history_rows += piece.len();
        if spill.is_some() {
            for row in &piece {
                let q = row.query as usize;
                if q >= counts.len() {
                    counts.resize(q + 1, 0);
                }
                counts[q] += 1;
            }
        }
        reserve(reservation, &mut || buffers.make_room(), keys)?;
        let held = reservation.size();
        buffers.history.add(piece, |e| out_of_memory(e, held))?;
    }
    drop(pieces);
    metrics.history_rows.add(history_rows);
    metrics.read_history.add_elapsed(start);

    // Every query interned so far has history: a neighbour must be one of them.
    let start = Instant::now();
    let with_history: Arc<[u32]> = queries.lens().into();
    // sized now, not before the history: under a limit it would take the history's memory
    if let Some(rows) = expected.neighbours {
        buffers.candidates.expect(rows);
    }
    let mut read = 0usize;
    let mut pieces = neighbours
        .map(|batch| {
            let (queries, with_history) = (Arc::clone(&queries), Arc::clone(&with_history));
            let params = *params;
            SpawnedTask::spawn_blocking(move || {
                let batch = batch?;
                let (members, keys) =
                    neighbour_candidates(&batch, &params, &queries, &with_history)?;
                Ok::<_, DataFusionError>((batch.num_rows(), members, keys))
            })
            .join_unwind()
        })
        .buffer_unordered(in_flight);
    while let Some(piece) = pieces.next().await {
        let (n, piece, keys) = piece.map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
        read += n;
        reserve(reservation, &mut || buffers.make_room(), keys)?;
        let held = reservation.size();
        buffers.candidates.add(piece, |e| out_of_memory(e, held))?;
    }
    drop(pieces);
    metrics.neighbour_rows.add(read);
    metrics.read_neighbours.add_elapsed(start);

    let start = Instant::now();
    let (queries, products) = match (Arc::try_unwrap(queries), Arc::try_unwrap(products)) {
        (Ok(q), Ok(p)) => (q, p),
        _ => return internal_err!("a worker of the index build outlived it"),
    };
    // the rank tables, offsets and row counts below
    let n = queries.len() + products.len();
    reserve(
        reservation,
        &mut || buffers.make_room(),
        n * (size_of::<u32>() + size_of::<Arc<str>>())
            + products.len() * size_of::<[u64; 2]>()
            + queries.len() * (2 * size_of::<usize>() + size_of::<f64>() + size_of::<u32>()),
    )?;
    let (query_strings, query_rank) = queries.into_sorted();
    let (product_keys, product_rank) = products.into_sorted();
    let n_queries = query_strings.len();

    let Buffers {
        history: mut history_buffer,
        candidates,
    } = buffers;
    let mut sets_in_candidates = false;
    let sets = match candidates.finish()? {
        // members at most one per candidate: in place
        Buffered::Resident(candidates) => {
            sets_in_candidates = true;
            sets::in_memory(candidates, &query_rank, n_queries, params)
        }
        Buffered::Spilled { files, .. } => {
            let manager = &spill
                .as_ref()
                .expect("only a buffer that can spill spills")
                .1;
            let mut reserve_members =
                |bytes: usize| reserve(reservation, &mut || history_buffer.make_room(), bytes);
            sets::from_runs(
                files,
                manager,
                merge,
                &query_rank,
                n_queries,
                params,
                &mut reserve_members,
            )
            .await?
        }
    };
    metrics.neighbour_set_rows.add(sets.members.len());
    metrics.queries_with_prior.add(sets.sets);

    let views: Vec<[u64; 2]> = match &product_keys {
        Products::Strings(strings) => strings
            .iter()
            .map(|p| {
                let view = match p.len() {
                    0..=12 => make_view(p.as_bytes(), 0, 0),
                    _ => u128::from(u32::MAX),
                };
                [view as u64, (view >> 64) as u64]
            })
            .collect(),
        // integers are written from `products` directly
        Products::Integers(keys) => vec![[0, 0]; keys.len()],
    };
    let history_lens: Vec<u32>;
    let mut sorting = std::time::Duration::ZERO;
    let history = match history_buffer.finish()? {
        Buffered::Resident(mut rows) => {
            rows.par_iter_mut().for_each(|row| {
                row.query = query_rank.of(row.query);
                row.product = product_rank.of(row.product);
                row.view = views[row.product as usize];
            });
            drop((views, query_rank, product_rank));
            let history = History::from_rows(rows, n_queries);
            reject_repeats(
                history.repeats(),
                &query_strings,
                &product_keys,
                &product_type,
            )?;
            history_lens = (0..n_queries as u32)
                .map(|q| history.of(q).len() as u32)
                .collect();
            Stored::Resident(Arc::new(history))
        }
        Buffered::Spilled { files, rows } => {
            let mut lens = vec![0u32; n_queries];
            for (provisional, &count) in counts.iter().enumerate() {
                if count > 0 {
                    lens[query_rank.of(provisional as u32) as usize] = count;
                }
            }
            let runs = Runs {
                files,
                manager: spill.expect("only a buffer that can spill spills").0,
                query_rank,
                product_rank,
                rows,
            };
            let (env, spill_metrics) = memory
                .spill
                .as_ref()
                .expect("only a buffer that can spill spills");
            // its offsets (the views are reserved above)
            reservation
                .try_grow(Spilled::offsets_bytes(n_queries))
                .map_err(|e| out_of_memory(e, reservation.size()))?;
            // the sort may take what blocks will take later: they load after it
            let window = free_bytes(env.memory_pool.as_ref()) / 10 * 8;
            let sort = Instant::now();
            let (spilled, repeats) = runs.sort(&lens, views, env, window, spill_metrics).await?;
            reject_repeats(repeats, &query_strings, &product_keys, &product_type)?;
            sorting = sort.elapsed();
            metrics.sort_history.add_duration(sorting);
            history_lens = lens;
            Stored::Spilled(spilled)
        }
    };
    if sets_in_candidates {
        // what is left of the candidates' memory: the sets
        memory
            .candidates
            .resize(sets.members.capacity() * size_of::<Member>());
    }
    metrics
        .build_index
        .add_duration(start.elapsed().saturating_sub(sorting));

    Ok(Index {
        queries: query_strings,
        products: product_keys,
        history_lens,
        history,
        members: sets.members,
        member_spans: sets.spans,
        weight_total: sets.weight_total,
        emitted: None,
    })
}
