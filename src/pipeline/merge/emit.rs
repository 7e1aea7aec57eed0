//! Prior and blend, one query at a time, in (query, product_id) order.
//!
//! For query q the prior pairs come from merging the history lists of q's neighbours (k short
//! lists sorted by product): each contribution is (p, weight_c * H(c,p)); sorted by product and
//! summed per product they give Prior(q,p) (`sql/prior.sql`). That list is merged with q's own
//! history to give the full outer join of `sql/features.sql`, and alpha and F come from the same
//! functions as the SQL UDFs ([`crate::formula`]).

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int64Array, Int64Builder, RecordBatch, StringBuilder,
    StringViewArray, UInt64Array,
};
use datafusion::arrow::buffer::{Buffer, ScalarBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Result;

use super::MergeParams;
use super::history::History;
use super::index::{Index, Products};
use crate::formula;

/// Produces the feature rows of a range of an [`Index`]'s queries in batches of about
/// `batch_size` rows (the index and the history it reads are passed to each call, so that an
/// emitter can live in a stream beside what owns them).
pub struct Emitter {
    params: MergeParams,
    schema: SchemaRef,
    batch_size: usize,
    next_query: usize,
    end_query: usize,
    contributions: Vec<Contribution>,
    columns: Columns,
    /// With shares: the output partition whose queries are written ([`Index::is_emitted`]).
    partition: Option<u32>,
}

/// A string column being built, of the type the schema asks for.
enum Strings {
    Utf8(StringBuilder),
    View(Views),
}

/// A `Utf8View` column: one 16-byte view per row; strings of up to 12 bytes live in the view
/// itself, longer ones once in the batch's data buffer however many rows repeat them.
#[derive(Default)]
struct Views {
    views: Vec<u128>,
    data: Vec<u8>,
}

impl Views {
    /// The view of `s`, storing its bytes in the data buffer when they do not fit in the view.
    fn view_of(&mut self, s: &str) -> u128 {
        if s.len() <= 12 {
            return make_view(s.as_bytes(), 0, 0);
        }
        let offset = self.data.len() as u32;
        self.data.extend_from_slice(s.as_bytes());
        make_view(s.as_bytes(), 0, offset)
    }
}

impl Strings {
    fn new(data_type: &DataType, rows: usize, bytes: usize) -> Self {
        match data_type {
            DataType::Utf8View => Strings::View(Views {
                views: Vec::with_capacity(rows),
                data: Vec::new(),
            }),
            _ => Strings::Utf8(StringBuilder::with_capacity(rows, bytes)),
        }
    }

    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(match self {
            Strings::Utf8(b) => Arc::new(b.finish()),
            Strings::View(v) => {
                let views = ScalarBuffer::from(std::mem::take(&mut v.views));
                let data = Buffer::from_vec(std::mem::take(&mut v.data));
                Arc::new(StringViewArray::try_new(views, vec![data], None)?)
            }
        })
    }
}

/// The product_id column being built: strings, or integers cast at the end to the input's type.
enum ProductIds {
    Strings(Strings),
    Integers {
        values: Vec<i128>,
        data_type: DataType,
    },
}

impl ProductIds {
    fn finish(&mut self) -> Result<ArrayRef> {
        match self {
            ProductIds::Strings(s) => s.finish(),
            ProductIds::Integers { values, data_type } => {
                let values = std::mem::take(values);
                // the values came from a column of `data_type`: they fit it
                let wide: ArrayRef = if data_type.is_unsigned_integer() {
                    Arc::new(UInt64Array::from_iter_values(
                        values.into_iter().map(|v| v as u64),
                    ))
                } else {
                    Arc::new(Int64Array::from_iter_values(
                        values.into_iter().map(|v| v as i64),
                    ))
                };
                Ok(cast(&wide, data_type)?)
            }
        }
    }
}

struct Columns {
    query: Strings,
    product: ProductIds,
    h: Float64Builder,
    prior: Float64Builder,
    alpha: Float64Builder,
    f: Float64Builder,
    impressions: Int64Builder,
    n_neighbours: Int64Builder,
    n_contributing: Int64Builder,
    rows: usize,
}

impl Columns {
    fn new(schema: &SchemaRef, rows: usize) -> Self {
        Columns {
            query: Strings::new(schema.field(0).data_type(), rows, rows * 24),
            product: match schema.field(1).data_type() {
                t if t.is_integer() => ProductIds::Integers {
                    values: Vec::with_capacity(rows),
                    data_type: t.clone(),
                },
                t => ProductIds::Strings(Strings::new(t, rows, rows * 12)),
            },
            h: Float64Builder::with_capacity(rows),
            prior: Float64Builder::with_capacity(rows),
            alpha: Float64Builder::with_capacity(rows),
            f: Float64Builder::with_capacity(rows),
            impressions: Int64Builder::with_capacity(rows),
            n_neighbours: Int64Builder::with_capacity(rows),
            n_contributing: Int64Builder::with_capacity(rows),
            rows: 0,
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        self.rows = 0;
        Ok(RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                self.query.finish()?,
                self.product.finish()?,
                Arc::new(self.h.finish()),
                Arc::new(self.prior.finish()),
                Arc::new(self.alpha.finish()),
                Arc::new(self.f.finish()),
                Arc::new(self.impressions.finish()),
                Arc::new(self.n_neighbours.finish()),
                Arc::new(self.n_contributing.finish()),
            ],
        )?)
    }
}

/// weight_c * H(c,p) from one neighbour c, with p's string view (see `HistoryRow::view`) and
/// c's rank in C_q, which fixes the order in which a product's contributions are summed.
#[derive(Clone, Copy)]
struct Contribution {
    product: u32,
    rank: u32,
    weighted_h: f64,
    view: [u64; 2],
}

/// One output row before alpha and F.
struct Pair {
    product: u32,
    view: [u64; 2],
    h: f64,
    prior: f64,
    impressions: i64,
    n_contributing: i64,
}

impl Emitter {
    /// An emitter of the rows of `queries` (ids of `index`), reading the history rows of the
    /// queries and their neighbours from `history`.
    pub fn new(
        index: &Index,
        queries: Range<u32>,
        params: MergeParams,
        schema: SchemaRef,
        batch_size: usize,
    ) -> Self {
        Emitter {
            params,
            columns: Columns::new(&schema, batch_size.max(1) + 256),
            schema,
            batch_size: batch_size.max(1),
            next_query: queries.start as usize,
            end_query: (queries.end as usize).min(index.queries.len()),
            contributions: Vec::new(),
            partition: None,
        }
    }

    /// Writes only the queries of output partition `partition` of a shared index (`None`:
    /// every query the index writes).
    pub fn for_partition(mut self, partition: Option<u32>) -> Self {
        self.partition = partition;
        self
    }

    /// Every batch of the range at once.
    pub fn all_batches(mut self, index: &Index, history: &History) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        while let Some(batch) = self.next_batch(index, history)? {
            batches.push(batch);
        }
        Ok(batches)
    }

    /// The next batch, `None` when every query of the range is done. A query's rows never
    /// straddle batches unless one query alone has more than `batch_size` rows.
    pub fn next_batch(&mut self, index: &Index, history: &History) -> Result<Option<RecordBatch>> {
        while self.columns.rows < self.batch_size && self.next_query < self.end_query {
            self.emit_query(index, history, self.next_query as u32);
            self.next_query += 1;
        }
        if self.columns.rows == 0 {
            return Ok(None);
        }
        self.columns.finish(&self.schema).map(Some)
    }

    fn emit_query(&mut self, index: &Index, history: &History, query: u32) {
        if !index.is_emitted(query, self.partition) {
            return; // another share's query, here for its history
        }
        let own = history.of(query);
        let members = index.members_of(query);
        if own.is_empty() && members.is_empty() {
            return; // only in neighbour rows that were all filtered out
        }
        let max_impressions = own.iter().map(|r| r.impressions).max().unwrap_or(0);
        let weight_total = index.weight_total[query as usize];

        let contributions = &mut self.contributions;
        contributions.clear();
        for (rank, member) in members.iter().enumerate() {
            contributions.extend(history.of(member.neighbour).iter().map(|r| Contribution {
                product: r.product,
                rank: rank as u32,
                weighted_h: member.weight * r.h,
                view: r.view,
            }));
        }
        // a product's contributions are summed in rank order, whatever the partitioning
        contributions.sort_unstable_by_key(|c| (c.product, c.rank));

        let (confidence, beta) = (self.params.confidence(), self.params.beta);
        let n_neighbours = members.len() as i64;
        let name = &*index.queries[query as usize];
        let columns = &mut self.columns;
        // with views, the query's bytes go into the batch once, not once per row
        let query_view = match &mut columns.query {
            Strings::View(v) => v.view_of(name),
            Strings::Utf8(_) => 0,
        };
        let mut push = |pair: Pair| {
            let alpha =
                formula::alpha(&confidence, pair.impressions as f64, max_impressions as f64);
            match &mut columns.query {
                Strings::View(v) => v.views.push(query_view),
                Strings::Utf8(b) => b.append_value(name),
            }
            let product = pair.product as usize;
            match (&mut columns.product, &index.products) {
                (ProductIds::Strings(Strings::View(v)), Products::Strings(products)) => {
                    // short ids (most): the view travelled with the row; no look at the string
                    let view = u128::from(pair.view[0]) | (u128::from(pair.view[1]) << 64);
                    if view as u32 <= 12 {
                        v.views.push(view);
                    } else {
                        let view = v.view_of(&products[product]);
                        v.views.push(view);
                    }
                }
                (ProductIds::Strings(Strings::Utf8(b)), Products::Strings(products)) => {
                    b.append_value(&products[product])
                }
                (ProductIds::Integers { values, .. }, Products::Integers(products)) => {
                    values.push(products[product])
                }
                // MergedFeatures checks that the schema's product_id is the history's
                _ => unreachable!("product_id types of the index and the schema agree"),
            }
            columns.h.append_value(pair.h);
            columns.prior.append_value(pair.prior);
            columns.alpha.append_value(alpha);
            columns
                .f
                .append_value(formula::blend(pair.h, pair.prior, alpha, beta));
            columns.impressions.append_value(pair.impressions);
            columns.n_neighbours.append_value(n_neighbours);
            columns.n_contributing.append_value(pair.n_contributing);
            columns.rows += 1;
        };

        let mut own = own.iter().peekable();
        let mut priors = contributions
            .chunk_by(|a, b| a.product == b.product)
            .map(|group| {
                let sum: f64 = group.iter().map(|c| c.weighted_h).sum();
                (
                    group[0],
                    formula::prior(sum, weight_total),
                    group.len() as i64,
                )
            })
            .peekable();
        loop {
            let next_own = own.peek().map(|r| r.product);
            let next_prior = priors.peek().map(|p| p.0.product);
            match (next_own, next_prior) {
                (None, None) => break,
                (Some(a), b) if b.is_none_or(|b| a < b) => {
                    let r = own.next().expect("peeked");
                    push(Pair {
                        product: r.product,
                        view: r.view,
                        h: r.h,
                        prior: 0.0,
                        impressions: r.impressions,
                        n_contributing: 0,
                    });
                }
                (a, Some(b)) if a.is_none_or(|a| b < a) => {
                    let (c, prior, n) = priors.next().expect("peeked");
                    push(Pair {
                        product: c.product,
                        view: c.view,
                        h: 0.0,
                        prior,
                        impressions: 0,
                        n_contributing: n,
                    });
                }
                _ => {
                    let r = own.next().expect("peeked");
                    let (_, prior, n) = priors.next().expect("peeked");
                    push(Pair {
                        product: r.product,
                        view: r.view,
                        h: r.h,
                        prior,
                        impressions: r.impressions,
                        n_contributing: n,
                    });
                }
            }
        }
    }
}
