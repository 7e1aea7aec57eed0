-- evaluate features: the relevant outcomes a ranker never sees, two ways.
--
-- Reads:  features(query, product_id, ...)   -- the candidates with their scores
--         outcomes(query, product_id, label)  -- what users did, label > 0 relevant
--
-- missing: each relevant outcome of a query that has candidates, when the product is not among
-- them (it counts in the query's ideal DCG, never in its DCG).
-- Output: query, label
SELECT o.query, o.label
FROM outcomes AS o
LEFT ANTI JOIN features AS f ON o.query = f.query AND o.product_id = f.product_id
WHERE o.label > 0 AND o.query IN (SELECT query FROM features)
