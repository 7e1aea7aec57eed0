-- Stage 4, blend: the feature table, one row per (q,p) in history or prior (eq. 8 and 9).
--
--   alpha = q2q_confidence($blend, ...)  (src/formula.rs)
--     paper: tanh( min(gamma, I(q,p)) / min(gamma, max over p' of I(q,p')) ); 0 when the
--            denominator is 0
--     bayes: (I(q,p) + kappa) / (I(q,p) + kappa + m)
--   F     = alpha * H + (1 - alpha) * Prior * beta   -- q2q_blend
--
-- H, Prior and I are 0 where the pair has no row in history / prior.
--
-- Reads:  history, prior, neighbour_sets
-- Output: features(query, product_id, h, prior, alpha, f, impressions, n_neighbours, n_contributing)
-- Parameters: $blend, $gamma, $smoothing (kappa), $pseudo_impressions (m), $beta
WITH pairs AS (
    SELECT
        COALESCE(h.query, p.query) AS query,
        COALESCE(h.product_id, p.product_id) AS product_id,
        COALESCE(h.h, 0.0) AS h,
        COALESCE(p.prior, 0.0) AS prior,
        COALESCE(h.impressions, 0) AS impressions,
        COALESCE(p.n_contributing, 0) AS n_contributing
    FROM history AS h
    FULL OUTER JOIN prior AS p ON h.query = p.query AND h.product_id = p.product_id
),
query_impressions AS (
    SELECT query, MAX(impressions) AS max_impressions FROM history GROUP BY query
),
set_sizes AS (
    SELECT query, MAX(n_neighbours) AS n_neighbours FROM neighbour_sets GROUP BY query
),
weighted AS (
    SELECT
        pairs.query,
        pairs.product_id,
        pairs.h,
        pairs.prior,
        q2q_confidence(
            $blend, pairs.impressions, COALESCE(qi.max_impressions, 0),
            $gamma, $smoothing, $pseudo_impressions
        ) AS alpha,
        pairs.impressions,
        COALESCE(ss.n_neighbours, 0) AS n_neighbours,
        pairs.n_contributing
    FROM pairs
    LEFT JOIN query_impressions AS qi ON qi.query = pairs.query
    LEFT JOIN set_sizes AS ss ON ss.query = pairs.query
)
SELECT
    query,
    product_id,
    h,
    prior,
    alpha,
    q2q_blend(h, prior, alpha, $beta) AS f,
    impressions,
    n_neighbours,
    n_contributing
FROM weighted
