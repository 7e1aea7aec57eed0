//! The merge plan's in-memory index, built from the `history` and `neighbours` streams:
//!
//! - queries and products interned to dense `u32` ids, renumbered so that id order is the keys'
//!   order (the order `ORDER BY query, product_id` gives: byte order for strings, numeric order for
//!   integer product ids), so sorting ids sorts keys;
//! - the history grouped by query (CSR: one offset per query, rows sorted by product);
//! - C_q for every query, with the semantics of `sql/neighbour_sets.sql`: self-pairs, rows
//!   scoring below `min_score` and neighbours without history dropped; the highest score of a
//!   duplicated (query, neighbour) kept; the `top_k` best by score, ties by neighbour ascending;
//!   weights 1 (`mean`) or the score (`score`, unless every kept score is 0).
//!
//! Memory: 40 bytes per history row and 16 per surviving neighbour row while building, plus each
//! distinct string once. Every allocation is reserved from the session's memory pool first, so a
//! `--memory-limit` too small for the index fails with a clear error instead of over-committing.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::BuildHasher;
use std::hash::Hash;
use std::mem::size_of;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::{DataFusionError, HashMap, Result, internal_datafusion_err, internal_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::MemoryReservation;
use futures::StreamExt;
use rayon::prelude::*;

use super::{MergeMetrics, MergeParams};
use crate::formula;

/// A key the index interns: a string (queries, product ids) or an integer product id (any
/// integer type fits an `i128`, and orders as SQL orders it).
pub trait Key: Clone + Eq + Hash + Ord + Send + Sync + Borrow<Self::Borrowed> {
    type Borrowed: ?Sized + Hash + Eq;
    fn own(key: &Self::Borrowed) -> Self;
    /// Bytes the key costs besides its map entry and slot.
    fn heap_bytes(key: &Self::Borrowed) -> usize;
}

impl Key for Arc<str> {
    type Borrowed = str;
    fn own(key: &str) -> Self {
        Arc::from(key)
    }
    fn heap_bytes(key: &str) -> usize {
        key.len() + 16
    }
}

impl Key for i128 {
    type Borrowed = i128;
    fn own(key: &i128) -> Self {
        *key
    }
    fn heap_bytes(_: &i128) -> usize {
        0
    }
}

/// Distinct keys and their ids, in first-seen order until [`Interner::into_sorted`].
pub struct Interner<K> {
    ids: HashMap<K, u32>,
    keys: Vec<K>,
    /// The last key looked up and its id: inputs often arrive grouped by query.
    last: Option<u32>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Interner {
            ids: HashMap::default(),
            keys: Vec::new(),
            last: None,
        }
    }
}

impl<K: Key> Interner<K> {
    /// Bytes one interned key costs besides [`Key::heap_bytes`]: map entry, vector slot.
    const OVERHEAD: usize = 2 * size_of::<K>() + size_of::<u32>() + 8;

    /// The id of `key`, adding it if new, with the bytes of new memory (0 when it was known).
    fn intern(&mut self, key: &K::Borrowed) -> Result<(u32, usize)> {
        if let Some(last) = self.last
            && self.keys[last as usize].borrow() == key
        {
            return Ok((last, 0));
        }
        if let Some(&id) = self.ids.get(key) {
            self.last = Some(id);
            return Ok((id, 0));
        }
        let id = u32::try_from(self.keys.len())
            .map_err(|_| internal_datafusion_err!("more than 2^32 distinct keys"))?;
        let owned = K::own(key);
        self.ids.insert(owned.clone(), id);
        self.keys.push(owned);
        self.last = Some(id);
        Ok((id, K::heap_bytes(key) + Self::OVERHEAD))
    }

    fn get(&self, key: &K::Borrowed) -> Option<u32> {
        self.ids.get(key).copied()
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

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
    /// Product ids by id.
    pub products: Products,
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
             {} MiB for them ({e}); raise --memory-limit. (--plan sql spills, but at a million \
             queries under 2GiB it had written nothing after 8 minutes: docs/BENCHMARKS.md)",
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

/// Shards of a [`Sharded`] interner: enough that workers rarely wait for each other's lock.
const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// Keys interned by several workers at once: [`SHARDS`] interners, a key's shard chosen by its
/// hash, each behind a lock taken once per batch and shard. A key's provisional id is its id
/// in its shard shifted left by [`SHARD_BITS`], plus the shard; [`Sharded::into_sorted`] ranks
/// the keys of all shards together.
pub struct Sharded<K> {
    shards: Vec<Mutex<Interner<K>>>,
    hasher: foldhash::fast::FixedState,
}

impl<K: Key> Default for Sharded<K> {
    fn default() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x0051_2051),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // a worker that panicked fails the whole build; the data is not read again
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K: Key> Sharded<K> {
    /// Row `i`'s key for `n` rows, grouped by shard: (shard, rows) for every shard with a row.
    /// A row equal to the row before it is left out and marked in `same_as_previous`.
    fn by_shard<'k>(
        &self,
        n: usize,
        key: &impl Fn(usize) -> Option<&'k K::Borrowed>,
        same_as_previous: &mut Vec<bool>,
    ) -> Vec<(usize, Vec<u32>)>
    where
        K::Borrowed: 'k,
    {
        let mut groups: Vec<Vec<u32>> = vec![Vec::new(); SHARDS];
        same_as_previous.clear();
        let mut previous: Option<&K::Borrowed> = None;
        for i in 0..n {
            let k = key(i);
            let same = k.is_some() && k == previous;
            same_as_previous.push(same);
            if let Some(k) = k
                && !same
            {
                let shard = (self.hasher.hash_one(k) >> (64 - SHARD_BITS)) as usize;
                groups[shard].push(i as u32);
            }
            previous = k;
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, rows)| !rows.is_empty())
            .collect()
    }

    /// The provisional id of every row's key (`key` gives `None` for rows to skip, whose id is
    /// left as is), adding new keys; returns the bytes of new memory.
    fn intern_all<'k>(
        &self,
        n: usize,
        key: impl Fn(usize) -> Option<&'k K::Borrowed>,
        ids: &mut [u32],
    ) -> Result<usize>
    where
        K::Borrowed: 'k,
    {
        let mut same = Vec::with_capacity(n);
        let mut bytes = 0;
        for (shard, rows) in self.by_shard(n, &key, &mut same) {
            let mut interner = lock(&self.shards[shard]);
            for i in rows {
                let i = i as usize;
                let (local, new) = interner.intern(key(i).expect("grouped rows have a key"))?;
                if local >= 1 << (32 - SHARD_BITS) {
                    return internal_err!(
                        "more than 2^{} distinct keys in a shard",
                        32 - SHARD_BITS
                    );
                }
                ids[i] = (local << SHARD_BITS) | shard as u32;
                bytes += new;
            }
        }
        fill_repeats(ids, &same);
        Ok(bytes)
    }

    /// The provisional id of every row's key among the first `known[shard]` keys of its shard,
    /// or `None` (also for rows `key` skips).
    fn find_all<'k>(
        &self,
        n: usize,
        key: impl Fn(usize) -> Option<&'k K::Borrowed>,
        known: &[u32],
    ) -> Vec<Option<u32>>
    where
        K::Borrowed: 'k,
    {
        let mut same = Vec::with_capacity(n);
        let mut found = vec![None; n];
        for (shard, rows) in self.by_shard(n, &key, &mut same) {
            let interner = lock(&self.shards[shard]);
            for i in rows {
                let i = i as usize;
                found[i] = interner
                    .get(key(i).expect("grouped rows have a key"))
                    .filter(|&local| local < known[shard])
                    .map(|local| (local << SHARD_BITS) | shard as u32);
            }
        }
        for i in 1..n {
            if same[i] {
                found[i] = found[i - 1];
            }
        }
        found
    }

    /// Keys per shard so far.
    fn lens(&self) -> Vec<u32> {
        self.shards.iter().map(|s| lock(s).len() as u32).collect()
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Every key in order, and a [`Ranks`] from provisional ids to positions in that order.
    fn into_sorted(self) -> (Vec<K>, Ranks) {
        let shards: Vec<Interner<K>> = self
            .shards
            .into_iter()
            .map(|s| s.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let mut base = Vec::with_capacity(SHARDS);
        let mut keys: Vec<K> = Vec::with_capacity(shards.iter().map(Interner::len).sum());
        for shard in shards {
            base.push(keys.len() as u32);
            drop(shard.ids);
            keys.extend(shard.keys);
        }
        let mut order: Vec<u32> = (0..keys.len() as u32).collect();
        order.par_sort_unstable_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]));
        let mut rank = vec![0u32; order.len()];
        for (position, &id) in order.iter().enumerate() {
            rank[id as usize] = position as u32;
        }
        let sorted = order.iter().map(|&id| keys[id as usize].clone()).collect();
        (sorted, Ranks { base, rank })
    }
}

/// Copies each repeated row's id from the row before it.
fn fill_repeats(ids: &mut [u32], same_as_previous: &[bool]) {
    for i in 1..ids.len() {
        if same_as_previous[i] {
            ids[i] = ids[i - 1];
        }
    }
}

/// Provisional ids of a [`Sharded`] interner to final ones (positions in key order).
struct Ranks {
    base: Vec<u32>,
    rank: Vec<u32>,
}

impl Ranks {
    fn of(&self, provisional: u32) -> u32 {
        let shard = (provisional & (SHARDS as u32 - 1)) as usize;
        self.rank[(self.base[shard] + (provisional >> SHARD_BITS)) as usize]
    }
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

/// Reads both inputs and builds the [`Index`], with `workers` batches in work at once.
///
/// `history` yields (query, product_id, impressions, h); `neighbours` (query, neighbour, score).
pub async fn build(
    history: SendableRecordBatchStream,
    neighbours: SendableRecordBatchStream,
    params: &MergeParams,
    workers: usize,
    reservation: &mut MemoryReservation,
    metrics: &MergeMetrics,
) -> Result<Index> {
    let queries: Arc<Sharded<Arc<str>>> = Arc::default();
    let products = Arc::new(if history.schema().field(1).data_type().is_integer() {
        ProductInterner::Integers(Sharded::default())
    } else {
        ProductInterner::Strings(Sharded::default())
    });
    let workers = workers.max(1);

    let start = Instant::now();
    let mut rows: Vec<HistoryRow> = Vec::new();
    let mut pieces = history
        .map(|batch| {
            let (queries, products) = (Arc::clone(&queries), Arc::clone(&products));
            SpawnedTask::spawn_blocking(move || history_rows(&batch?, &queries, &products))
                .join_unwind()
        })
        .buffer_unordered(workers);
    while let Some(piece) = pieces.next().await {
        let (piece, keys) = piece.map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
        let capacity = rows.capacity();
        rows.extend(piece);
        // reserve what the vector really allocates (it grows by doubling)
        reserve(
            reservation,
            keys + (rows.capacity() - capacity) * size_of::<HistoryRow>(),
        )?;
    }
    drop(pieces);
    metrics.history_rows.add(rows.len());
    metrics.read_history.add_elapsed(start);

    // Every query interned so far has history: a neighbour must be one of them.
    let start = Instant::now();
    let with_history: Arc<[u32]> = queries.lens().into();
    let mut candidates: Vec<Member> = Vec::new();
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
        .buffer_unordered(workers);
    while let Some(piece) = pieces.next().await {
        let (n, piece, keys) = piece.map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
        read += n;
        let capacity = candidates.capacity();
        candidates.extend(piece);
        reserve(
            reservation,
            keys + (candidates.capacity() - capacity) * size_of::<Member>(),
        )?;
    }
    drop(pieces);
    metrics.neighbour_rows.add(read);
    metrics.read_neighbours.add_elapsed(start);

    let start = Instant::now();
    let (queries, products) = match (Arc::try_unwrap(queries), Arc::try_unwrap(products)) {
        (Ok(q), Ok(p)) => (q, p),
        _ => return internal_err!("a worker of the index build outlived it"),
    };
    // the rank tables and offsets below; members at most one per candidate
    let n = queries.len() + products.len();
    reserve(
        reservation,
        n * (size_of::<u32>() + size_of::<Arc<str>>())
            + products.len() * size_of::<[u64; 2]>()
            + queries.len() * (2 * size_of::<usize>() + size_of::<f64>()),
    )?;
    let (query_strings, query_rank) = queries.into_sorted();
    let (product_keys, product_rank) = products.into_sorted();
    let n_queries = query_strings.len();

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
    rows.par_iter_mut().for_each(|row| {
        row.query = query_rank.of(row.query);
        row.product = product_rank.of(row.product);
        row.view = views[row.product as usize];
    });
    drop(views);
    rows.par_sort_unstable_by_key(|r| (r.query, r.product));
    let history_offsets = offsets(n_queries, rows.iter().map(|r| r.query));

    candidates.par_iter_mut().for_each(|row| {
        row.query = query_rank.of(row.query);
        row.neighbour = query_rank.of(row.neighbour);
    });
    drop((query_rank, product_rank));
    // one row per (query, neighbour), the highest score first
    candidates.par_sort_unstable_by(|a, b| {
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
        let weighting = params.prior_weighting;
        weight_total[query as usize] = formula::weight_total(weighting, kept as f64, score_sum);
        for i in 0..kept {
            // write <= read: moving members forward never overwrites an unread row
            let member = candidates[read + i];
            candidates[write + i] = Member {
                weight: formula::neighbour_weight(weighting, member.weight, score_sum),
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
        products: product_keys,
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
        let interner: Sharded<Arc<str>> = Sharded::default();
        let words = ["b", "a b", "B", "ab", "a", "a", "b", "é", "e"];
        let mut ids = vec![0u32; words.len()];
        let bytes = interner
            .intern_all(words.len(), |i| Some(words[i]), &mut ids)
            .unwrap();
        assert!(bytes > 0);
        assert_eq!(ids[0], ids[6], "a repeated string keeps its id");
        assert_eq!(ids[4], ids[5], "a string repeated in a row too");
        // a second batch finds the same ids, and a lookup among the first keys finds them too
        let mut again = vec![0u32; 2];
        let added = interner
            .intern_all(2, |i| Some(["é", "new"][i]), &mut again)
            .unwrap();
        assert_eq!(again[0], ids[7]);
        assert!(added > 0, "\"new\" is new");
        let known: Vec<u32> = vec![u32::MAX; SHARDS];
        let found = interner.find_all(3, |i| [Some("ab"), None, Some("zz")][i], &known);
        assert_eq!(found, [Some(ids[3]), None, None]);
        let (sorted, ranks) = interner.into_sorted();
        let sorted: Vec<&str> = sorted.iter().map(|s| &**s).collect();
        assert_eq!(sorted, ["B", "a", "a b", "ab", "b", "e", "new", "é"]);
        for (word, id) in words.iter().zip(&ids) {
            assert_eq!(sorted[ranks.of(*id) as usize], *word);
        }
    }

    #[test]
    fn lookups_see_only_the_keys_known_before() {
        let interner: Sharded<Arc<str>> = Sharded::default();
        let mut ids = vec![0u32; 1];
        interner
            .intern_all(1, |_| Some("with history"), &mut ids)
            .unwrap();
        let known = interner.lens();
        interner
            .intern_all(1, |_| Some("neighbour only"), &mut ids)
            .unwrap();
        let found = interner.find_all(2, |i| Some(["with history", "neighbour only"][i]), &known);
        assert!(found[0].is_some());
        assert_eq!(
            found[1], None,
            "a key added after the history is not a neighbour with history"
        );
    }

    #[test]
    fn offsets_delimit_groups() {
        assert_eq!(offsets(4, [0, 0, 2, 3, 3, 3].into_iter()), [0, 2, 2, 3, 6]);
        assert_eq!(offsets(2, std::iter::empty()), [0, 0, 0]);
    }
}
