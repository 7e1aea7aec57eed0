//! Training data for the upstream Q2Q model, mined from behaviour logs (paper section 3, 5.1).
//!
//! - [`pairs`]: query pairs labelled by overlap x Jaccard of their co-purchased products, with
//!   random negatives and a split by query.
//! - [`ance`]: hard negatives from the bi-encoder's retrieval minus co-purchase pairs, one InfoNCE
//!   row per query.
//!
//! This module reads the engagement input (checked like the job's inputs), hands the purchases to
//! the in-memory miner and writes its rows atomically (Parquet, CSV or NDJSON, local or object
//! store).

pub mod ance;
pub mod pairs;

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::{cast, col, lit};
use datafusion::prelude::SessionContext;
use tokio_util::sync::CancellationToken;

use crate::config::{InputSpec, OutputFormat};
use crate::error::{BadInput, Error, Result};
use crate::io::checks::{Check, Severity};
use crate::io::sink;
use crate::io::storage::OutputLocation;
use crate::io::tables;
use crate::pipeline::inputs;

use pairs::{MineReport, PairParams, PairRow, Purchases};

/// Days of a `dt=YYYY-MM-DD` partitioned input to read, inclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Reads the distinct (query, product) purchases of `spec` (rows with purchases > 0) in `window`.
pub async fn read_purchases(
    ctx: &SessionContext,
    spec: &InputSpec,
    window: &Window,
) -> Result<Purchases> {
    let mut input = tables::open_table(ctx, inputs::ENGAGEMENT, spec).await?;
    let mut row_checks = input.require_keys()?;
    input.require(
        "purchases",
        tables::is_integer,
        "an integer purchases count per (query, product_id)",
    )?;
    row_checks.push(Check {
        id: "purchases_null_or_negative",
        column: "purchases",
        severity: Severity::Fail,
        violation: col("purchases")
            .is_null()
            .or(col("purchases").lt(lit(0i64))),
        expected: "a count >= 0",
    });
    input.checks = row_checks;
    let mut rows = input.raw.clone();
    if window.from.is_some() || window.to.is_some() {
        if !input.partitions.columns.iter().any(|c| c == "dt") {
            return Err(Error::config(format!(
                "--from/--to select dt=YYYY-MM-DD folders, but {} has no dt partition folders",
                input.uri
            )));
        }
        if let Some(from) = &window.from {
            rows = rows.filter(col("dt").gt_eq(lit(from.as_str())))?;
        }
        if let Some(to) = &window.to {
            rows = rows.filter(col("dt").lt_eq(lit(to.as_str())))?;
        }
    }
    tables::enforce(&input, &rows, &input.checks).await?;
    let batches = rows
        .filter(col("purchases").gt(lit(0i64)))?
        .select(vec![
            cast(col("query"), DataType::Utf8).alias("query"),
            cast(col("product_id"), DataType::Utf8).alias("product_id"),
        ])?
        .distinct()?
        .collect()
        .await?;
    let columns: Vec<(&StringArray, &StringArray)> = batches
        .iter()
        .map(|b| {
            (
                b.column(0).as_string::<i32>(),
                b.column(1).as_string::<i32>(),
            )
        })
        .collect();
    let purchases = Purchases::from_pairs(
        columns
            .iter()
            .flat_map(|(q, p)| (0..q.len()).map(move |i| (q.value(i), p.value(i)))),
    );
    if purchases.purchase_count() == 0 {
        return Err(
            BadInput::new(inputs::ENGAGEMENT, &input.uri, "no row has a purchase")
                .column("purchases")
                .expected("some rows with purchases > 0: pairs are mined from purchases")
                .into(),
        );
    }
    Ok(purchases)
}

/// The output schema of `mine pairs`.
pub fn pair_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("query", DataType::Utf8, false),
        Field::new("candidate", DataType::Utf8, false),
        Field::new("n_copurchase", DataType::Int64, false),
        Field::new("n_union", DataType::Int64, false),
        Field::new("n_min", DataType::Int64, false),
        Field::new("jaccard", DataType::Float64, false),
        Field::new("overlap", DataType::Float64, false),
        Field::new("label", DataType::Float64, false),
        Field::new("is_negative", DataType::Boolean, false),
        Field::new("split", DataType::Utf8, false),
    ]))
}

/// Shares of input queries in the validation and test splits (the rest trains).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitShares {
    pub validation: f64,
    pub test: f64,
}

/// `rows` as record batches of `pair_schema()`.
pub fn pair_batches(
    purchases: &Purchases,
    rows: &[PairRow],
    split: SplitShares,
) -> Result<Vec<RecordBatch>> {
    const BATCH: usize = 64 * 1024;
    let schema = pair_schema();
    let name = |id: u32| purchases.queries[id as usize].as_str();
    rows.chunks(BATCH)
        .map(|chunk| {
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        chunk.iter().map(|r| name(r.query)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        chunk.iter().map(|r| name(r.candidate)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        chunk.iter().map(|r| i64::from(r.n_copurchase)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        chunk.iter().map(|r| i64::from(r.n_union)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        chunk.iter().map(|r| i64::from(r.n_min)),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        chunk.iter().map(|r| r.jaccard),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        chunk.iter().map(|r| r.overlap),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        chunk.iter().map(|r| r.label),
                    )),
                    Arc::new(BooleanArray::from_iter(
                        chunk.iter().map(|r| Some(r.is_negative)),
                    )),
                    Arc::new(StringArray::from_iter_values(chunk.iter().map(|r| {
                        pairs::split_of(name(r.query), split.validation, split.test)
                    }))),
                ],
            )?;
            Ok(batch)
        })
        .collect()
}

/// What `mine pairs` reads, how it mines and where it writes.
#[derive(Debug, Clone)]
pub struct PairJob {
    pub engagement: InputSpec,
    pub window: Window,
    pub params: PairParams,
    pub split: SplitShares,
    pub output: String,
    pub format: OutputFormat,
}

/// Mines the engagement's purchases and writes the pairs atomically; returns the report.
pub async fn mine_pairs(
    ctx: &SessionContext,
    job: &PairJob,
    cancel: &CancellationToken,
) -> Result<MineReport> {
    let location = OutputLocation::resolve(ctx.runtime_env().as_ref(), &job.output)?;
    let purchases = read_purchases(ctx, &job.engagement, &job.window).await?;
    let params = job.params.clone();
    let (purchases, rows, report) = tokio::task::spawn_blocking(move || {
        let (rows, report) = pairs::mine(&purchases, &params);
        (purchases, rows, report)
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let mut batches = pair_batches(&purchases, &rows, job.split)?;
    drop(rows);
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(pair_schema()));
    }
    let df = ctx.read_batches(batches)?;
    sink::write_atomic(df, &location, job.format, cancel, |_| {}).await?;
    Ok(report)
}

impl std::fmt::Display for MineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "mine pairs: {} queries with purchases, {} products, {} (query, product) purchases",
            self.queries, self.products, self.purchases
        )?;
        writeln!(
            f,
            "  {:<22} {:>10} {:>12} {:>16} {:>9} {:>18} {:>16}",
            "queries per product",
            "products",
            "purchases",
            "pairs counted",
            "sampled",
            "purchases dropped",
            "pairs dropped"
        )?;
        for b in &self.buckets {
            let range = match b.to {
                Some(to) if to == b.from => format!("{}", b.from),
                Some(to) => format!("{}-{}", b.from, to),
                None => format!("{}+", b.from),
            };
            writeln!(
                f,
                "  {:<22} {:>10} {:>12} {:>16} {:>9} {:>18} {:>16}",
                range,
                b.products,
                b.purchases,
                b.pairs,
                b.sampled_products,
                b.dropped_purchases,
                b.dropped_pairs
            )?;
        }
        writeln!(
            f,
            "  pairs with enough co-purchases: {} (ordered); kept as positives: {} for {} queries",
            self.qualifying_pairs, self.positives, self.queries_with_pairs
        )?;
        write!(
            f,
            "  negatives: {} ({} queries got fewer than the ratio asks: too few queries without a shared product)",
            self.negatives, self.queries_short_of_negatives
        )
    }
}
