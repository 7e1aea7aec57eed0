//! The feature pipeline, one module per stage, in data-flow order:
//!
//! ```text
//! inputs ──> history (H) ──> neighbour_sets (C_q) ──> prior ──> blend (alpha, F) ──> sink
//! ```
//!
//! Every stage after `inputs` is a SQL file under `sql/`, planned against fixed table names with
//! its parameters bound as typed values (never spliced into the text), and registered as a view of
//! the same name. Later stages read earlier ones by name, so anything that queries a session by
//! stage name sees the exact definitions the job uses.

pub mod blend;
pub mod checks;
pub mod history;
pub mod inputs;
pub mod merge;
pub mod neighbour_sets;
pub mod prior;

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::common::ScalarValue;
use datafusion::prelude::{DataFrame, SessionContext};

use datafusion::prelude::{ident, lit};

use crate::config::{ExecutionConfig, FeatureParams, PlanKind};
use crate::error::Result;
use crate::pipeline::inputs::{ENGAGEMENT, Inputs, NEIGHBOURS};

/// A SQL stage: its view name, its SQL text and the parameters it binds.
#[derive(Clone, Copy)]
pub struct Stage {
    pub name: &'static str,
    pub sql: &'static str,
    pub params: fn(&FeatureParams) -> Vec<(&'static str, ScalarValue)>,
}

/// The SQL stages in dependency order.
pub const STAGES: [Stage; 4] = [
    history::STAGE,
    neighbour_sets::STAGE,
    prior::STAGE,
    blend::STAGE,
];

/// Looks a stage up by view name.
pub fn stage(name: &str) -> Option<&'static Stage> {
    STAGES.iter().find(|s| s.name == name)
}

impl Stage {
    /// Plans this stage against the tables registered on `ctx` and binds its parameters.
    pub async fn plan(&self, ctx: &SessionContext, params: &FeatureParams) -> Result<DataFrame> {
        Ok(ctx
            .sql(self.sql)
            .await?
            .with_param_values((self.params)(params))?)
    }
}

/// What registering the stages did, for the run summary.
#[derive(Debug, Clone, Default)]
pub struct StageTimings {
    /// Stages computed eagerly while registering, with their row counts and wall time.
    pub materialized: Vec<(&'static str, u64, Duration)>,
}

/// Registers every stage as a view on `ctx` (inputs must be registered already). With the merge
/// plan, `features` is then replaced by the [`merge::MergedFeatures`] table, which has the SQL
/// view's schema and rows (the SQL of the other stages stays registered and readable).
///
/// Stages named in `materialize` are computed into memory as soon as they are planned, so later
/// stages read the result instead of recomputing it; used by `run` for `neighbour_sets`, which is
/// small (at most k rows per query) and read twice by the last stages. Everything else stays lazy.
/// `partitions`: the merge plan's output partitions (see [`ExecutionConfig::partitions`]) and
/// how they divide the queries.
pub async fn register_stages(
    ctx: &SessionContext,
    params: &FeatureParams,
    plan: PlanKind,
    (partitions, split): (Option<usize>, merge::Split),
    materialize: &[&str],
) -> Result<StageTimings> {
    let mut timings = StageTimings::default();
    for stage in &STAGES {
        if stage.name == blend::STAGE.name && plan == PlanKind::Merge {
            let sql = stage.plan(ctx, params).await?;
            let schema = Arc::new(sql.schema().as_arrow().clone());
            let merged = merge::MergedFeatures::new(ctx, params, partitions, split, schema).await?;
            ctx.register_table(stage.name, Arc::new(merged))?;
            continue;
        }
        let mut df = stage.plan(ctx, params).await?;
        if materialize.contains(&stage.name) {
            let start = Instant::now();
            df = df.cache().await?;
            let rows = df.clone().count().await? as u64;
            timings
                .materialized
                .push((stage.name, rows, start.elapsed()));
        }
        ctx.register_table(stage.name, df.into_view())?;
    }
    Ok(timings)
}

/// Registers every stage as a view on `ctx` (which has the inputs registered) for the whole job,
/// as `run` computes it: directly when the engagement input is not partitioned; otherwise each
/// slice ([`slices`]) gets its own stages and the view on `ctx` is their union, with the
/// partition columns appended. Nothing is computed except the stages named in `materialize`.
/// `new_session` makes each slice's session (see [`slices`]).
pub async fn register_job_views(
    ctx: &SessionContext,
    inputs: &Inputs,
    execution: &ExecutionConfig,
    params: &FeatureParams,
    materialize: &[&str],
    new_session: NewSession<'_>,
) -> Result<StageTimings> {
    let slices = slices(ctx, inputs, new_session)?;
    let partitions = merge_partitions(execution);
    if let [only] = slices.as_slice()
        && only.partition.is_empty()
    {
        return register_stages(ctx, params, execution.plan, partitions, materialize).await;
    }
    let mut timings = StageTimings::default();
    for slice in &slices {
        let slice_timings =
            register_stages(&slice.ctx, params, execution.plan, partitions, materialize).await?;
        timings.materialized.extend(slice_timings.materialized);
    }
    for stage in &STAGES {
        let mut union: Option<DataFrame> = None;
        for slice in &slices {
            let part = slice.with_partition_columns(slice.ctx.table(stage.name).await?)?;
            union = Some(match union {
                None => part,
                Some(all) => all.union(part)?,
            });
        }
        let union = union.expect("a partitioned input has at least one partition");
        ctx.register_table(stage.name, union.into_view())?;
    }
    Ok(timings)
}

/// The merge plan's output partitions for `execution` (see [`ExecutionConfig::partitions`]), and
/// how they divide the queries: sorted ranges of one index locally, independent shares (tasks
/// of their own) on a Ballista cluster.
pub fn merge_partitions(execution: &ExecutionConfig) -> (Option<usize>, merge::Split) {
    match execution.cluster {
        Some(_) => (execution.partitions, merge::Split::Shares),
        None => (execution.partitions, merge::Split::Ranges),
    }
}

/// One independent part of the job: a session whose `engagement` and `neighbours` views hold one
/// combination of the engagement input's partition values (`partition`), or everything when the
/// input is not partitioned. The stages run in it unchanged; their SQL never sees partitions.
pub struct Slice {
    pub ctx: SessionContext,
    /// (column, value) pairs identifying the slice; empty for an unpartitioned input.
    pub partition: Vec<(String, String)>,
}

impl Slice {
    /// Appends the slice's partition values as literal columns to a stage's output.
    pub fn with_partition_columns(&self, df: DataFrame) -> Result<DataFrame> {
        if self.partition.is_empty() {
            return Ok(df);
        }
        let mut columns: Vec<_> = df
            .schema()
            .columns()
            .into_iter()
            .map(datafusion::prelude::Expr::Column)
            .collect();
        columns.extend(self.partition.iter().map(|(k, v)| lit(v.as_str()).alias(k)));
        Ok(df.select(columns)?)
    }
}

/// Selects one partition's rows. DataFusion turns `column = 'value'` on a partition column into
/// the folder prefix `column=value/` to list, without escaping the value, so a value that was
/// escaped in its folder name (`a%3Ab` for `a:b`, as Spark writes it) would list nothing. Such
/// values are compared with `IS NOT DISTINCT FROM` instead (the same for partition values, which
/// are never null), which DataFusion evaluates on the decoded values of every listed file.
fn partition_filter(column: &str, value: &str) -> datafusion::prelude::Expr {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        ident(column).eq(lit(value))
    } else {
        datafusion::logical_expr::binary_expr(
            ident(column),
            datafusion::logical_expr::Operator::IsNotDistinctFrom,
            lit(value),
        )
    }
}

/// Makes an empty session like the job's, on the job's runtime (`crate::session` knows how; the
/// pipeline only asks).
pub type NewSession<'a> = &'a dyn Fn() -> Result<SessionContext>;

/// Splits the job by the engagement input's partition folders (e.g. `market=US/`): each slice gets
/// its own session from `new_session` (sharing `ctx`'s runtime) with the partition's engagement
/// rows, and the neighbour rows of the same partition when the neighbours input is partitioned by
/// the same column, all of them otherwise. Without partitions the only slice is `ctx` itself.
pub fn slices(
    ctx: &SessionContext,
    inputs: &Inputs,
    new_session: NewSession<'_>,
) -> Result<Vec<Slice>> {
    let partitions = &inputs.engagement.partitions;
    if partitions.columns.is_empty() {
        return Ok(vec![Slice {
            ctx: ctx.clone(),
            partition: Vec::new(),
        }]);
    }
    let mut slices = Vec::with_capacity(partitions.values.len());
    for values in &partitions.values {
        let partition: Vec<(String, String)> = partitions
            .columns
            .iter()
            .cloned()
            .zip(values.iter().cloned())
            .collect();
        let only = |df: DataFrame, columns: &[String]| -> Result<DataFrame> {
            let mut df = df;
            for (k, v) in partition.iter().filter(|(k, _)| columns.contains(k)) {
                df = df.filter(partition_filter(k, v))?;
            }
            let keep: Vec<_> = df
                .schema()
                .fields()
                .iter()
                .filter(|f| !columns.contains(f.name()))
                .map(|f| ident(f.name().as_str()))
                .collect();
            Ok(df.select(keep)?)
        };
        let slice_ctx = new_session()?;
        let engagement = only(inputs.engagement.typed.clone(), &partitions.columns)?;
        let neighbours = only(
            inputs.neighbours.typed.clone(),
            &inputs.neighbours.partitions.columns,
        )?;
        slice_ctx.register_table(ENGAGEMENT, engagement.into_view())?;
        slice_ctx.register_table(NEIGHBOURS, neighbours.into_view())?;
        slices.push(Slice {
            ctx: slice_ctx,
            partition,
        });
    }
    Ok(slices)
}
