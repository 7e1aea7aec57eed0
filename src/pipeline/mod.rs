//! The feature pipeline, one module per stage, in data-flow order:
//!
//! ```text
//! inputs ──> history (H) ──> neighbour_sets (C_q) ──> prior ──> blend (alpha, F) ──> sink
//! ```
//!
//! Every stage after `inputs` is a SQL file under `sql/`, planned against fixed table names with
//! its parameters bound as typed values (never spliced into the text), and registered as a view of
//! the same name. Later stages read earlier ones by name, so the `sql` shell and the job see the
//! exact same definitions.

pub mod blend;
pub mod checks;
pub mod history;
pub mod inputs;
pub mod neighbour_sets;
pub mod prior;

use std::time::{Duration, Instant};

use datafusion::common::ScalarValue;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::config::FeatureParams;
use crate::error::Result;

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

/// Looks a stage up by view name (for `\sql NAME` in the shell and for docs).
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

/// Registers every stage as a view on `ctx` (inputs must be registered already).
///
/// Stages named in `materialize` are computed into memory as soon as they are planned, so later
/// stages read the result instead of recomputing it; used by `run` for `neighbour_sets`, which is
/// small (at most k rows per query) and read twice by the last stages. Everything else stays lazy.
pub async fn register_stages(
    ctx: &SessionContext,
    params: &FeatureParams,
    materialize: &[&str],
) -> Result<StageTimings> {
    let mut timings = StageTimings::default();
    for stage in &STAGES {
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
