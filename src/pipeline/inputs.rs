//! Stage 0, inputs: opens the two inputs, checks their schemas, and registers them as the typed
//! views every later stage reads.
//!
//! Registered tables:
//! - `engagement(query, product_id, impressions BIGINT, clicks BIGINT, adds BIGINT,
//!   purchases BIGINT, h DOUBLE)`: `h` is the input's precomputed history score or NULL; count
//!   columns absent from an input that carries `h` are 0. With `on_duplicate = "sum"` rows of one
//!   (query, product_id) are summed here.
//! - `neighbours(query, neighbour, score DOUBLE)`: as given (self-pairs and duplicates included).
//!
//! Registering reads only file listings and schemas (a session stays lazy); [`crate::pipeline::checks::check`]
//! scans the inputs.

use datafusion::arrow::datatypes::DataType;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::{Expr, cast, col, lit};
use datafusion::prelude::{SessionContext, ident};

use crate::config::{DuplicatePolicy, FeatureParams, InputSpec, JobConfig};
use crate::error::{BadInput, Result};
use crate::io::checks;
use crate::io::tables::{self, Input};
use crate::pipeline::checks as job_checks;

pub const ENGAGEMENT: &str = "engagement";

pub const NEIGHBOURS: &str = "neighbours";

const COUNT_COLUMNS: [&str; 3] = ["clicks", "adds", "purchases"];

/// Both inputs, registered.
#[derive(Clone)]
pub struct Inputs {
    pub engagement: Input,
    pub neighbours: Input,
}

/// Opens both inputs, checks their schemas and registers the typed `engagement` and `neighbours`
/// views on `ctx`. Reads file metadata only.
pub async fn register(ctx: &SessionContext, config: &JobConfig) -> Result<Inputs> {
    let (engagement_spec, neighbours_spec) = config.input_specs()?;
    let engagement = open_engagement(ctx, engagement_spec, &config.features).await?;
    let neighbours = open_neighbours(ctx, neighbours_spec).await?;
    check_compatible(&engagement, &neighbours)?;
    let inputs = Inputs {
        engagement,
        neighbours,
    };
    inputs.register_views(ctx)?;
    Ok(inputs)
}

impl Inputs {
    /// Registers the typed views under their names (`engagement`, `neighbours`).
    pub fn register_views(&self, ctx: &SessionContext) -> Result<()> {
        for input in [&self.engagement, &self.neighbours] {
            input.register_view(ctx)?;
        }
        Ok(())
    }
}

/// Opens the engagement input and checks its schema (file metadata only).
pub async fn open_engagement(
    ctx: &SessionContext,
    spec: &InputSpec,
    params: &FeatureParams,
) -> Result<Input> {
    type_engagement(
        outside_the_output(tables::open_table(ctx, ENGAGEMENT, spec).await?)?,
        params,
    )
}

/// Opens the neighbours input and checks its schema (file metadata only).
pub async fn open_neighbours(ctx: &SessionContext, spec: &InputSpec) -> Result<Input> {
    type_neighbours(outside_the_output(
        tables::open_table(ctx, NEIGHBOURS, spec).await?,
    )?)
}

/// What must hold between the two inputs for the job to join them.
pub fn check_compatible(engagement: &Input, neighbours: &Input) -> Result<()> {
    // Neighbour lists split by a column the engagement is not split by (e.g. market) would be
    // mixed together; refuse rather than guess.
    if let Some(extra) = neighbours
        .partitions
        .columns
        .iter()
        .find(|c| !engagement.partitions.columns.contains(c))
    {
        return Err(BadInput::new(
            NEIGHBOURS,
            &neighbours.uri,
            format!(
                "partitioned by '{extra}', which the engagement input is not partitioned by (it has [{}])",
                engagement.partitions.columns.join(", ")
            ),
        )
        .column(extra.clone())
        .expected("neighbour partition folders that the engagement input has too, or `partitioned = false` on neighbours")
        .into());
    }
    // Both sides of the neighbour join must be keyed the same way.
    if engagement.normalize && lang_column(engagement) != lang_column(neighbours) {
        let describe = |c: Option<&str>| c.map_or("none".to_string(), |c| format!("'{c}'"));
        return Err(BadInput::new(
            NEIGHBOURS,
            &neighbours.uri,
            format!(
                "normalized keys would differ from engagement's: engagement takes the language from column {}, neighbours from {}",
                describe(lang_column(engagement)),
                describe(lang_column(neighbours))
            ),
        )
        .column(lang_column(engagement).or(lang_column(neighbours)).unwrap_or("lang"))
        .expected(format!("the same language column ({}) in both inputs, or in neither", LANG_COLUMNS.join(", ")))
        .into());
    }
    Ok(())
}

/// Refuses partition folders named like a column of the job's output: the output carries the
/// partition columns beside its own.
fn outside_the_output(input: Input) -> Result<Input> {
    let output = &crate::pipeline::blend::OUTPUT_COLUMNS;
    match input
        .partitions
        .columns
        .iter()
        .find(|c| output.contains(&c.as_str()))
    {
        None => Ok(input),
        Some(clash) => Err(BadInput::new(
            input.role,
            &input.uri,
            "a partition folder name is also a column of the output",
        )
        .column(clash.clone())
        .expected(format!(
            "partition folder names distinct from the files' columns and from {}",
            output.join(", ")
        ))
        .into()),
    }
}

/// Checks engagement's schema and builds its typed view.
fn type_engagement(mut input: Input, params: &FeatureParams) -> Result<Input> {
    let query = input.require("query", checks::is_string, tables::STRING)?;
    let product = input.require(
        "product_id",
        |t| checks::is_string(t) || tables::is_integer(t),
        tables::KEY,
    )?;
    let impressions = input.require("impressions", tables::is_integer, tables::COUNT)?;
    let has_h = input
        .column_type("h", tables::is_number, tables::FLOAT)?
        .is_some();
    let mut present: Vec<(&'static str, DataType)> = vec![("impressions", impressions)];
    for name in COUNT_COLUMNS {
        match input.column_type(name, tables::is_integer, tables::COUNT)? {
            Some(data_type) => present.push((name, data_type)),
            None if has_h => {}
            None => {
                return Err(tables::missing(
                    &input,
                    name,
                    "clicks, adds and purchases counts, or a precomputed `h` column",
                ));
            }
        }
    }
    // Rows are summed when duplicates are allowed and when normalization merges variants.
    let summed = params.on_duplicate == DuplicatePolicy::Sum || input.normalize;
    if has_h && summed {
        return Err(BadInput::new(
            input.role,
            &input.uri,
            "a precomputed `h` cannot be summed over duplicate or normalized rows",
        )
        .column("h")
        .expected("counts instead of h, or features.on_duplicate = \"error\" and normalize = false")
        .into());
    }
    input.checks = job_checks::engagement_checks(&query, &product, &present, has_h);

    let count_or_zero = |name: &str| -> Expr {
        if present.iter().any(|(c, _)| *c == name) {
            cast(col(name), DataType::Int64)
        } else {
            lit(0i64)
        }
        .alias(name)
    };
    let h = if has_h {
        cast(col("h"), DataType::Float64)
    } else {
        lit(datafusion::common::ScalarValue::Float64(None))
    };
    let partition_columns: Vec<Expr> = input
        .partitions
        .columns
        .iter()
        .map(|c| ident(c.as_str()))
        .collect();
    let typed = input.raw.clone().select(
        partition_columns
            .iter()
            .cloned()
            .chain([
                query_key(&input, "query", &query),
                as_string("product_id", &product),
                count_or_zero("impressions"),
                count_or_zero("clicks"),
                count_or_zero("adds"),
                count_or_zero("purchases"),
                h.alias("h"),
            ])
            .collect::<Vec<Expr>>(),
    )?;
    input.summed_from = summed.then(|| typed.clone());
    input.typed = match summed {
        false => typed,
        true => typed.aggregate(
            partition_columns
                .into_iter()
                .chain([col("query"), col("product_id")])
                .collect(),
            ["impressions", "clicks", "adds", "purchases"]
                .into_iter()
                .map(|c| sum(col(c)).alias(c))
                .chain([datafusion::functions_aggregate::expr_fn::max(col("h")).alias("h")])
                .collect(),
        )?,
    };
    Ok(input)
}

/// A query-valued column as it goes into a typed view: normalized when the input asks for it,
/// with the row's `lang` (or `marketplace`) column as the language when the input has one.
fn query_key(input: &Input, name: &str, data_type: &DataType) -> Expr {
    if !input.normalize {
        return as_string(name, data_type);
    }
    let mut args = vec![col(name)];
    if let Some(lang) = lang_column(input) {
        args.push(ident(lang));
    }
    crate::udf::normalize_query_udf().call(args).alias(name)
}

/// The column that gives a row's language for normalization: the first text column among these
/// names (partition folders such as `market=JP/` count).
const LANG_COLUMNS: [&str; 4] = ["lang", "language", "marketplace", "market"];

fn lang_column(input: &Input) -> Option<&'static str> {
    let schema = input.raw.schema();
    LANG_COLUMNS.into_iter().find(|c| {
        schema
            .qualified_field_with_unqualified_name(c)
            .is_ok_and(|(_, f)| checks::is_string(f.data_type()))
    })
}

/// A key column as it goes into a typed view: dictionary-encoded strings (pandas categoricals) are
/// decoded so joins and sorts see plain strings.
fn as_string(name: &str, data_type: &DataType) -> Expr {
    match data_type {
        DataType::Dictionary(_, _) => cast(col(name), DataType::Utf8).alias(name),
        _ => col(name),
    }
}

/// Checks neighbours' schema and builds its typed view.
fn type_neighbours(mut input: Input) -> Result<Input> {
    let query = input.require("query", checks::is_string, tables::STRING)?;
    let neighbour = input.require("neighbour", checks::is_string, tables::STRING)?;
    input.require("score", tables::is_number, tables::FLOAT)?;
    input.checks = job_checks::neighbour_checks(&query, &neighbour);
    input.typed = input.raw.clone().select(
        input
            .partitions
            .columns
            .iter()
            .map(|c| ident(c.as_str()))
            .chain([
                query_key(&input, "query", &query),
                query_key(&input, "neighbour", &neighbour),
                cast(col("score"), DataType::Float64).alias("score"),
            ])
            .collect::<Vec<Expr>>(),
    )?;
    Ok(input)
}
