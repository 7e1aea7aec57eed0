-- Stage 2, neighbour sets: C_q, the similar queries whose behaviour feeds q's prior (section 4.5).
--
-- From the upstream model's lists, drop self-pairs, rows scoring below $min_score and neighbours
-- that have no engagement row at all; keep the highest score of a duplicated (query, neighbour);
-- keep the $top_k best by score, ties broken by neighbour ascending (byte order).
-- |C_q| = n_neighbours. Each kept neighbour gets a weight, and the set a total the prior divides by
-- (q2q_neighbour_weight, q2q_weight_total: src/formula.rs):
--   mean  (default): weight 1,   weight_total |C_q|               (eq. 7)
--   score:           weight s_c, weight_total sum of s over C_q; mean weights when every kept score is 0
--
-- Reads:  neighbours(query, neighbour, score), history(query, ...)
-- Output: neighbour_sets(query, neighbour, score, rank, n_neighbours, weight, weight_total)
-- Parameters: $min_score, $top_k, $prior_weighting ('mean' | 'score')
WITH candidates AS (
    SELECT n.query, n.neighbour, MAX(n.score) AS score
    FROM neighbours AS n
    WHERE n.query <> n.neighbour
      AND n.score >= $min_score
      AND n.neighbour IN (SELECT query FROM history)
    GROUP BY n.query, n.neighbour
),
ranked AS (
    SELECT
        query,
        neighbour,
        score,
        ROW_NUMBER() OVER (PARTITION BY query ORDER BY score DESC, neighbour ASC) AS rank
    FROM candidates
),
kept AS (
    SELECT
        query,
        neighbour,
        score,
        rank,
        COUNT(*) OVER (PARTITION BY query) AS n_neighbours,
        SUM(score) OVER (PARTITION BY query) AS score_sum
    FROM ranked
    WHERE rank <= $top_k
)
SELECT
    query,
    neighbour,
    score,
    rank,
    n_neighbours,
    q2q_neighbour_weight($prior_weighting, score, score_sum) AS weight,
    q2q_weight_total($prior_weighting, n_neighbours, score_sum) AS weight_total
FROM kept
