//! Offline evaluation: ranking metrics against held-out outcomes (`features`: the feature table's
//! scores; `neighbours`: the upstream model's neighbour lists), by query segment, with bootstrap
//! intervals, a paired comparison and a chart.

pub mod bootstrap;
pub mod chart;
pub mod features;
pub mod metrics;
pub mod neighbours;
pub mod report;
