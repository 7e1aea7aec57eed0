//! Offline evaluation: ranking metrics against held-out outcomes, by query segment, with bootstrap
//! intervals, a paired comparison and a chart.

pub mod bootstrap;
pub mod chart;
pub mod features;
pub mod metrics;
