-- evaluate features: queries with a relevant outcome and no candidate at all (reported, not
-- scored).
--
-- Reads:  features(query, ...), outcomes(query, product_id, label)
-- Output: one count
SELECT COUNT(DISTINCT query)
FROM outcomes
WHERE label > 0 AND query NOT IN (SELECT query FROM features)
