-- Stage 3, prior: Prior(q,p) from the history of q's neighbour set (eq. 7).
--
--   Prior(q,p) = (sum over c in C_q of weight_c * H(c,p)) / weight_total_q   -- q2q_prior
--
-- H(c,p) = 0 where neighbour c has no row for p, so only neighbours with a row contribute; with
-- the default weights (1 each, total |C_q|) this is the paper's mean over C_q. A (q,p) prior pair exists when
-- at least one neighbour in C_q has a row for p; n_contributing counts those neighbours.
--
-- Reads:  neighbour_sets(query, neighbour, weight, weight_total), history(query, product_id, h)
-- Output: prior(query, product_id, prior, n_contributing)
SELECT
    s.query,
    h.product_id,
    q2q_prior(SUM(s.weight * h.h), MAX(s.weight_total)) AS prior,
    COUNT(*) AS n_contributing
FROM neighbour_sets AS s
JOIN history AS h ON h.query = s.neighbour
GROUP BY s.query, h.product_id
