//! Stage 4, blend: `history`, `prior`, `neighbour_sets` ->
//! `features(query, product_id, h, prior, alpha, f, impressions, n_neighbours, n_contributing)`.
//!
//! alpha (the paper's or the Bayesian, `features.blend`) and F = alpha*H + (1-alpha)*Prior*beta;
//! see `sql/features.sql`.

use datafusion::common::ScalarValue;

use super::Stage;
use crate::config::FeatureParams;

pub const STAGE: Stage = Stage {
    name: "features",
    sql: include_str!("../../sql/features.sql"),
    params,
};

fn params(p: &FeatureParams) -> Vec<(&'static str, ScalarValue)> {
    vec![
        ("blend", ScalarValue::from(p.blend.name())),
        ("gamma", ScalarValue::from(p.gamma)),
        ("smoothing", ScalarValue::from(p.smoothing)),
        (
            "pseudo_impressions",
            ScalarValue::from(p.pseudo_impressions),
        ),
        ("beta", ScalarValue::from(p.beta)),
    ]
}

/// The feature table's columns (partition columns come after them).
pub const OUTPUT_COLUMNS: [&str; 9] = [
    "query",
    "product_id",
    "h",
    "prior",
    "alpha",
    "f",
    "impressions",
    "n_neighbours",
    "n_contributing",
];
