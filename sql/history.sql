-- Stage 1, history: the history score H(q,p) of every engagement pair (Q2Q paper, footnote 2).
--
--   H(q,p) = (w_click * clicks + w_add * adds + w_purchase * purchases) / (impressions + kappa)
--
-- A precomputed `h` column in the engagement input wins over the counts. H is 0 when
-- impressions + kappa is 0 (nothing observed, no smoothing). I(q,p) = impressions.
--
-- Reads:  engagement(query, product_id, impressions, clicks, adds, purchases, h)
-- Output: history(query, product_id, impressions, h)
-- Parameters: $click_weight, $add_weight, $purchase_weight, $smoothing (kappa)
SELECT
    query,
    product_id,
    impressions,
    COALESCE(
        h,
        CASE
            WHEN impressions + $smoothing > 0
            THEN ($click_weight * clicks + $add_weight * adds + $purchase_weight * purchases)
                 / (impressions + $smoothing)
            ELSE 0.0
        END
    ) AS h
FROM engagement
