//! What the merge operators below a part's writer held of the history, reported with the part
//! so that a cluster run's summary can print the replication its split by query cost (on one
//! machine the operator's own metrics say it: see `job::summary`).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};

use super::WrittenPart;

/// The counters a merge operator below a writer keeps of the history: the rows it held (its
/// index) and the rows it read to pick them (on a cluster each task reads the whole history and
/// keeps what its share of the queries needs).
pub const HISTORY_HELD: &str = "history_rows";
pub const HISTORY_READ: &str = "history_rows_read";

/// [`HISTORY_HELD`] and [`HISTORY_READ`] of each merge operator below one writer (in plan
/// order), as one of its parts reported them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryHeld {
    /// The plan instance (one task's): `<host>:<pid>:<n>`.
    pub plan: String,
    /// (held, read) per merge operator.
    pub merges: Vec<(u64, u64)>,
}

impl HistoryHeld {
    /// The figures of the merge operators in `plan` (none when it has none).
    pub(super) fn of(plan: &Arc<dyn ExecutionPlan>, id: String) -> Option<HistoryHeld> {
        fn walk(plan: &Arc<dyn ExecutionPlan>, merges: &mut Vec<(u64, u64)>) {
            if let Some(metrics) = plan.metrics()
                && let Some(read) = metrics.sum_by_name(HISTORY_READ)
            {
                let held = metrics
                    .sum_by_name(HISTORY_HELD)
                    .map_or(0, |m| m.as_usize());
                merges.push((held as u64, read.as_usize() as u64));
            }
            for child in plan.children() {
                walk(child, merges);
            }
        }
        let mut merges = Vec::new();
        walk(plan, &mut merges);
        (!merges.is_empty()).then_some(HistoryHeld { plan: id, merges })
    }
}

/// Over the parts of one run: the history rows its tasks held, summed, and the history's rows
/// (each merge operator's input once), when the writers reported them. Held over history is the
/// replication a split by query costs. A task's last part has its complete figures (counters
/// only grow), so each plan instance counts with its largest.
pub fn history_held(parts: &[WrittenPart]) -> Option<(u64, u64)> {
    let mut instances: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for figures in parts.iter().filter_map(|p| p.history.as_ref()) {
        let merges = instances.entry(&figures.plan).or_default();
        merges.resize(merges.len().max(figures.merges.len()), (0, 0));
        for (m, f) in merges.iter_mut().zip(&figures.merges) {
            *m = (m.0.max(f.0), m.1.max(f.1));
        }
    }
    if instances.is_empty() {
        return None;
    }
    let held = instances.values().flatten().map(|m| m.0).sum();
    // every task reads the same input of merge operator i
    let mut read = Vec::<u64>::new();
    for merges in instances.values() {
        read.resize(read.len().max(merges.len()), 0);
        for (r, m) in read.iter_mut().zip(merges) {
            *r = (*r).max(m.1);
        }
    }
    Some((held, read.iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::super::{Report, parts_of};
    use super::*;

    #[test]
    fn the_history_held_counts_each_task_once_with_its_complete_figures() {
        let part = |plan: &str, merges: Vec<(u64, u64)>| WrittenPart {
            part: 0,
            file: String::new(),
            rows: 0,
            bytes: 0,
            sha256: String::new(),
            writer: String::new(),
            action: None,
            history: Some(HistoryHeld {
                plan: plan.into(),
                merges,
            }),
        };
        assert_eq!(history_held(&[]), None);
        // task a wrote two parts: the first was done before its second merge operator had run;
        // task b ran only the first operator. Two operators over 100 and 50 history rows.
        let parts = [
            part("a", vec![(60, 100), (0, 0)]),
            part("a", vec![(60, 100), (30, 50)]),
            part("b", vec![(70, 100), (0, 0)]),
        ];
        assert_eq!(history_held(&parts), Some((60 + 30 + 70, 150)));
        // the report round-trips through its batch
        let mut report = Report::default();
        report.push(3, "f".into(), 1, 2);
        report.sha256.push("s".into());
        report.action.push(None);
        let figures = parts[1].history.clone();
        let batch = report.into_batch("w", figures.clone()).unwrap();
        assert_eq!(parts_of(&[batch]).unwrap()[0].history, figures);
    }
}
