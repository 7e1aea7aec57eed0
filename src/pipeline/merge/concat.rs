//! One sorted stream from the merge's partitions without comparing a row.
//!
//! [`PriorMergeExec`]'s partitions are contiguous ranges of the queries in sort order
//! ([`super::split`]), each sorted: read one after the other they are the sorted output. DataFusion
//! does not know that, and puts a `SortPreservingMergeExec` (a k-way merge comparing every row's
//! keys) where a sorted stream is needed. [`concat_sorted_ranges`] replaces such a merge over the
//! operator (possibly through projections) by a [`ConcatRangesExec`], which reads the partitions
//! in order. Each partition computes on every core, so reading them in turn loses nothing.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use super::PriorMergeExec;

/// Replaces every `SortPreservingMergeExec` over a [`PriorMergeExec`] (directly or through
/// projections, which keep rows in place) by a [`ConcatRangesExec`] when the operator's order
/// satisfies the merge's.
pub fn concat_sorted_ranges(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(merge) = node.downcast_ref::<SortPreservingMergeExec>() else {
            return Ok(Transformed::no(node));
        };
        let input = merge.input();
        if merge.fetch().is_some()
            || !over_prior_merge(input)
            || !input
                .equivalence_properties()
                .ordering_satisfy(merge.expr().clone())?
        {
            return Ok(Transformed::no(node));
        }
        let concat: Arc<dyn ExecutionPlan> = Arc::new(ConcatRangesExec::new(Arc::clone(input)));
        Ok(Transformed::new(concat, true, TreeNodeRecursion::Continue))
    })
    .map(|t| t.data)
}

/// True when `plan` is a [`PriorMergeExec`], or projections over one.
fn over_prior_merge(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut node = plan;
    loop {
        if node.downcast_ref::<PriorMergeExec>().is_some() {
            return true;
        }
        match node.downcast_ref::<ProjectionExec>() {
            Some(projection) => node = projection.input(),
            None => return false,
        }
    }
}

/// The partitions of its input, one after the other, as one partition (see the module
/// documentation; only correct over range-partitioned input).
#[derive(Debug)]
pub struct ConcatRangesExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl ConcatRangesExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = PlanProperties::new(
            input.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(1),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        ConcatRangesExec {
            input,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for ConcatRangesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ConcatRangesExec: {} sorted query ranges in order",
            self.input.output_partitioning().partition_count()
        )
    }
}

impl ExecutionPlan for ConcatRangesExec {
    fn name(&self) -> &str {
        "ConcatRangesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[Arc<dyn ExecutionPlan>; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(ConcatRangesExec::new(input))),
            Err(_) => internal_err!("ConcatRangesExec has one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("ConcatRangesExec has one partition, not {}", partition + 1);
        }
        // every partition executed now (they share work set up on execution, such as the merge's
        // index), read one after the other
        let n = self.input.output_partitioning().partition_count();
        let streams = (0..n)
            .map(|i| self.input.execute(i, Arc::clone(&context)))
            .collect::<Result<Vec<_>>>()?;
        let streams = futures::stream::iter(streams).flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            streams,
        )))
    }
}
