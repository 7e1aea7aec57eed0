//! Stage 1, history: `engagement` -> `history(query, product_id, impressions, h)`.
//!
//! H(q,p) from the engagement counts (or the input's precomputed `h`); see `sql/history.sql`.

use datafusion::common::ScalarValue;

use super::Stage;
use crate::config::FeatureParams;

pub const STAGE: Stage = Stage {
    name: "history",
    sql: include_str!("../../sql/history.sql"),
    params,
};

fn params(p: &FeatureParams) -> Vec<(&'static str, ScalarValue)> {
    vec![
        ("click_weight", ScalarValue::from(p.click_weight)),
        ("add_weight", ScalarValue::from(p.add_weight)),
        ("purchase_weight", ScalarValue::from(p.purchase_weight)),
        ("smoothing", ScalarValue::from(p.smoothing)),
    ]
}
