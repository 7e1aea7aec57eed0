//! The merge operators' counters below a part's writer, reported with the part so that a
//! cluster run's summary can print what the tasks computed (on one machine the operator's own
//! metrics say it: see `job::summary`): the replication their split by query cost, and the
//! neighbour sets, which a cluster run would otherwise count in a job of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};

use super::WrittenPart;

/// The counters a merge operator keeps that its writer reports: the history rows it held (its
/// index) and the rows it read to pick them (on a cluster each task reads the whole history and
/// keeps what its share of the queries needs), and the rows of its queries' neighbour sets and
/// the queries that have one (a task's shares only: each query is in one share).
pub const HISTORY_HELD: &str = "history_rows";
pub const HISTORY_READ: &str = "history_rows_read";
pub const NEIGHBOUR_SET_ROWS: &str = "neighbour_set_rows";
pub const QUERIES_WITH_PRIOR: &str = "queries_with_prior";

/// One merge operator's counters, as its writer read them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorCounts {
    pub history_held: u64,
    pub history_read: u64,
    pub neighbour_set_rows: u64,
    pub queries_with_prior: u64,
}

impl OperatorCounts {
    /// Each counter's larger value: a task's counters only grow.
    fn max(self, other: OperatorCounts) -> OperatorCounts {
        OperatorCounts {
            history_held: self.history_held.max(other.history_held),
            history_read: self.history_read.max(other.history_read),
            neighbour_set_rows: self.neighbour_set_rows.max(other.neighbour_set_rows),
            queries_with_prior: self.queries_with_prior.max(other.queries_with_prior),
        }
    }
}

/// The counters of each merge operator below one writer (in plan order), as one of its parts
/// reported them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCounters {
    /// The plan instance (one task's): `<host>:<pid>:<n>`.
    pub plan: String,
    pub merges: Vec<OperatorCounts>,
}

impl MergeCounters {
    /// The counters of the merge operators in `plan` (none when it has none).
    pub(super) fn of(plan: &Arc<dyn ExecutionPlan>, id: String) -> Option<MergeCounters> {
        fn walk(plan: &Arc<dyn ExecutionPlan>, merges: &mut Vec<OperatorCounts>) {
            if let Some(metrics) = plan.metrics()
                && let Some(read) = metrics.sum_by_name(HISTORY_READ)
            {
                let value = |name| metrics.sum_by_name(name).map_or(0, |m| m.as_usize() as u64);
                merges.push(OperatorCounts {
                    history_held: value(HISTORY_HELD),
                    history_read: read.as_usize() as u64,
                    neighbour_set_rows: value(NEIGHBOUR_SET_ROWS),
                    queries_with_prior: value(QUERIES_WITH_PRIOR),
                });
            }
            for child in plan.children() {
                walk(child, merges);
            }
        }
        let mut merges = Vec::new();
        walk(plan, &mut merges);
        (!merges.is_empty()).then_some(MergeCounters { plan: id, merges })
    }
}

/// Each plan instance's complete counters: a task's last part has them (counters only grow), so
/// each instance counts with its largest. None when no writer reported any.
fn instances(parts: &[WrittenPart]) -> Option<BTreeMap<&str, Vec<OperatorCounts>>> {
    let mut instances: BTreeMap<&str, Vec<OperatorCounts>> = BTreeMap::new();
    for counters in parts.iter().filter_map(|p| p.counters.as_ref()) {
        let merges = instances.entry(&counters.plan).or_default();
        merges.resize(
            merges.len().max(counters.merges.len()),
            OperatorCounts::default(),
        );
        for (m, c) in merges.iter_mut().zip(&counters.merges) {
            *m = m.max(*c);
        }
    }
    (!instances.is_empty()).then_some(instances)
}

/// Over the parts of one run: the history rows its tasks held, summed, and the history's rows
/// (each merge operator's input once), when the writers reported them. Held over history is the
/// replication a split by query costs.
pub fn history_held(parts: &[WrittenPart]) -> Option<(u64, u64)> {
    let instances = instances(parts)?;
    let held = instances.values().flatten().map(|m| m.history_held).sum();
    // every task reads the same input of merge operator i
    let mut read = Vec::<u64>::new();
    for merges in instances.values() {
        read.resize(read.len().max(merges.len()), 0);
        for (r, m) in read.iter_mut().zip(merges) {
            *r = (*r).max(m.history_read);
        }
    }
    Some((held, read.iter().sum()))
}

/// Over the parts of one run: the neighbour sets' rows and the queries with a set, summed over
/// the tasks (each computed its own queries' sets), when the writers reported them.
pub fn neighbour_sets(parts: &[WrittenPart]) -> Option<(u64, u64)> {
    let instances = instances(parts)?;
    let merges = || instances.values().flatten();
    Some((
        merges().map(|m| m.neighbour_set_rows).sum(),
        merges().map(|m| m.queries_with_prior).sum(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{Report, parts_of};
    use super::*;

    #[test]
    fn each_task_counts_once_with_its_complete_counters() {
        let counts = |held, read, sets, queries| OperatorCounts {
            history_held: held,
            history_read: read,
            neighbour_set_rows: sets,
            queries_with_prior: queries,
        };
        let part = |plan: &str, merges: Vec<OperatorCounts>| WrittenPart {
            part: 0,
            file: String::new(),
            rows: 0,
            bytes: 0,
            sha256: String::new(),
            writer: String::new(),
            action: None,
            counters: Some(MergeCounters {
                plan: plan.into(),
                merges,
            }),
        };
        assert_eq!(history_held(&[]), None);
        assert_eq!(neighbour_sets(&[]), None);
        // task a wrote two parts: the first was done before its second merge operator had run;
        // task b ran only the first operator. Two operators over 100 and 50 history rows.
        let parts = [
            part("a", vec![counts(60, 100, 9, 3), counts(0, 0, 0, 0)]),
            part("a", vec![counts(60, 100, 9, 3), counts(30, 50, 4, 2)]),
            part("b", vec![counts(70, 100, 5, 2), counts(0, 0, 0, 0)]),
        ];
        assert_eq!(history_held(&parts), Some((60 + 30 + 70, 150)));
        assert_eq!(neighbour_sets(&parts), Some((9 + 4 + 5, 3 + 2 + 2)));
        // the report round-trips through its batch
        let mut report = Report::default();
        report.push(3, "f".into(), 1, 2);
        report.sha256.push("s".into());
        report.action.push(None);
        let counters = parts[1].counters.clone();
        let batch = report.into_batch("w", counters.clone()).unwrap();
        assert_eq!(parts_of(&[batch]).unwrap()[0].counters, counters);
    }
}
