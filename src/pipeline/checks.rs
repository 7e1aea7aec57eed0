//! The feature job's checks on its inputs: what the job relies on, stated once.
//!
//! `run` evaluates them before computing anything (FAIL stops the job with exit code 2, WARN goes
//! to the summary). They are data, not code paths, so any command that reports on inputs lists the
//! same checks. All row checks of one input are counted in a single scan ([`crate::io::checks`]),
//! with the sums that could overflow and the duplicate keys.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::prelude::ident;

use crate::config::{DuplicatePolicy, FeatureParams};
use crate::error::{BadInput, Error, Result};
use crate::io::checks::{self, Check, CheckResult, Severity, blank_check, key_check, not_finite};
use crate::io::tables::{self, Input};
use crate::pipeline::inputs::{ENGAGEMENT, Inputs, NEIGHBOURS};

/// Checks of the engagement input; `counts` lists the count columns it actually has, with their
/// types.
pub fn engagement_checks(
    query_type: &DataType,
    product_type: &DataType,
    counts: &[(&'static str, DataType)],
    has_h: bool,
) -> Vec<Check> {
    let mut checks = vec![
        key_check("query", query_type),
        key_check("product_id", product_type),
    ];
    checks.extend(blank_check("query", query_type));
    checks.extend(blank_check("product_id", product_type));
    for (column, data_type) in counts {
        let column = *column;
        if *data_type == DataType::UInt64 {
            // the job counts in BIGINT: a larger unsigned count cannot be represented
            checks.push(Check {
                id: match column {
                    "impressions" => "impressions_above_bigint",
                    "clicks" => "clicks_above_bigint",
                    "adds" => "adds_above_bigint",
                    _ => "purchases_above_bigint",
                },
                column,
                severity: Severity::Fail,
                violation: col(column).gt(lit(i64::MAX as u64)),
                expected: "a count <= 9223372036854775807 (the job counts in 64-bit signed integers)",
            });
        }
        checks.push(Check {
            id: match column {
                "impressions" => "impressions_null_or_negative",
                "clicks" => "clicks_null_or_negative",
                "adds" => "adds_null_or_negative",
                _ => "purchases_null_or_negative",
            },
            column,
            severity: Severity::Fail,
            violation: col(column).is_null().or(col(column).lt(lit(0i64))),
            expected: "a count >= 0",
        });
    }
    let has = |name: &str| counts.iter().any(|(c, _)| *c == name);
    if has("clicks") {
        checks.push(Check {
            id: "clicks_above_impressions",
            column: "clicks",
            severity: Severity::Fail,
            violation: col("clicks").gt(col("impressions")),
            expected: "clicks <= impressions",
        });
    }
    if has("purchases") && has("clicks") {
        checks.push(Check {
            id: "purchases_above_clicks",
            column: "purchases",
            severity: Severity::Warn,
            violation: col("purchases").gt(col("clicks")),
            expected: "purchases <= clicks (purchases without a click are possible but rare)",
        });
    }
    if has_h {
        checks.push(Check {
            id: "h_null_nan_inf_or_negative",
            column: "h",
            severity: Severity::Fail,
            violation: col("h")
                .is_null()
                .or(not_finite("h"))
                .or(col("h").lt(lit(0.0))),
            expected: "a finite history score >= 0",
        });
    }
    checks
}

/// Checks of the neighbours input.
pub fn neighbour_checks(query_type: &DataType, neighbour_type: &DataType) -> Vec<Check> {
    let mut checks = vec![
        key_check("query", query_type),
        key_check("neighbour", neighbour_type),
        Check {
            id: "score_null_nan_inf_or_negative",
            column: "score",
            severity: Severity::Fail,
            violation: col("score")
                .is_null()
                .or(not_finite("score"))
                .or(col("score").lt(lit(0.0))),
            expected: "a finite similarity score >= 0",
        },
        Check {
            id: "self_pairs",
            column: "neighbour",
            severity: Severity::Warn,
            violation: col("query").eq(col("neighbour")),
            expected: "neighbour != query (self-pairs are dropped)",
        },
    ];
    checks.extend(blank_check("query", query_type));
    checks.extend(blank_check("neighbour", neighbour_type));
    checks
}

/// What [`check`] found: row counts and the warnings that did not stop the job.
#[derive(Debug, Clone, Default)]
pub struct InputReport {
    pub engagement_rows: u64,
    pub neighbour_rows: u64,
    /// Distinct (query, product_id) pairs, i.e. rows of the history stage (0 with
    /// [`HistoryKeys::Merge`]: the operator counts them).
    pub engagement_pairs: u64,
    pub warnings: Vec<(String, CheckResult)>,
}

/// Who rejects repeated engagement keys (under `on_duplicate = "error"`) and counts the history's
/// rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKeys {
    /// An aggregation of the engagement input by key, here, before the job.
    Aggregate,
    /// The merge operator, which sorts the history by key anyway: it fails with
    /// [`crate::pipeline::merge::repeats::RepeatedKeys`] before it emits a row ([`repeated_keys`]
    /// turns that into the same error), and its metrics count the rows. For one process over
    /// an input without partition folders or normalization (the keys it sees are then the
    /// input's).
    Merge,
}

/// Scans both inputs once each for every row check, plus, with [`HistoryKeys::Aggregate`], one
/// aggregation for duplicate keys. The first FAIL becomes a [`BadInput`] naming the input, column
/// and an example row; WARNs are returned. `validate` reports the same checks without stopping.
pub async fn check(
    inputs: &Inputs,
    params: &FeatureParams,
    keys: HistoryKeys,
) -> Result<InputReport> {
    let mut report = InputReport::default();
    for input in [&inputs.engagement, &inputs.neighbours] {
        let scan = scan_checks(input).await?;
        if scan.rows == 0 {
            return Err(tables::no_rows(input).into());
        }
        for result in scan.results.iter().filter(|r| r.violations > 0) {
            match result.check.severity {
                Severity::Fail => return Err(result.to_bad_input(input.role, &input.uri).into()),
                Severity::Warn => report
                    .warnings
                    .push((input.role.to_string(), result.clone())),
            }
        }
        if let Some(overflow) = sum_overflow(input, &scan).await? {
            return Err(overflow.to_bad_input(input).into());
        }
        if input.role == ENGAGEMENT {
            report.engagement_rows = scan.rows;
        } else {
            report.neighbour_rows = scan.rows;
        }
    }
    if keys == HistoryKeys::Merge {
        return Ok(report);
    }
    let duplicates = duplicate_keys(&inputs.engagement).await?;
    if duplicates.duplicated > 0 && params.on_duplicate == DuplicatePolicy::Error {
        return Err(duplicates
            .to_bad_input(inputs.engagement.role, &inputs.engagement.uri)
            .into());
    }
    report.engagement_pairs = duplicates.keys;
    if inputs.engagement.normalize {
        // variants merged: history has one row per normalized key, not per raw key
        report.engagement_pairs = inputs.engagement.typed.clone().count().await? as u64;
    }
    Ok(report)
}

/// The row checks of one input, counted in one scan.
#[derive(Debug, Clone)]
pub struct CheckScan {
    pub rows: u64,
    pub results: Vec<CheckResult>,
    /// For an input whose counts are summed per key: each count column's exact total.
    pub totals: Vec<(&'static str, i128)>,
}

/// Count columns that are summed, and present in the input's files.
fn summed_counts(input: &Input) -> Vec<&'static str> {
    if input.summed_from.is_none() {
        return Vec::new();
    }
    let schema = input.raw.schema();
    ["impressions", "clicks", "adds", "purchases"]
        .into_iter()
        .filter(|c| schema.qualified_field_with_unqualified_name(c).is_ok())
        .collect()
}

/// Runs an input's row checks ([`Input::checks`]) in one scan.
pub async fn scan_checks(input: &Input) -> Result<CheckScan> {
    let columns = summed_counts(input);
    let (rows, results, totals) = checks::evaluate_with_totals(&input.raw, &input.checks, &columns)
        .await
        .map_err(|e| unreadable_rows(input, e))?;
    Ok(CheckScan {
        rows,
        results,
        totals: columns.into_iter().zip(totals).collect(),
    })
}

/// A count whose sum over one key's rows does not fit the job's 64-bit integers.
#[derive(Debug, Clone)]
pub struct SumOverflow {
    pub column: &'static str,
    /// Keys whose sum is too large.
    pub keys: u64,
    /// The first such key (by key order) with its sum.
    pub example: Option<String>,
}

impl SumOverflow {
    pub const ID: &'static str = "sum_above_bigint";
    pub const EXPECTED: &'static str =
        "sums of each key's rows <= 9223372036854775807 (the job counts in 64-bit signed integers)";

    pub fn to_bad_input(&self, input: &Input) -> BadInput {
        let mut bad = BadInput::new(
            input.role,
            &input.uri,
            format!(
                "{} key(s) sum to more {} than a 64-bit count holds (check '{}')",
                self.keys,
                self.column,
                Self::ID
            ),
        )
        .column(self.column)
        .expected(Self::EXPECTED);
        if let Some(example) = &self.example {
            bad = bad.example(example.clone());
        }
        bad
    }
}

/// The first count column whose per-key sums overflow, when the scan's totals say one might: a
/// column whose total fits cannot overflow for any key, so the per-key aggregation runs only
/// for a column whose total does not (never, for real counts).
pub async fn sum_overflow(input: &Input, scan: &CheckScan) -> Result<Option<SumOverflow>> {
    let Some(rows) = &input.summed_from else {
        return Ok(None);
    };
    let key: Vec<Expr> = input
        .partitions
        .columns
        .iter()
        .map(|c| ident(c.as_str()))
        .chain([col("query"), col("product_id")])
        .collect();
    for &(column, total) in &scan.totals {
        if total <= i64::MAX as i128 {
            continue;
        }
        let too_large = lit(datafusion::common::ScalarValue::Decimal128(
            Some(i64::MAX as i128),
            38,
            0,
        ));
        let sums = rows
            .clone()
            .aggregate(key.clone(), vec![checks::wide_sum(column).alias(column)])?
            .filter(col(column).gt(too_large))?;
        let keys = sums.clone().count().await? as u64;
        if keys == 0 {
            continue;
        }
        let first = sums
            .sort(
                key.iter()
                    .map(|k| k.clone().sort(true, true))
                    .collect::<Vec<_>>(),
            )?
            .limit(0, Some(1))?
            .collect()
            .await?;
        let example = first
            .iter()
            .find(|b| b.num_rows() > 0)
            .map(|b| checks::render_row(b, 0))
            .transpose()?;
        return Ok(Some(SumOverflow {
            column,
            keys,
            example,
        }));
    }
    Ok(None)
}

/// Scanning is where unparseable rows, ragged CSV lines, corrupt Parquet or unreachable objects
/// show up: those are the input's fault (exit 2) and are reported with its name. Planning and
/// internal errors stay internal.
fn unreadable_rows(input: &Input, e: Error) -> Error {
    use datafusion::error::DataFusionError as E;
    match e {
        Error::DataFusion(df)
            if matches!(
                df.find_root(),
                E::ArrowError(..)
                    | E::ParquetError(..)
                    | E::ObjectStore(..)
                    | E::IoError(..)
                    | E::External(..)
            ) =>
        {
            BadInput::new(
                input.role,
                &input.uri,
                format!("cannot read the rows: {}", df.find_root()),
            )
            .expected("every row readable with the columns and types of the input's schema")
            .into()
        }
        other => other,
    }
}

/// What `on_duplicate = "error"` expects of engagement keys.
pub const DUPLICATES_EXPECTED: &str = "one row per (query, product_id); set features.on_duplicate = \"sum\" (--on-duplicate sum) to add them up";

/// Repeated keys of an input: (partition, query, product_id) for engagement, (partition, query,
/// neighbour) for neighbours.
#[derive(Debug, Clone, Default)]
pub struct DuplicateKeys {
    /// The key columns, e.g. `query, product_id`.
    pub columns: String,
    /// Distinct keys.
    pub keys: u64,
    /// Keys with more than one row.
    pub duplicated: u64,
    /// The first duplicated key (by key order) with its row count `n`.
    pub example: Option<String>,
}

impl DuplicateKeys {
    /// The job's error for duplicated keys of input `role` at `uri` (engagement keys under
    /// `on_duplicate = "error"`).
    pub fn to_bad_input(&self, role: &str, uri: &str) -> BadInput {
        let mut bad = BadInput::new(
            role,
            uri,
            format!(
                "{} ({}) key(s) have more than one row",
                self.duplicated, self.columns
            ),
        )
        .column(self.columns.clone())
        .expected(DUPLICATES_EXPECTED);
        if let Some(example) = &self.example {
            bad = bad.example(example.clone());
        }
        bad
    }
}

/// Counts distinct keys of an input (see [`DuplicateKeys`]) and finds an example of a repeated one.
pub async fn duplicate_keys(input: &Input) -> Result<DuplicateKeys> {
    let second = if input.role == NEIGHBOURS {
        "neighbour"
    } else {
        "product_id"
    };
    let key: Vec<Expr> = input
        .partitions
        .columns
        .iter()
        .map(|c| ident(c.as_str()))
        .chain([col("query"), col(second)])
        .collect();
    let keys = input
        .raw
        .clone()
        .aggregate(key, vec![count(lit(1i64)).alias("n")])?;
    let summary = keys
        .clone()
        .aggregate(
            vec![],
            vec![
                count(lit(1i64)).alias("pairs"),
                sum(
                    datafusion::logical_expr::when(col("n").gt(lit(1i64)), lit(1i64))
                        .otherwise(lit(0i64))?,
                )
                .alias("duplicated"),
            ],
        )?
        .collect()
        .await
        .map_err(|e| unreadable_rows(input, e.into()))?;
    let mut found = DuplicateKeys {
        columns: format!("query, {second}"),
        keys: scalar_u64(&summary, 0),
        duplicated: scalar_u64(&summary, 1),
        example: None,
    };
    if found.duplicated > 0 {
        let example = keys
            .filter(col("n").gt(lit(1i64)))?
            .sort(vec![
                col("query").sort(true, true),
                col(second).sort(true, true),
            ])?
            .limit(0, Some(1))?
            .collect()
            .await?;
        if let Some(batch) = example.iter().find(|b| b.num_rows() > 0) {
            found.example = Some(checks::render_row(batch, 0)?);
        }
    }
    Ok(found)
}

/// `e`, or the bad input it stands for when it is the merge operator's
/// [`crate::pipeline::merge::repeats::RepeatedKeys`] ([`HistoryKeys::Merge`]): the error the
/// aggregation would have given, with the count of repeated keys and the first of them.
pub fn repeated_keys(e: Error, engagement_uri: &str) -> Error {
    use crate::pipeline::merge::repeats::RepeatedKeys;
    let Error::DataFusion(df) = &e else {
        return e;
    };
    match RepeatedKeys::of(df) {
        Some(found) => DuplicateKeys {
            columns: "query, product_id".into(),
            keys: 0,
            duplicated: found.keys,
            example: Some(found.example.clone()),
        }
        .to_bad_input(ENGAGEMENT, engagement_uri)
        .into(),
        None => e,
    }
}

fn scalar_u64(batches: &[RecordBatch], column: usize) -> u64 {
    batches.iter().find(|b| b.num_rows() > 0).map_or(0, |b| {
        let c = b.column(column).as_primitive::<Int64Type>();
        if c.is_null(0) {
            0
        } else {
            c.value(0).max(0) as u64
        }
    })
}
