//! The paper's formulas (Q2Q paper, section 4.5 and footnote 2) as plain scalar functions.
//!
//! These are the single definition of each formula: the SQL UDFs in [`crate::udf`] and the
//! in-memory reference implementation in [`crate::reference`] both call them, so a change here
//! changes the engine and its oracle together.

/// History score H(q,p): a weighted sum of engagement normalised by impressions plus a smoothing
/// constant kappa (footnote 2). Zero when nothing was observed and kappa is zero (0/0).
pub fn history(
    weights: &HistoryWeights,
    impressions: i64,
    clicks: i64,
    adds: i64,
    purchases: i64,
) -> f64 {
    let denominator = impressions as f64 + weights.smoothing;
    if denominator > 0.0 {
        (weights.click * clicks as f64
            + weights.add * adds as f64
            + weights.purchase * purchases as f64)
            / denominator
    } else {
        0.0
    }
}

/// The weights of [`history`]: w_click, w_add, w_purchase and kappa.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryWeights {
    pub click: f64,
    pub add: f64,
    pub purchase: f64,
    pub smoothing: f64,
}

/// Confidence alpha = tanh( min(gamma, I) / min(gamma, max_p I) ) (eq. 9).
///
/// `max_impressions` is the largest impression count of any product under the same query. When it
/// is zero (a query never shown, or only through the prior) the ratio is undefined and alpha is 0:
/// all weight goes to the prior.
pub fn alpha(impressions: f64, max_impressions: f64, gamma: f64) -> f64 {
    let denominator = gamma.min(max_impressions);
    if denominator > 0.0 {
        (gamma.min(impressions) / denominator).tanh()
    } else {
        0.0
    }
}

/// Blended feature F = alpha*H + (1-alpha)*Prior*beta (eq. 8).
pub fn blend(h: f64, prior: f64, alpha: f64, beta: f64) -> f64 {
    alpha * h + (1.0 - alpha) * prior * beta
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: HistoryWeights = HistoryWeights {
        click: 1.0,
        add: 2.0,
        purchase: 4.0,
        smoothing: 10.0,
    };

    #[test]
    fn history_weights_and_smoothing() {
        // (1*5 + 2*2 + 4*1) / (90 + 10) = 13 / 100
        assert_eq!(history(&DEFAULT, 90, 5, 2, 1), 0.13);
        assert_eq!(history(&DEFAULT, 0, 0, 0, 0), 0.0);
    }

    #[test]
    fn history_without_smoothing_and_without_impressions_is_zero() {
        let w = HistoryWeights {
            smoothing: 0.0,
            ..DEFAULT
        };
        assert_eq!(history(&w, 0, 0, 0, 0), 0.0);
        assert_eq!(history(&w, 4, 1, 0, 0), 0.25);
    }

    #[test]
    fn alpha_is_tanh_of_capped_ratio() {
        assert_eq!(alpha(50.0, 100.0, 10_000.0), 0.5f64.tanh());
        // the most-shown product of a query gets tanh(1)
        assert_eq!(alpha(100.0, 100.0, 10_000.0), 1.0f64.tanh());
        // above gamma both sides are capped: every product shown >= gamma times gets tanh(1)
        assert_eq!(alpha(20_000.0, 50_000.0, 10_000.0), 1.0f64.tanh());
        assert_eq!(alpha(5_000.0, 50_000.0, 10_000.0), 0.5f64.tanh());
    }

    #[test]
    fn alpha_is_zero_without_impressions() {
        assert_eq!(alpha(0.0, 0.0, 10_000.0), 0.0);
        assert_eq!(alpha(0.0, 7.0, 10_000.0), 0.0);
    }

    #[test]
    fn blend_endpoints() {
        assert_eq!(blend(0.3, 0.9, 1.0, 1.0), 0.3);
        assert_eq!(blend(0.3, 0.9, 0.0, 0.5), 0.45);
        assert_eq!(blend(0.0, 0.0, 0.7, 1.0), 0.0);
    }
}
