//! Where the merge plan keeps the history: in memory while the memory pool grants it, else in
//! the DataFusion disk manager's spill files, read back one block of queries at a time.
//!
//! While the inputs are read, history rows (provisional ids) collect in a [`super::spill::Buffer`]
//! whose memory is a *spillable* reservation: under a `--memory-limit` the pool shares it fairly
//! with the other spilling operators (H's aggregation), and when the buffer cannot grow its rows
//! go to a spill file and it starts again. If nothing was spilled the rows become the
//! [`History`] every partition reads. Otherwise, once the final ids are known, the spill runs
//! ([`Runs`]) are rewritten as one file in (query, product) order ([`Runs::sort`]: windows of
//! queries, each sorted in memory; with more than one window, a pass over the runs first routes
//! every row to its window's bucket file), and the index keeps each query's offset in it. A
//! partition then loads, for each block of its chunks, the rows its queries and their
//! neighbours need by reading each of them at its offset ([`Spilled::load`]), the block sized
//! to fit the memory left (`split::Blocks`). (Filtering every run for every block instead read
//! the whole history 547 times at 10M queries under 4 GiB: 69% of the run.)

use std::io::{Read, Write};
use std::mem::size_of;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt32Type,
};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::SpillFile;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::metrics::SpillMetrics;
use datafusion::physical_plan::sorts::streaming_merge::SortedSpillFile;
use datafusion::physical_plan::spill::SpillManager;
use futures::StreamExt;
use rayon::prelude::*;

use super::intern::Ranks;
use super::repeats::Repeats;
use super::spill::SpillRow;

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

/// History rows grouped by query (CSR over every query id; a query whose rows are not held
/// has none), each query's rows by product.
pub struct History {
    rows: Vec<HistoryRow>,
    offsets: Vec<usize>,
}

impl History {
    /// Sorts `rows` (final ids) by (query, product) and groups them by query.
    pub fn from_rows(mut rows: Vec<HistoryRow>, n_queries: usize) -> Self {
        rows.par_sort_unstable_by_key(|r| (r.query, r.product));
        Self::from_sorted(rows, n_queries)
    }

    /// Groups `rows`, already in (query, product) order, by query.
    pub fn from_sorted(rows: Vec<HistoryRow>, n_queries: usize) -> Self {
        debug_assert!(
            rows.windows(2)
                .all(|w| (w[0].query, w[0].product) <= (w[1].query, w[1].product)),
            "history rows in (query, product) order"
        );
        let offsets = offsets(n_queries, rows.iter().map(|r| r.query));
        History { rows, offsets }
    }

    pub fn of(&self, query: u32) -> &[HistoryRow] {
        let q = query as usize;
        &self.rows[self.offsets[q]..self.offsets[q + 1]]
    }

    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// The keys held on more than one row.
    pub fn repeats(&self) -> Repeats {
        let mut repeats = Repeats::default();
        repeats.add_sorted(self.rows.iter().map(|r| (r.query, r.product)));
        repeats
    }

    /// The bytes a history of `rows` rows over `n_queries` queries holds.
    pub fn bytes(rows: usize, n_queries: usize) -> usize {
        rows * size_of::<HistoryRow>() + (n_queries + 1) * size_of::<usize>()
    }
}

/// CSR offsets of `n` groups from the sorted group id of every row.
pub fn offsets(n: usize, groups: impl Iterator<Item = u32>) -> Vec<usize> {
    let mut offsets = vec![0usize; n + 1];
    for g in groups {
        offsets[g as usize + 1] += 1;
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    offsets
}

impl SpillRow for HistoryRow {
    /// A history row with provisional ids (no view: it is set when read back).
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("query", DataType::UInt32, false),
            Field::new("product", DataType::UInt32, false),
            Field::new("impressions", DataType::Int64, false),
            Field::new("h", DataType::Float64, false),
        ]))
    }

    fn batch(rows: &[Self], schema: &SchemaRef) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.query))),
                Arc::new(UInt32Array::from_iter_values(
                    rows.iter().map(|r| r.product),
                )),
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|r| r.impressions),
                )),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.h))),
            ],
        )?)
    }
}

/// The history's spill runs as [`super::spill::Buffer`] wrote them (provisional ids, in the
/// order read), with what turns their ids into final ones.
pub struct Runs {
    pub files: Vec<SortedSpillFile>,
    pub manager: SpillManager,
    pub query_rank: Ranks,
    pub product_rank: Ranks,
    pub rows: usize,
}

/// Bytes of one row of the sorted history's file: the product (final id), I(q,p) and H(q,p),
/// little-endian; the query is implied by the row's place ([`Spilled::offsets`]).
const RECORD: usize = size_of::<u32>() + size_of::<i64>() + size_of::<f64>();

/// A history row while it is sorted: final ids, no view yet.
#[derive(Clone, Copy)]
struct SortRow {
    query: u32,
    product: u32,
    impressions: i64,
    h: f64,
}

/// The spilled history in one file of the disk manager, rows in (final query, product) order:
/// a block reads each query it needs at that query's offset, instead of every spill run.
pub struct Spilled {
    /// Kept so the disk manager deletes the file (and counts its space) when the index goes.
    _file: Arc<dyn SpillFile>,
    reader: std::fs::File,
    path: PathBuf,
    /// The first row of each query, then the rows in all (CSR over the final query ids).
    offsets: Vec<u64>,
    /// The string view of every product (final id), as [`HistoryRow::view`].
    views: Vec<[u64; 2]>,
}

/// Largest gap, in bytes, between two queries' rows that one read spans rather than two.
const READ_GAP: u64 = 4096;
/// The most bytes one read spans when it joins several queries' rows.
const READ_SPAN: u64 = 1 << 20;
/// The sort's window of rows in memory, at most, unless the history is more than
/// [`MAX_BUCKETS`] such windows: the allocator keeps the window's pages a moment after it is
/// freed, just as blocks start to load, so it is kept small rather than as large as fits.
const SORT_WINDOW_BYTES: usize = 64 << 20;
/// Windows a sort aims for at most: windows are cut at whole queries, so there are at most
/// about twice as many bucket files, each open with its buffer while the runs are routed.
const MAX_BUCKETS: usize = 128;
/// Bytes of a row in a bucket file: the query (final id), then a [`RECORD`].
const BUCKET_RECORD: usize = size_of::<u32>() + RECORD;

impl Runs {
    /// Rewrites the runs in (final query, product) order into one spill file of `env`'s disk
    /// manager, a window of queries at a time: each window's rows (at most `window_bytes` with
    /// the files' buffers, and [`SORT_WINDOW_BYTES`]) sorted in memory reserved from `env`'s
    /// pool and appended. One window reads the runs directly; several read them once, routing
    /// each row to its window's bucket file, then each bucket. `lens[q]`: query q's rows (final
    /// id). Also returns the keys the history repeats.
    pub async fn sort(
        self,
        lens: &[u32],
        views: Vec<[u64; 2]>,
        env: &Arc<RuntimeEnv>,
        window_bytes: usize,
        spill: &SpillMetrics,
    ) -> Result<(Spilled, Repeats)> {
        let mut offsets = Vec::with_capacity(lens.len() + 1);
        let mut next = 0u64;
        offsets.push(0);
        for &len in lens {
            next += u64::from(len);
            offsets.push(next);
        }
        if next != self.rows as u64 {
            return internal_err!(
                "the history's spill runs hold {} rows, its queries {next}",
                self.rows
            );
        }
        // windows of whole queries, each at most `window_rows` rows unless one query is more;
        // small enough that the sort's buffer, freed before blocks are loaded, costs little
        // RSS, large enough to need few bucket files
        let total = self.rows;
        // a quarter of the budget for the files' buffers
        let window_rows = (window_bytes / 4 * 3 / size_of::<SortRow>())
            .min(SORT_WINDOW_BYTES / size_of::<SortRow>())
            .max(total.div_ceil(MAX_BUCKETS))
            .max(1);
        let mut windows: Vec<Range<u32>> = Vec::new();
        let mut first = 0u32;
        for q in 0..lens.len() as u32 {
            let rows = offsets[q as usize + 1] - offsets[first as usize];
            if rows > window_rows as u64 && q > first {
                windows.push(first..q);
                first = q;
            }
        }
        windows.push(first..lens.len() as u32);
        let rows_of =
            |w: &Range<u32>| (offsets[w.end as usize] - offsets[w.start as usize]) as usize;
        let largest = windows.iter().map(rows_of).max().unwrap_or(0);
        let reservation =
            MemoryConsumer::new("PriorMergeExec history sort").register(&env.memory_pool);
        // the sorted file's buffer and, with several windows, each bucket's
        let files = if windows.len() > 1 {
            windows.len() + 1
        } else {
            1
        };
        let buffer = (window_bytes / 4 / files).clamp(4 << 10, 1 << 20);
        reservation
            .try_grow(largest * size_of::<SortRow>() + files * buffer)
            .map_err(|e| {
                DataFusionError::ResourcesExhausted(format!(
                    "the merge plan sorts its spilled history by query in windows of whole \
                     queries, and a window of {largest} rows does not fit ({e}); raise \
                     --memory-limit"
                ))
            })?;

        let (file, path) = local_file(env, "PriorMergeExec sorted history")?;
        let mut writer = std::io::BufWriter::with_capacity(buffer, file.open_writer()?);
        let mut rows: Vec<SortRow> = Vec::with_capacity(largest);
        let mut repeats = Repeats::default();
        if windows.len() == 1 {
            // one pass: every row into the window
            self.for_each_row(|row| {
                rows.push(row);
                Ok(())
            })
            .await?;
            drop(self.files);
            sort_and_append(&mut rows, total, &mut writer, &mut repeats)?;
        } else {
            // one pass over the runs routes each row to its window's bucket file, then each
            // bucket is read back, sorted and appended
            let starts: Vec<u32> = windows.iter().map(|w| w.start).collect();
            let mut buckets = Vec::with_capacity(windows.len());
            for _ in &windows {
                let (file, path) = local_file(env, "PriorMergeExec history bucket")?;
                let writer = std::io::BufWriter::with_capacity(buffer, file.open_writer()?);
                buckets.push((file, path, writer));
            }
            self.for_each_row(|row| {
                let bucket = starts.partition_point(|&s| s <= row.query) - 1;
                let writer = &mut buckets[bucket].2;
                writer.write_all(&row.query.to_le_bytes())?;
                write_record(writer, &row)?;
                Ok(())
            })
            .await?;
            // the runs' disk space back before the sorted file takes as much
            drop(self.files);
            spill.spill_file_count.add(buckets.len());
            spill.spilled_rows.add(total);
            spill.spilled_bytes.add(total * BUCKET_RECORD);
            for ((bucket, path, routed), window) in buckets.into_iter().zip(&windows) {
                let mut routed = routed.into_inner().map_err(|e| e.into_error())?;
                routed.finish()?;
                drop(routed);
                rows.clear();
                let mut reader =
                    std::io::BufReader::with_capacity(buffer, std::fs::File::open(&path)?);
                let mut record = [0u8; BUCKET_RECORD];
                for _ in 0..rows_of(window) {
                    reader.read_exact(&mut record)?;
                    let (query, rest) = record.split_at(size_of::<u32>());
                    let mut row = read_record(rest);
                    row.query = u32::from_le_bytes(query.try_into().expect("4 bytes"));
                    rows.push(row);
                }
                drop((reader, bucket));
                sort_and_append(&mut rows, rows_of(window), &mut writer, &mut repeats)?;
            }
        }
        drop(rows);
        let mut writer = writer.into_inner().map_err(|e| e.into_error())?;
        writer.finish()?;
        drop(writer);
        drop(reservation);
        spill.spill_file_count.add(1);
        spill.spilled_rows.add(total);
        spill.spilled_bytes.add(total * RECORD);
        let reader = std::fs::File::open(&path)?;
        let spilled = Spilled {
            _file: file,
            reader,
            path,
            offsets,
            views,
        };
        Ok((spilled, repeats))
    }
}

impl Runs {
    /// Every row of the runs, with final ids, in the runs' order.
    async fn for_each_row(&self, mut f: impl FnMut(SortRow) -> Result<()>) -> Result<()> {
        for run in &self.files {
            let mut batches = self
                .manager
                .read_spill_as_stream(Arc::clone(&run.file), None)?;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                let query = batch.column(0).as_primitive::<UInt32Type>().values();
                let product = batch.column(1).as_primitive::<UInt32Type>().values();
                let impressions = batch.column(2).as_primitive::<Int64Type>().values();
                let h = batch.column(3).as_primitive::<Float64Type>().values();
                for i in 0..batch.num_rows() {
                    f(SortRow {
                        query: self.query_rank.of(query[i]),
                        product: self.product_rank.of(product[i]),
                        impressions: impressions[i],
                        h: h[i],
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// A new file of `env`'s disk manager, and its path (the sorted history is read by offset).
fn local_file(env: &RuntimeEnv, what: &str) -> Result<(Arc<dyn SpillFile>, PathBuf)> {
    let file = env.disk_manager.create_tmp_file(what)?;
    match file.path().map(PathBuf::from) {
        Some(path) => Ok((file, path)),
        None => internal_err!(
            "the merge plan reads its sorted history back by offset and needs the disk \
             manager's files on a local disk"
        ),
    }
}

fn write_record(writer: &mut impl Write, row: &SortRow) -> std::io::Result<()> {
    writer.write_all(&row.product.to_le_bytes())?;
    writer.write_all(&row.impressions.to_le_bytes())?;
    writer.write_all(&row.h.to_le_bytes())
}

/// A row of `record` ([`RECORD`] bytes; the query is set by the caller).
fn read_record(record: &[u8]) -> SortRow {
    SortRow {
        query: 0,
        product: u32::from_le_bytes(record[0..4].try_into().expect("4 bytes")),
        impressions: i64::from_le_bytes(record[4..12].try_into().expect("8 bytes")),
        h: f64::from_le_bytes(record[12..20].try_into().expect("8 bytes")),
    }
}

/// Sorts a window's rows by (query, product), adds its repeated keys to `repeats` (windows
/// come in query order and hold whole queries) and appends the rows to the sorted file.
fn sort_and_append(
    rows: &mut [SortRow],
    expected: usize,
    writer: &mut impl Write,
    repeats: &mut Repeats,
) -> Result<()> {
    if rows.len() != expected {
        return internal_err!(
            "a window of queries has {expected} history rows, its spill runs {}",
            rows.len()
        );
    }
    rows.par_sort_unstable_by_key(|r| (r.query, r.product));
    repeats.add_sorted(rows.iter().map(|r| (r.query, r.product)));
    for row in rows.iter() {
        write_record(writer, row)?;
    }
    Ok(())
}

impl Spilled {
    /// Query `q`'s rows in the file.
    fn rows_of(&self, q: u32) -> Range<u64> {
        self.offsets[q as usize]..self.offsets[q as usize + 1]
    }

    /// The rows of the queries `needed` (final ids, ascending, distinct): `rows` rows in all.
    /// Neighbouring queries' rows are read at once when little lies between them.
    pub fn load(&self, needed: &[u32], rows: usize) -> Result<History> {
        let n_queries = self.offsets.len() - 1;
        let mut out = Vec::with_capacity(rows);
        let mut buf: Vec<u8> = Vec::new();
        let mut next = 0;
        while next < needed.len() {
            // a span of queries read at once: [needed[next], needed[last]]
            let start = self.rows_of(needed[next]).start;
            let mut last = next;
            while last + 1 < needed.len() {
                let end = self.rows_of(needed[last]).end;
                let further = self.rows_of(needed[last + 1]);
                if (further.start - end) * RECORD as u64 > READ_GAP
                    || (further.end - start) * RECORD as u64 > READ_SPAN
                {
                    break;
                }
                last += 1;
            }
            let end = self.rows_of(needed[last]).end;
            buf.resize(((end - start) as usize) * RECORD, 0);
            self.reader
                .read_exact_at(&mut buf, start * RECORD as u64)
                .map_err(|e| {
                    DataFusionError::Execution(format!(
                        "reading the merge plan's sorted history back from {}: {e}",
                        self.path.display()
                    ))
                })?;
            for &q in &needed[next..=last] {
                let range = self.rows_of(q);
                let from = ((range.start - start) as usize) * RECORD;
                let to = ((range.end - start) as usize) * RECORD;
                for record in buf[from..to].chunks_exact(RECORD) {
                    let row = read_record(record);
                    out.push(HistoryRow {
                        h: row.h,
                        impressions: row.impressions,
                        view: self.views[row.product as usize],
                        query: q,
                        product: row.product,
                    });
                }
            }
            next = last + 1;
        }
        Ok(History::from_sorted(out, n_queries))
    }

    /// The bytes of its offsets over `n_queries` queries.
    pub fn offsets_bytes(n_queries: usize) -> usize {
        (n_queries + 1) * size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pipeline::merge::intern::Sharded;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;

    /// Interns `keys` in their order; the provisional id of each, and the ranks.
    fn intern(keys: &[String]) -> (Vec<u32>, Ranks) {
        let interner: Sharded<Arc<str>> = Sharded::default();
        let mut ids = vec![0u32; keys.len()];
        interner
            .intern_all(keys.len(), |i| Some(keys[i].as_str()), &mut ids)
            .unwrap();
        (ids, interner.into_sorted().1)
    }

    /// Spill runs of 60 queries' history (q % 4 rows each, some none), written in a shuffled
    /// order over three runs, sorted with windows of every size and read back for sets of
    /// queries: the rows of those queries, in (query, product) order, as from memory.
    #[tokio::test]
    async fn sorted_runs_read_back_any_queries_rows() {
        let n = 60usize;
        // query i's string sorts as i; interned in a scrambled order
        let order: Vec<usize> = (0..n).map(|i| (i * 37) % n).collect();
        let names: Vec<String> = order.iter().map(|i| format!("q{i:03}")).collect();
        let (provisional, query_rank) = intern(&names);
        let products: Vec<String> = (0..8).rev().map(|p| format!("p{p}")).collect();
        let (product_ids, product_rank) = intern(&products);
        let mut rows = Vec::new();
        for (slot, &q) in order.iter().enumerate() {
            for r in 0..q % 4 {
                let p = (q + 3 * r) % 8;
                rows.push(HistoryRow {
                    h: q as f64 + r as f64 / 10.0,
                    impressions: (q * 10 + r) as i64,
                    view: [0, 0],
                    query: provisional[slot],
                    product: product_ids
                        [products.iter().position(|s| *s == format!("p{p}")).unwrap()],
                });
            }
        }
        let env = Arc::new(RuntimeEnvBuilder::new().build().unwrap());
        let metrics = SpillMetrics::new(&ExecutionPlanMetricsSet::new(), 0);
        let expected = |needed: &[u32]| -> Vec<(u32, u32, i64, u64)> {
            let mut e: Vec<(u32, u32, i64, u64)> = rows
                .iter()
                .map(|r| {
                    let q = query_rank.of(r.query);
                    (q, product_rank.of(r.product), r.impressions, r.h.to_bits())
                })
                .filter(|r| needed.contains(&r.0))
                .collect();
            e.sort_unstable();
            e
        };
        let mut lens = vec![0u32; n];
        for r in &rows {
            lens[query_rank.of(r.query) as usize] += 1;
        }
        let all: Vec<u32> = (0..n as u32).filter(|&q| lens[q as usize] > 0).collect();
        let sparse: Vec<u32> = all.iter().copied().filter(|q| q % 7 < 2).collect();
        for window in [1, 5 * size_of::<SortRow>(), 1 << 20] {
            let manager =
                super::super::spill::manager::<HistoryRow>(Arc::clone(&env), metrics.clone());
            let mut files = Vec::new();
            for run in rows.chunks(rows.len() / 3 + 1) {
                let mut file = manager.create_in_progress_file("test").unwrap();
                let largest = file
                    .append_batch(&HistoryRow::batch(run, manager.schema()).unwrap())
                    .unwrap();
                files.push(SortedSpillFile {
                    file: file.finish().unwrap().unwrap(),
                    max_record_batch_memory: largest,
                });
            }
            // the views stand for the product: its final id
            let views = (0..8u64).map(|p| [p, p]).collect();
            let (spilled, repeats) = Runs {
                files,
                manager,
                query_rank: intern(&names).1,
                product_rank: intern(&products).1,
                rows: rows.len(),
            }
            .sort(&lens, views, &env, window, &metrics)
            .await
            .unwrap();
            assert_eq!(repeats, Repeats::default(), "every key once");
            for needed in [&all[..], &sparse[..], &all[3..4], &[][..]] {
                let wanted = expected(needed);
                let history = spilled.load(needed, wanted.len()).unwrap();
                let got: Vec<(u32, u32, i64, u64)> = (0..n as u32)
                    .flat_map(|q| history.of(q).iter())
                    .map(|r| {
                        assert_eq!(r.view, [u64::from(r.product); 2], "the product's view");
                        (r.query, r.product, r.impressions, r.h.to_bits())
                    })
                    .collect();
                assert_eq!(got, wanted, "window of {window} bytes, queries {needed:?}");
            }
        }
    }

    #[test]
    fn offsets_delimit_groups() {
        assert_eq!(offsets(4, [0, 0, 2, 3, 3, 3].into_iter()), [0, 2, 2, 3, 6]);
        assert_eq!(offsets(2, std::iter::empty()), [0, 0, 0]);
    }
}
