//! Where the merge plan keeps the history: in memory while the memory pool grants it, else in
//! the DataFusion disk manager's spill files, read back one block of queries at a time.
//!
//! While the inputs are read, history rows (provisional ids) collect in a [`super::spill::Buffer`]
//! whose memory is a *spillable* reservation: under a `--memory-limit` the pool shares it fairly
//! with the other spilling operators (H's aggregation), and when the buffer cannot grow its rows
//! go to a spill file and it starts again. If nothing was spilled the rows become the
//! [`History`] every partition reads; otherwise the index keeps only each query's row count,
//! and a partition loads, for each block of its chunks, the rows its queries and their
//! neighbours need ([`Spilled::load`]), sized to fit the memory left (`split::Blocks`).

use std::mem::size_of;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt32Type,
};
use datafusion::common::Result;
use datafusion::physical_plan::sorts::streaming_merge::SortedSpillFile;
use datafusion::physical_plan::spill::SpillManager;
use futures::StreamExt;
use rayon::prelude::*;

use super::intern::Ranks;
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

/// The history in spill files, with what turns their provisional ids into final ones.
pub struct Spilled {
    pub files: Vec<SortedSpillFile>,
    pub manager: SpillManager,
    pub query_rank: Ranks,
    pub product_rank: Ranks,
    /// The string view of every product (final id), as [`HistoryRow::view`].
    pub views: Vec<[u64; 2]>,
    pub rows: usize,
}

impl Spilled {
    /// The `rows` rows of the queries `needed[q]` (final ids), read from every spill file.
    pub async fn load(&self, needed: &[bool], rows: usize) -> Result<History> {
        let mut rows = Vec::with_capacity(rows);
        for file in &self.files {
            let mut batches = self
                .manager
                .read_spill_as_stream(Arc::clone(&file.file), None)?;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                let query = batch.column(0).as_primitive::<UInt32Type>().values();
                let product = batch.column(1).as_primitive::<UInt32Type>().values();
                let impressions = batch.column(2).as_primitive::<Int64Type>().values();
                let h = batch.column(3).as_primitive::<Float64Type>().values();
                debug_assert_eq!(batch.column(3).null_count(), 0);
                for i in 0..batch.num_rows() {
                    let q = self.query_rank.of(query[i]);
                    if needed[q as usize] {
                        let p = self.product_rank.of(product[i]);
                        rows.push(HistoryRow {
                            h: h[i],
                            impressions: impressions[i],
                            view: self.views[p as usize],
                            query: q,
                            product: p,
                        });
                    }
                }
            }
        }
        Ok(History::from_rows(rows, needed.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_delimit_groups() {
        assert_eq!(offsets(4, [0, 0, 2, 3, 3, 3].into_iter()), [0, 2, 2, 3, 6]);
        assert_eq!(offsets(2, std::iter::empty()), [0, 0, 0]);
    }
}
