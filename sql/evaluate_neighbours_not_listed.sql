-- evaluate neighbours: queries with a positive behaviour label that no neighbour list names as a
-- query (reported, not scored). Self-pairs are ignored on both sides, as in
-- evaluate_neighbours.sql.
--
-- Reads:  lists(list, query, candidate, score), labels(query, candidate, label)
-- Output: one count
SELECT COUNT(DISTINCT query)
FROM labels
WHERE label > 0 AND query <> candidate
  AND query NOT IN (SELECT query FROM lists WHERE query <> candidate)
