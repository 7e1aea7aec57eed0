//! Stages 2-4 (neighbour sets, prior, blend) as one operator: the merge plan (`execution.plan =
//! "merge"`, the default).
//!
//! ```text
//! history ──┐
//!           ├─> PriorMergeExec: intern + group by query (index) ─> per query: merge C_q's lists
//! neighbours┘                                                     (prior), join own history, blend
//! ```
//!
//! The SQL stages compute the prior as a join of neighbour sets with history, a hash aggregation
//! by (query, product_id), a full outer join with history and a sort, all keyed by strings. Here
//! each key is interned once to an integer whose order is the string's, the history is grouped by
//! query, and each query's prior is a merge of at most k short sorted lists; rows come out already
//! in (query, product_id) order, so the job's sort disappears from the plan. The SQL files stay the
//! definition: a test compares both plans on every fixture and on synthetic data.
//!
//! The operator is a [`TableProvider`] (`features`) whose scan plans `history` and `neighbours`
//! in the session it runs in, so the same table works in `run`, in the SQL shell and per input
//! partition. On a Ballista cluster, [`codec`] carries the table to the scheduler and the operator
//! to the executors.
//!
//! In data-flow order: [`index`] reads both inputs ([`intern`] numbers the keys, [`sets`] builds
//! C_q, [`history`] keeps the history, [`repeats`] finds keys it repeats, [`spill`] sends both to
//! disk under a memory limit);
//! [`split`] cuts the queries into chunks, partitions and, when the history spilled, blocks;
//! `partition` runs one output partition; [`emit`] computes a query's rows; [`concat`] reads the
//! partitions as one sorted stream. On a cluster each partition is a task of its own over its
//! [`share`] of the queries ([`Split::Shares`]).

pub mod codec;
pub mod concat;
pub mod emit;
mod exec;
pub mod history;
pub mod index;
pub mod intern;
mod partition;
pub mod repeats;
pub mod sets;
pub mod share;
pub mod spill;
pub mod split;

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err, plan_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit};
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, SpillMetrics, Time,
};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, execute_stream,
};
use datafusion::prelude::SessionContext;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use exec::Built;
pub use exec::{MergeMetrics, PriorMergeExec, find_merges};

use super::blend::OUTPUT_COLUMNS;
use crate::config::{Blend, FeatureParams, PriorWeighting};

/// The parameters of stages 2-4 (everything but H's weights, which `history` applies).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergeParams {
    pub top_k: u32,
    pub min_score: f64,
    pub prior_weighting: PriorWeighting,
    pub gamma: f64,
    pub beta: f64,
    pub blend: Blend,
    /// kappa: the bayes blend counts it as evidence.
    pub smoothing: f64,
    pub pseudo_impressions: f64,
}

impl From<&FeatureParams> for MergeParams {
    fn from(p: &FeatureParams) -> Self {
        MergeParams {
            top_k: p.top_k,
            min_score: p.min_score,
            prior_weighting: p.prior_weighting,
            gamma: p.gamma,
            beta: p.beta,
            blend: p.blend,
            smoothing: p.smoothing,
            pseudo_impressions: p.pseudo_impressions,
        }
    }
}

impl MergeParams {
    pub fn confidence(&self) -> crate::formula::Confidence {
        crate::formula::Confidence {
            blend: self.blend,
            gamma: self.gamma,
            smoothing: self.smoothing,
            pseudo_impressions: self.pseudo_impressions,
        }
    }
}

/// How the operator's output partitions divide the queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Split {
    /// One index for all partitions, built once in this process by the first partition
    /// executed; partition i is the i-th contiguous range of the queries in sort order, so the
    /// partitions read in order are the sorted output. For one machine.
    #[default]
    Ranges,
    /// Every partition an independent task over its [`share`] of the queries, which reads both
    /// inputs and keeps only what its queries need; each partition sorted. For a cluster, whose
    /// tasks run in different processes (a child is executed once per partition).
    Shares,
}

/// The types of the output columns ([`OUTPUT_COLUMNS`], those of `sql/features.sql`); the key
/// columns are `Utf8` or `Utf8View`, as the inputs give them, and `product_id` may be of any
/// integer type instead (written as the input types it).
const TYPES: [DataType; 9] = [
    DataType::Utf8,
    DataType::Utf8,
    DataType::Float64,
    DataType::Float64,
    DataType::Float64,
    DataType::Float64,
    DataType::Int64,
    DataType::Int64,
    DataType::Int64,
];

fn check_schema(schema: &SchemaRef) -> Result<()> {
    let actual: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match f.data_type() {
            DataType::Utf8View => (f.name().as_str(), &DataType::Utf8),
            t if i == 1 && t.is_integer() => (f.name().as_str(), &DataType::Utf8),
            t => (f.name().as_str(), t),
        })
        .collect();
    let expected: Vec<(&str, &DataType)> = OUTPUT_COLUMNS.into_iter().zip(&TYPES).collect();
    if actual != expected {
        return plan_err!(
            "the merge plan writes {expected:?} but sql/features.sql now gives {actual:?}; \
             update src/pipeline/merge to match"
        );
    }
    Ok(())
}

/// The `features` table of the merge plan: scanning it plans `history` and `neighbours` and
/// puts a [`PriorMergeExec`] on top.
#[derive(Debug)]
pub struct MergedFeatures {
    schema: SchemaRef,
    history: LogicalPlan,
    neighbours: LogicalPlan,
    params: MergeParams,
    /// Output partitions of the operator, and how they divide the queries.
    partitions: usize,
    split: Split,
}

impl MergedFeatures {
    /// Reads `history` and `neighbours` from `ctx`; `schema` is the SQL `features` view's.
    /// `partitions`: the operator's output partitions (the session's target partitions, its
    /// cores, if absent), divided as `split` says.
    pub async fn new(
        ctx: &SessionContext,
        params: &FeatureParams,
        partitions: Option<usize>,
        split: Split,
        schema: SchemaRef,
    ) -> Result<Self> {
        check_schema(&schema)?;
        let history = ctx
            .table(super::history::STAGE.name)
            .await?
            .select_columns(&["query", "product_id", "impressions", "h"])?
            .into_unoptimized_plan();
        let neighbours = ctx
            .table(super::inputs::NEIGHBOURS)
            .await?
            .select_columns(&["query", "neighbour", "score"])?
            .into_unoptimized_plan();
        let partitions = partitions.unwrap_or_else(|| ctx.copied_config().target_partitions());
        Ok(MergedFeatures {
            schema,
            history,
            neighbours,
            params: params.into(),
            partitions: partitions.max(1),
            split,
        })
    }

    /// The table as a codec decodes it (on a Ballista scheduler).
    pub fn from_parts(
        schema: SchemaRef,
        history: LogicalPlan,
        neighbours: LogicalPlan,
        params: MergeParams,
        partitions: usize,
        split: Split,
    ) -> Result<Self> {
        check_schema(&schema)?;
        Ok(MergedFeatures {
            schema,
            history,
            neighbours,
            params,
            partitions: partitions.max(1),
            split,
        })
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    pub fn split(&self) -> Split {
        self.split
    }
}

#[async_trait]
impl TableProvider for MergedFeatures {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let history = state.create_physical_plan(&self.history).await?;
        let neighbours = state.create_physical_plan(&self.neighbours).await?;
        let exec: Arc<dyn ExecutionPlan> = Arc::new(PriorMergeExec::try_new(
            history,
            neighbours,
            self.params,
            self.partitions,
            self.split,
            Arc::clone(&self.schema),
        )?);
        match projection {
            Some(columns) if *columns != (0..self.schema.fields().len()).collect::<Vec<_>>() => {
                let exprs = columns.iter().map(|&i| {
                    let name = self.schema.field(i).name();
                    let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(name, i));
                    ProjectionExpr::new(column, name.clone())
                });
                Ok(Arc::new(ProjectionExec::try_new(exprs, exec)?))
            }
            _ => Ok(exec),
        }
    }
}

#[cfg(test)]
mod tests;
