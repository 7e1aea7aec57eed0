-- mine ance: InfoNCE training rows from the bi-encoder's retrieval and the mined co-purchase pairs
-- (the ANCE loop: retrieve with the current model, subtract what is a co-purchase pair, keep the
-- rest as hard negatives).
--
-- Positives of q: its mined pairs that are not negatives (retrieved or not), best label first.
-- Hard negatives of q: its retrieved candidates, minus q itself, minus every co-purchase pair
-- (mined as a positive in either direction), minus the first $skip_top ranks (often unlabelled
-- positives), the best-ranked $negatives of them (ties by candidate).
-- One row per query with at least one positive (empty negative lists when nothing is left).
--
-- Reads:  retrieval(query, candidate, score, rank), pairs(query, candidate, label, is_negative, split)
-- Output: query, split, positives, positive_labels, hard_negatives, hard_negative_scores,
--         hard_negative_ranks, n_retrieved, n_subtracted
-- Parameters: $skip_top, $negatives
WITH positive AS (
    SELECT query, candidate, MAX(label) AS label, MIN(split) AS split
    FROM pairs
    WHERE NOT is_negative
    GROUP BY query, candidate
),
copurchase AS (
    SELECT query, candidate FROM positive
    UNION
    SELECT candidate AS query, query AS candidate FROM positive
),
retrieved AS (
    SELECT query, candidate, MAX(score) AS score, MIN(rank) AS rank
    FROM retrieval
    WHERE query <> candidate
    GROUP BY query, candidate
),
marked AS (
    SELECT r.query, r.candidate, r.score, r.rank, c.query IS NOT NULL AS is_copurchase
    FROM retrieved AS r
    LEFT JOIN copurchase AS c ON r.query = c.query AND r.candidate = c.candidate
),
counts AS (
    SELECT query,
           COUNT(*) AS n_retrieved,
           SUM(CASE WHEN is_copurchase THEN 1 ELSE 0 END) AS n_subtracted
    FROM marked
    GROUP BY query
),
hard AS (
    SELECT query, candidate, score, rank,
           ROW_NUMBER() OVER (PARTITION BY query ORDER BY rank ASC, candidate ASC) AS i
    FROM marked
    WHERE NOT is_copurchase AND rank > $skip_top
),
negatives AS (
    SELECT query,
           ARRAY_AGG(candidate ORDER BY i) AS hard_negatives,
           ARRAY_AGG(score ORDER BY i) AS hard_negative_scores,
           ARRAY_AGG(rank ORDER BY i) AS hard_negative_ranks
    FROM hard
    WHERE i <= $negatives
    GROUP BY query
),
positives AS (
    SELECT query,
           MIN(split) AS split,
           ARRAY_AGG(candidate ORDER BY label DESC, candidate ASC) AS positives,
           ARRAY_AGG(label ORDER BY label DESC, candidate ASC) AS positive_labels
    FROM positive
    GROUP BY query
)
SELECT p.query,
       p.split,
       p.positives,
       p.positive_labels,
       COALESCE(n.hard_negatives, MAKE_ARRAY()) AS hard_negatives,
       COALESCE(n.hard_negative_scores, MAKE_ARRAY()) AS hard_negative_scores,
       COALESCE(n.hard_negative_ranks, MAKE_ARRAY()) AS hard_negative_ranks,
       COALESCE(c.n_retrieved, 0) AS n_retrieved,
       COALESCE(c.n_subtracted, 0) AS n_subtracted
FROM positives AS p
LEFT JOIN negatives AS n ON p.query = n.query
LEFT JOIN counts AS c ON p.query = c.query
ORDER BY p.query
