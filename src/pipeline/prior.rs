//! Stage 3, prior: `neighbour_sets`, `history` -> `prior(query, product_id, prior, n_contributing)`.
//!
//! Prior(q,p) as the weighted sum of the neighbours' H(c,p); see `sql/prior.sql`.

use super::Stage;

pub const STAGE: Stage = Stage {
    name: "prior",
    sql: include_str!("../../sql/prior.sql"),
    params: |_| vec![],
};
