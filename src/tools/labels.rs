//! Labelled (query, product) pairs, for ranker training (`export lightgbm`) and offline evaluation
//! (`evaluate features`): an explicit integer `label` column, or a grade derived from engagement
//! counts of a later period — 3 purchased, 2 added to cart, 1 clicked, 0 shown only.
//!
//! Rows are checked like the job's inputs (same [`checks`] machinery, FAIL stops with the input,
//! column and an example row) and must have one row per (query, product_id).

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{Expr, cast, col, lit, when};
use datafusion::prelude::SessionContext;

use crate::config::InputSpec;
use crate::error::Result;
use crate::io::checks::{self, Check, Severity};
use crate::io::tables::{self, Input};

/// Where a label comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSource {
    /// The input's own `label` column.
    Column,
    /// Graded from `clicks`, `adds` and `purchases`.
    Engagement,
}

/// An opened, checked labelled input. `input.typed` has `query` and `product_id` as strings, an
/// Int64 `label` and the numeric `extra` columns.
pub struct Labels {
    pub input: Input,
    pub source: LabelSource,
    /// Numeric columns besides the keys, the label and (for engagement) the counts: features
    /// `export lightgbm --features` may take from the labelled input.
    pub extra: Vec<String>,
    pub max_label: i64,
    pub rows: u64,
}

/// The largest label: its gain 2^31 - 1 is the largest that LightGBM's label_gain and the
/// evaluation's exponential gain represent exactly.
pub const MAX_LABEL: i64 = 31;

/// Engagement columns that define a graded label.
const COUNT_COLUMNS: [&str; 4] = ["impressions", "clicks", "adds", "purchases"];

/// Opens `spec` as the labelled input named `role`, checks it and builds its typed view.
pub async fn open(ctx: &SessionContext, role: &'static str, spec: &InputSpec) -> Result<Labels> {
    let mut input = tables::open_table(ctx, role, spec).await?;
    let mut row_checks = input.require_keys()?;
    let explicit = input.column_type("label", tables::is_number, "a numeric label column")?;
    let (source, label) = match explicit {
        Some(_) => {
            row_checks.push(Check {
                id: "label_null_negative_or_fractional",
                column: "label",
                severity: Severity::Fail,
                violation: col("label")
                    .is_null()
                    .or(checks::not_finite("label"))
                    .or(col("label").lt(lit(0)))
                    .or(cast(col("label"), DataType::Float64)
                        .not_eq(datafusion::functions::math::expr_fn::floor(cast(
                            col("label"),
                            DataType::Float64,
                        )))),
                expected: "an integer relevance grade >= 0 (LightGBM's lambdarank needs integer labels)",
            });
            row_checks.push(Check {
                id: "label_above_31",
                column: "label",
                severity: Severity::Fail,
                violation: col("label").gt(lit(MAX_LABEL)),
                expected: "a grade of at most 31: gains are 2^label - 1 (LightGBM's default label_gain covers 0..30)",
            });
            (LabelSource::Column, cast(col("label"), DataType::Int64))
        }
        None => {
            for c in ["clicks", "adds", "purchases"] {
                input.require(
                    c,
                    tables::is_integer,
                    "a `label` column, or clicks, adds and purchases counts to grade",
                )?;
            }
            for c in ["clicks", "adds", "purchases"] {
                row_checks.push(Check {
                    id: match c {
                        "clicks" => "clicks_null_or_negative",
                        "adds" => "adds_null_or_negative",
                        _ => "purchases_null_or_negative",
                    },
                    column: c,
                    severity: Severity::Fail,
                    violation: col(c).is_null().or(col(c).lt(lit(0i64))),
                    expected: "a count >= 0",
                });
            }
            let graded = when(col("purchases").gt(lit(0i64)), lit(3i64))
                .when(col("adds").gt(lit(0i64)), lit(2i64))
                .when(col("clicks").gt(lit(0i64)), lit(1i64))
                .otherwise(lit(0i64))?;
            (LabelSource::Engagement, graded)
        }
    };
    let extra: Vec<String> = input
        .raw
        .schema()
        .fields()
        .iter()
        .filter(|f| tables::is_number(f.data_type()))
        .map(|f| f.name().clone())
        .filter(|n| n != "label" && n != "product_id")
        .filter(|n| source == LabelSource::Column || !COUNT_COLUMNS.contains(&n.as_str()))
        .collect();
    input.checks = row_checks;
    let (rows, _) = tables::enforce(&input, &input.raw, &input.checks).await?;
    let duplicates = crate::pipeline::checks::duplicate_keys(&input).await?;
    if duplicates.duplicated > 0 {
        let mut bad = duplicates.to_bad_input(input.role, &input.uri);
        bad.expected = Some("one label per (query, product_id)".into());
        return Err(bad.into());
    }

    let mut columns: Vec<Expr> = vec![
        cast(col("query"), DataType::Utf8).alias("query"),
        cast(col("product_id"), DataType::Utf8).alias("product_id"),
        label.alias("label"),
    ];
    columns.extend(extra.iter().map(|c| datafusion::prelude::ident(c.as_str())));
    input.typed = input.raw.clone().select(columns)?;
    let max = input
        .typed
        .clone()
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::max(col("label")).alias("m")],
        )?
        .collect()
        .await?;
    let max_label = max
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            use datafusion::arrow::array::{Array, AsArray};
            let c = b
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            (!c.is_null(0)).then(|| c.value(0))
        })
        .unwrap_or(0);
    Ok(Labels {
        input,
        source,
        extra,
        max_label,
        rows,
    })
}
