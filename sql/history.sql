-- Stage 1, history: the history score H(q,p) of every engagement pair (Q2Q paper, footnote 2).
--
--   H(q,p) = (w_click * clicks + w_add * adds + w_purchase * purchases) / (impressions + kappa)
--            -- q2q_history (src/formula.rs); 0 when impressions + kappa is 0
--
-- A precomputed `h` column in the engagement input wins over the counts. I(q,p) = impressions.
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
        q2q_history(
            impressions, clicks, adds, purchases,
            $click_weight, $add_weight, $purchase_weight, $smoothing
        )
    ) AS h
FROM engagement
