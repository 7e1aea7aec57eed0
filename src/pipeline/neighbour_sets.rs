//! Stage 2, neighbour sets: `neighbours`, `history` ->
//! `neighbour_sets(query, neighbour, score, rank, n_neighbours, weight)`.
//!
//! C_q: cleaned, deduplicated, top-k neighbours with their weight in the prior; see
//! `sql/neighbour_sets.sql`.

use datafusion::common::ScalarValue;

use super::Stage;
use crate::config::FeatureParams;

pub const STAGE: Stage = Stage {
    name: "neighbour_sets",
    sql: include_str!("../../sql/neighbour_sets.sql"),
    params,
};

fn params(p: &FeatureParams) -> Vec<(&'static str, ScalarValue)> {
    vec![
        ("min_score", ScalarValue::from(p.min_score)),
        ("top_k", ScalarValue::from(i64::from(p.top_k))),
        (
            "prior_weighting",
            ScalarValue::from(p.prior_weighting.name()),
        ),
    ]
}
