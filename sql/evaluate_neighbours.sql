-- evaluate neighbours: every listed neighbour with its behaviour label, and every positive label
-- of the listed queries, ordered by query so that one streaming pass scores query after query.
--
-- A query is never its own neighbour (self-pairs are dropped on both sides); a neighbour listed
-- twice keeps its best score, a pair labelled twice its largest label.
--
-- Reads:  lists(list, query, candidate, score)   -- the neighbour lists, list = 0, 1, ...
--         labels(query, candidate, label)        -- behaviour labels, e.g. `mine pairs` output
--         traffic(query, traffic)                -- searches per query (may be empty)
-- Output: query, traffic, list (-1: a positive label of the query), candidate, score, label
WITH labelled AS (
    SELECT query, candidate, MAX(label) AS label
    FROM labels
    WHERE query <> candidate
    GROUP BY query, candidate
),
listed AS (
    SELECT list, query, candidate, MAX(score) AS score
    FROM lists
    WHERE query <> candidate
    GROUP BY list, query, candidate
),
rows AS (
    SELECT x.query, x.list, x.candidate, x.score, COALESCE(l.label, 0.0) AS label
    FROM listed AS x
    LEFT JOIN labelled AS l ON x.query = l.query AND x.candidate = l.candidate
    UNION ALL
    SELECT l.query, CAST(-1 AS BIGINT) AS list, l.candidate, CAST(NULL AS DOUBLE) AS score, l.label
    FROM labelled AS l
    WHERE l.label > 0 AND l.query IN (SELECT query FROM listed)
)
SELECT r.query, COALESCE(t.traffic, 0.0) AS traffic, r.list, r.candidate, r.score, r.label
FROM rows AS r
LEFT JOIN traffic AS t ON r.query = t.query
ORDER BY r.query, r.list
