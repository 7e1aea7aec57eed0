//! Row-level checks on a table: predicates that select offending rows, with a severity, all
//! counted in a single scan; an example row is fetched only for a check that found something.
//! The feature job's own checks are in [`crate::pipeline::checks`]; other commands pass theirs
//! to [`crate::io::tables::open_checked`].

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::functions::math::expr_fn::isnan;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{Expr, col, lit, when};
use datafusion::prelude::DataFrame;

use crate::error::{BadInput, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The job cannot produce correct features: stop.
    Fail,
    /// Suspicious but well defined: report and go on.
    Warn,
}

/// One predicate that selects offending rows of one input.
#[derive(Debug, Clone)]
pub struct Check {
    /// Short stable id, e.g. `clicks_above_impressions`.
    pub id: &'static str,
    pub column: &'static str,
    pub severity: Severity,
    /// Selects the rows that violate the check.
    pub violation: Expr,
    /// What the rows should look like.
    pub expected: &'static str,
}

/// The outcome of a check over a whole input.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub check: Check,
    pub violations: u64,
    pub example: Option<String>,
}

impl CheckResult {
    pub fn to_bad_input(&self, input: &str, uri: &str) -> BadInput {
        let mut bad = BadInput::new(
            input,
            uri,
            format!("{} row(s) fail check '{}'", self.violations, self.check.id),
        )
        .column(self.check.column)
        .expected(self.check.expected);
        if let Some(example) = &self.example {
            bad = bad.example(example.clone());
        }
        bad
    }
}

pub fn null_or_empty(column: &str, data_type: &DataType) -> Expr {
    let c = col(column);
    if is_string(data_type) {
        c.clone().is_null().or(c.eq(lit("")))
    } else {
        c.is_null()
    }
}

/// A FAIL check that `column` is neither null nor NaN nor infinite.
pub fn finite_check(id: &'static str, column: &'static str, expected: &'static str) -> Check {
    Check {
        id,
        column,
        severity: Severity::Fail,
        violation: col(column).is_null().or(not_finite(column)),
        expected,
    }
}

pub fn not_finite(column: &str) -> Expr {
    let c = col(column);
    isnan(c.clone())
        .or(c.clone().eq(lit(f64::INFINITY)))
        .or(c.eq(lit(f64::NEG_INFINITY)))
}

pub fn is_string(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string(values),
        _ => false,
    }
}

/// A key column must hold a non-empty value in every row.
pub fn key_check(column: &'static str, data_type: &DataType) -> Check {
    Check {
        id: match column {
            "query" => "query_null_or_empty",
            "product_id" => "product_id_null_or_empty",
            _ => "neighbour_null_or_empty",
        },
        column,
        severity: Severity::Fail,
        violation: null_or_empty(column, data_type),
        expected: "a non-empty value in every row",
    }
}

/// A WARN check for keys made only of white space: well defined (they are keys like any other,
/// and `normalize` turns them into ""), but seldom what an upstream job meant to write.
pub fn blank_check(column: &'static str, data_type: &DataType) -> Option<Check> {
    if !is_string(data_type) {
        return None;
    }
    let c = col(column);
    let trimmed = datafusion::functions::string::expr_fn::btrim(vec![c.clone(), lit(BLANKS)]);
    Some(Check {
        id: match column {
            "query" => "query_blank",
            "product_id" => "product_id_blank",
            _ => "neighbour_blank",
        },
        column,
        severity: Severity::Warn,
        violation: trimmed.eq(lit("")).and(c.not_eq(lit(""))),
        expected: "a key with a visible character (keys of only white space are kept as they are)",
    })
}

/// What [`blank_check`] counts as white space: ASCII white space, no-break and ideographic spaces.
const BLANKS: &str = " \t\n\r\u{0b}\u{0c}\u{a0}\u{3000}";

/// Counts rows and violations of every check in one scan of `df`, then fetches one example row
/// for each check that found something. Returns the row count and one result per check.
pub async fn evaluate(df: &DataFrame, checks: &[Check]) -> Result<(u64, Vec<CheckResult>)> {
    let (rows, results, _) = evaluate_with_totals(df, checks, &[]).await?;
    Ok((rows, results))
}

/// Integers of any width summed without overflow (up to 2^127).
pub fn wide_sum(column: &str) -> Expr {
    sum(datafusion::logical_expr::cast(
        col(column),
        DataType::Decimal128(38, 0),
    ))
}

/// [`evaluate`], and in the same scan the exact total of each integer column of `totals`.
pub async fn evaluate_with_totals(
    df: &DataFrame,
    checks: &[Check],
    totals: &[&str],
) -> Result<(u64, Vec<CheckResult>, Vec<i128>)> {
    let mut aggregates = vec![count(lit(1i64)).alias("__rows")];
    for (i, check) in checks.iter().enumerate() {
        aggregates.push(
            sum(when(check.violation.clone(), lit(1i64)).otherwise(lit(0i64))?)
                .alias(format!("__c{i}")),
        );
    }
    for (i, column) in totals.iter().enumerate() {
        aggregates.push(wide_sum(column).alias(format!("__t{i}")));
    }
    let batches = df.clone().aggregate(vec![], aggregates)?.collect().await?;
    let batch = batches.first().filter(|b| b.num_rows() == 1);
    let value = |i: usize| -> u64 {
        batch.map_or(0, |b| {
            let column = b.column(i).as_primitive::<Int64Type>();
            if column.is_null(0) {
                0
            } else {
                column.value(0).max(0) as u64
            }
        })
    };
    let rows = value(0);
    let sums: Vec<i128> = (0..totals.len())
        .map(|i| decimal(batch, 1 + checks.len() + i))
        .collect();
    let mut results = Vec::with_capacity(checks.len());
    for (i, check) in checks.iter().enumerate() {
        let violations = value(i + 1);
        let example = if violations > 0 {
            let rows = df
                .clone()
                .filter(check.violation.clone())?
                .limit(0, Some(1))?
                .collect()
                .await?;
            rows.iter()
                .find(|b| b.num_rows() > 0)
                .map(|b| render_row(b, 0))
                .transpose()?
        } else {
            None
        };
        results.push(CheckResult {
            check: check.clone(),
            violations,
            example,
        });
    }
    Ok((rows, results, sums))
}

/// The Decimal128 value in the first row of column `i` of `batch` (0 when absent or null).
pub fn decimal(batch: Option<&RecordBatch>, i: usize) -> i128 {
    use datafusion::arrow::datatypes::Decimal128Type;
    batch.map_or(0, |b| {
        let column = b.column(i).as_primitive::<Decimal128Type>();
        if column.is_null(0) {
            0
        } else {
            column.value(0)
        }
    })
}

/// Values longer than this are cut in messages (with their length), so that a huge key does not
/// make a huge error.
const SHOWN_CHARS: usize = 200;

/// Renders one row as `col=value, col=value`, strings quoted, for error messages.
pub fn render_row(batch: &RecordBatch, row: usize) -> Result<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut parts = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
        let mut value = formatter.value(row).to_string();
        if value.chars().count() > SHOWN_CHARS {
            let bytes = value.len();
            value = value.chars().take(SHOWN_CHARS).collect();
            value.push_str(&format!("… ({bytes} bytes)"));
        }
        if is_string(field.data_type()) && !column.is_null(row) {
            parts.push(format!("{}={:?}", field.name(), value));
        } else {
            parts.push(format!("{}={}", field.name(), value));
        }
    }
    Ok(parts.join(", "))
}
