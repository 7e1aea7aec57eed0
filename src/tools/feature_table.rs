//! Reading back a feature table written by `run` (Parquet, CSV or NDJSON, local or object store),
//! for the commands that consume it: `export lightgbm` and `evaluate features`.

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{Expr, cast, col};
use datafusion::prelude::{SessionContext, ident};

use crate::config::InputSpec;
use crate::error::{BadInput, Result};
use crate::io::tables::{self, Input};

/// The engine's feature columns, in the order `run` writes them: its output after the keys.
pub const ENGINE_FEATURES: &[&str] = crate::pipeline::blend::OUTPUT_COLUMNS.split_at(2).1;

/// An opened feature table: `input.typed` has `query` and `product_id` as strings and every
/// numeric column (`numeric`) as it is.
pub struct FeatureTable {
    pub input: Input,
    pub numeric: Vec<String>,
}

/// Opens and checks a feature table: keys present and non-empty, one row per (query, product_id).
pub async fn open(
    ctx: &SessionContext,
    role: &'static str,
    spec: &InputSpec,
) -> Result<FeatureTable> {
    let mut input = tables::open_table(ctx, role, spec).await?;
    input.checks = input.require_keys()?;
    let numeric: Vec<String> = input
        .raw
        .schema()
        .fields()
        .iter()
        .filter(|f| tables::is_number(f.data_type()) && f.name() != "product_id")
        .map(|f| f.name().clone())
        .collect();
    tables::enforce(&input, &input.raw, &input.checks).await?;
    let duplicates = crate::pipeline::checks::duplicate_keys(&input).await?;
    if duplicates.duplicated > 0 {
        let mut bad: BadInput = duplicates.to_bad_input(input.role, &input.uri);
        bad.expected = Some(
            "one row per (query, product_id); a table from a partitioned run has one per partition: \
             select one partition (e.g. its folder) as the feature table"
                .into(),
        );
        return Err(bad.into());
    }
    let mut columns: Vec<Expr> = vec![
        cast(col("query"), DataType::Utf8).alias("query"),
        cast(col("product_id"), DataType::Utf8).alias("product_id"),
    ];
    columns.extend(numeric.iter().map(|c| ident(c.as_str())));
    input.typed = input.raw.clone().select(columns)?;
    Ok(FeatureTable { input, numeric })
}
