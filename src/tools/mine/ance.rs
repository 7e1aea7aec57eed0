//! `mine ance`: hard negatives from the current bi-encoder's retrieval, minus co-purchase pairs
//! (seed 000's ANCE loop), one InfoNCE row per query. The SQL is `sql/mine_ance.sql`.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{cast, col, lit};
use datafusion::prelude::{DataFrame, SessionContext};
use tokio_util::sync::CancellationToken;

use crate::config::{InputSpec, OutputFormat};
use crate::error::Result;
use crate::io::checks::{self, Check, Severity};
use crate::io::sink;
use crate::io::storage::OutputLocation;
use crate::io::tables;

pub const SQL: &str = include_str!("../../../sql/mine_ance.sql");

/// What `mine ance` reads and writes.
#[derive(Debug, Clone)]
pub struct AnceJob {
    pub retrieval: InputSpec,
    pub pairs: InputSpec,
    /// Hard negatives per query, at most.
    pub negatives: u64,
    /// Retrieved ranks 1..=skip_top are never negatives.
    pub skip_top: u64,
    pub output: String,
    pub format: OutputFormat,
}

/// Totals of what was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnceReport {
    pub retrieval_rows: u64,
    pub queries: u64,
    pub positives: u64,
    pub hard_negatives: u64,
    /// Retrieved candidates of these queries that were co-purchase pairs, subtracted.
    pub subtracted: u64,
    pub queries_without_negatives: u64,
}

impl std::fmt::Display for AnceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mine ance: {} retrieval rows; {} queries with positives: {} positives, {} hard negatives \
             ({} queries without any); {} retrieved candidates subtracted as co-purchase pairs",
            self.retrieval_rows,
            self.queries,
            self.positives,
            self.hard_negatives,
            self.queries_without_negatives,
            self.subtracted
        )
    }
}

/// Opens both inputs and plans the InfoNCE rows.
pub async fn plan(ctx: &SessionContext, job: &AnceJob) -> Result<(DataFrame, u64)> {
    let (retrieval, retrieval_rows) = tables::open_checked(
        ctx,
        "retrieval",
        &job.retrieval,
        &[
            ("query", checks::is_string, tables::STRING),
            ("candidate", checks::is_string, tables::STRING),
            ("score", tables::is_number, "a numeric retrieval score"),
            ("rank", tables::is_integer, "an integer rank, 1 = best"),
        ],
        vec![
            checks::key_check("query", &DataType::Utf8),
            checks::key_check("candidate", &DataType::Utf8),
            checks::finite_check("score_null_or_not_finite", "score", "a finite score"),
            Check {
                id: "rank_below_1",
                column: "rank",
                severity: Severity::Fail,
                violation: col("rank").is_null().or(col("rank").lt(lit(1i64))),
                expected: "a rank >= 1",
            },
        ],
    )
    .await?;
    let (pairs, _) = tables::open_checked(
        ctx,
        "pairs",
        &job.pairs,
        &[
            ("query", checks::is_string, tables::STRING),
            ("candidate", checks::is_string, tables::STRING),
            (
                "label",
                tables::is_number,
                "a numeric label (from `mine pairs`)",
            ),
            (
                "is_negative",
                tables::is_boolean,
                "a boolean is_negative (from `mine pairs`)",
            ),
            (
                "split",
                checks::is_string,
                "a split column (from `mine pairs`)",
            ),
        ],
        vec![
            checks::key_check("query", &DataType::Utf8),
            checks::key_check("candidate", &DataType::Utf8),
            checks::finite_check("label_null_or_not_finite", "label", "a finite label"),
        ],
    )
    .await?;
    ctx.register_table("retrieval", retrieval.typed.into_view())?;
    ctx.register_table("pairs", pairs.typed.into_view())?;
    let df = ctx.sql(SQL).await?.with_param_values(vec![
        ("skip_top", (job.skip_top as i64).into()),
        ("negatives", (job.negatives as i64).into()),
    ])?;
    Ok((df, retrieval_rows))
}

/// Writes the InfoNCE rows atomically and returns the totals.
pub async fn mine_ance(
    ctx: &SessionContext,
    job: &AnceJob,
    cancel: &CancellationToken,
) -> Result<AnceReport> {
    let location = OutputLocation::resolve(ctx.runtime_env().as_ref(), &job.output)?;
    let (df, retrieval_rows) = plan(ctx, job).await?;
    let rows = df.cache().await?;
    let totals = rows
        .clone()
        .aggregate(
            vec![],
            vec![
                count(lit(1i64)).alias("queries"),
                sum(cast(
                    datafusion::functions_nested::expr_fn::cardinality(col("positives")),
                    DataType::Int64,
                ))
                .alias("positives"),
                sum(cast(
                    datafusion::functions_nested::expr_fn::cardinality(col("hard_negatives")),
                    DataType::Int64,
                ))
                .alias("negatives"),
                sum(col("n_subtracted")).alias("subtracted"),
                sum(cast(
                    datafusion::functions_nested::expr_fn::cardinality(col("hard_negatives"))
                        .eq(lit(0u64)),
                    DataType::Int64,
                ))
                .alias("without"),
            ],
        )?
        .collect()
        .await?;
    sink::write_atomic(rows, &location, job.format, cancel, |_| {}).await?;
    let value = |i: usize| -> u64 {
        totals.first().map_or(0, |b| {
            let c = b.column(i).as_primitive::<Int64Type>();
            if c.is_null(0) { 0 } else { c.value(0) as u64 }
        })
    };
    Ok(AnceReport {
        retrieval_rows,
        queries: value(0),
        positives: value(1),
        hard_negatives: value(2),
        subtracted: value(3),
        queries_without_negatives: value(4),
    })
}
