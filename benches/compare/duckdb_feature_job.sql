-- The feature job's semantics as one DuckDB statement, Parquet to Parquet: the peer that
-- benches/compare.sh times against `q2q-prior run`. Same defaults as the engine (kappa 10, weights
-- 1/2/4, gamma 10000, beta 1, min_score 0, mean prior); the names in braces are filled by the
-- script.
COPY (
    WITH history AS (
        SELECT query, product_id, impressions,
               CASE WHEN impressions + 10.0 > 0
                    THEN (1.0 * clicks + 2.0 * adds + 4.0 * purchases) / (impressions + 10.0)
                    ELSE 0.0 END AS h
        FROM read_parquet('{engagement}')
    ),
    candidates AS (
        SELECT n.query, n.neighbour, MAX(n.score) AS score
        FROM read_parquet('{neighbours}') AS n
        WHERE n.query <> n.neighbour
          AND n.score >= 0.0
          AND n.neighbour IN (SELECT query FROM history)
        GROUP BY n.query, n.neighbour
    ),
    ranked AS (
        SELECT query, neighbour, score,
               ROW_NUMBER() OVER (PARTITION BY query ORDER BY score DESC, neighbour ASC) AS rank
        FROM candidates
    ),
    neighbour_sets AS (
        SELECT query, neighbour, COUNT(*) OVER (PARTITION BY query) AS n_neighbours
        FROM ranked
        WHERE rank <= {top_k}
    ),
    prior AS (
        SELECT s.query, h.product_id,
               SUM(h.h) / MAX(s.n_neighbours) AS prior,
               COUNT(*) AS n_contributing
        FROM neighbour_sets AS s
        JOIN history AS h ON h.query = s.neighbour
        GROUP BY s.query, h.product_id
    ),
    pairs AS (
        SELECT COALESCE(h.query, p.query) AS query,
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
        SELECT pairs.*,
               CASE WHEN LEAST(10000.0, COALESCE(qi.max_impressions, 0)) > 0
                    THEN tanh(LEAST(10000.0, pairs.impressions) / LEAST(10000.0, qi.max_impressions))
                    ELSE 0.0 END AS alpha,
               COALESCE(ss.n_neighbours, 0) AS n_neighbours
        FROM pairs
        LEFT JOIN query_impressions AS qi ON qi.query = pairs.query
        LEFT JOIN set_sizes AS ss ON ss.query = pairs.query
    )
    SELECT query, product_id, h, prior, alpha,
           alpha * h + (1.0 - alpha) * prior * 1.0 AS f,
           impressions, n_neighbours, n_contributing
    FROM weighted
    ORDER BY query, product_id
) TO '{output}' (FORMAT PARQUET, COMPRESSION ZSTD, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE 1048576);
