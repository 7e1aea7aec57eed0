//! Every formula of the feature job, once, as plain functions over f64 (Q2Q paper, section 4.5
//! and footnote 2; the Bayesian confidence of issue 21).
//!
//! The single definition of each: the merge plan's operator calls them directly, the SQL stages
//! through the UDFs of [`crate::udf`] (`q2q_history`, `q2q_neighbour_weight`, `q2q_weight_total`,
//! `q2q_prior`, `q2q_confidence`, `q2q_blend`), and the in-memory reference implementation in
//! [`crate::reference`] too, so a change here changes the engine and its oracle together. A new
//! blend is a variant of [`Blend`] and an arm of [`alpha`]: nothing else.

use serde::{Deserialize, Serialize};

/// History score H(q,p): a weighted sum of engagement normalised by impressions plus a smoothing
/// constant kappa (footnote 2). Zero when nothing was observed and kappa is zero (0/0).
pub fn history(
    weights: &HistoryWeights,
    impressions: f64,
    clicks: f64,
    adds: f64,
    purchases: f64,
) -> f64 {
    let denominator = impressions + weights.smoothing;
    if denominator > 0.0 {
        (weights.click * clicks + weights.add * adds + weights.purchase * purchases) / denominator
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

/// A kept neighbour's weight in the prior: 1 (`mean`, eq. 7), or its score (`score`) unless every
/// kept score of the set is 0 (`score_sum`), where the plain mean is the limit of equal scores.
pub fn neighbour_weight(weighting: PriorWeighting, score: f64, score_sum: f64) -> f64 {
    match weighting {
        PriorWeighting::Score if score_sum > 0.0 => score,
        _ => 1.0,
    }
}

/// What the prior divides by: |C_q| (`n`) for `mean`, the sum of the kept scores for `score`
/// (with [`neighbour_weight`]'s fallback).
pub fn weight_total(weighting: PriorWeighting, n: f64, score_sum: f64) -> f64 {
    match weighting {
        PriorWeighting::Score if score_sum > 0.0 => score_sum,
        _ => n,
    }
}

/// Prior(q,p) = sum over C_q of weight_c * H(c,p), divided by the set's [`weight_total`] (eq. 7;
/// H(c,p) = 0 where c has no row for p).
pub fn prior(weighted_sum: f64, weight_total: f64) -> f64 {
    weighted_sum / weight_total
}

/// What alpha depends on besides a pair's impressions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Confidence {
    pub blend: Blend,
    /// gamma, the impression cap of the paper's alpha.
    pub gamma: f64,
    /// kappa, H's smoothing: the impressions H already assumes.
    pub smoothing: f64,
    /// m, the prior's worth in impressions (bayes).
    pub pseudo_impressions: f64,
}

/// Confidence in H of a pair shown `impressions` times, under a query whose most-shown product
/// was shown `max_impressions` times.
pub fn alpha(c: &Confidence, impressions: f64, max_impressions: f64) -> f64 {
    match c.blend {
        Blend::Paper => alpha_paper(impressions, max_impressions, c.gamma),
        Blend::Bayes => alpha_bayes(impressions, c.smoothing, c.pseudo_impressions),
    }
}

/// The paper's alpha = tanh( min(gamma, I) / min(gamma, max_p I) ) (eq. 9).
///
/// `max_impressions` is the largest impression count of any product under the same query. When it
/// is zero (a query never shown, or only through the prior) the ratio is undefined and alpha is 0:
/// all weight goes to the prior.
pub fn alpha_paper(impressions: f64, max_impressions: f64, gamma: f64) -> f64 {
    let denominator = gamma.min(max_impressions);
    if denominator > 0.0 {
        (gamma.min(impressions) / denominator).tanh()
    } else {
        0.0
    }
}

/// The empirical-Bayes alpha = (I + kappa) / (I + kappa + m): with beta = 1, F is then the
/// posterior mean of the pair's engagement rate under a prior centred on Prior and worth m
/// impressions, (W + m*Prior) / (I + kappa + m) where W = H*(I + kappa) is the weighted count.
/// A pair never shown gets kappa / (kappa + m), not 0; 0 only when kappa is 0.
pub fn alpha_bayes(impressions: f64, smoothing: f64, pseudo_impressions: f64) -> f64 {
    let evidence = impressions + smoothing;
    evidence / (evidence + pseudo_impressions)
}

/// Blended feature F = alpha*H + (1-alpha)*Prior*beta (eq. 8).
pub fn blend(h: f64, prior: f64, alpha: f64, beta: f64) -> f64 {
    alpha * h + (1.0 - alpha) * prior * beta
}

/// How Prior(q,p) averages H(c,p) over the neighbour set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PriorWeighting {
    /// (1/|C_q|) * sum of H(c,p): eq. 7 of the paper.
    #[default]
    Mean,
    /// sum(s_c * H(c,p)) / sum(s_c): weights neighbours by the model's score (an extension).
    Score,
}

impl PriorWeighting {
    /// The name used in config, flags and SQL (`$prior_weighting`).
    pub fn name(self) -> &'static str {
        match self {
            PriorWeighting::Mean => "mean",
            PriorWeighting::Score => "score",
        }
    }

    pub fn from_name(name: &str) -> Option<PriorWeighting> {
        <PriorWeighting as clap::ValueEnum>::from_str(name, true).ok()
    }
}

/// The confidence alpha of F = alpha*H + (1-alpha)*Prior*beta ([`alpha`]).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    /// tanh(min(gamma, I) / min(gamma, max_p I)): eq. 9 of the paper, relative to the query's
    /// most-shown product.
    #[default]
    Paper,
    /// (I + kappa) / (I + kappa + m): the empirical-Bayes weight of the pair's own evidence against
    /// a prior worth m impressions.
    Bayes,
}

impl Blend {
    /// The name used in config, flags and SQL (`$blend`).
    pub fn name(self) -> &'static str {
        match self {
            Blend::Paper => "paper",
            Blend::Bayes => "bayes",
        }
    }

    /// The blend named `name` (as in config and flags).
    pub fn from_name(name: &str) -> Option<Blend> {
        <Blend as clap::ValueEnum>::from_str(name, true).ok()
    }
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
        assert_eq!(history(&DEFAULT, 90.0, 5.0, 2.0, 1.0), 0.13);
        assert_eq!(history(&DEFAULT, 0.0, 0.0, 0.0, 0.0), 0.0);
    }

    #[test]
    fn history_without_smoothing_and_without_impressions_is_zero() {
        let w = HistoryWeights {
            smoothing: 0.0,
            ..DEFAULT
        };
        assert_eq!(history(&w, 0.0, 0.0, 0.0, 0.0), 0.0);
        assert_eq!(history(&w, 4.0, 1.0, 0.0, 0.0), 0.25);
    }

    #[test]
    fn alpha_is_tanh_of_capped_ratio() {
        assert_eq!(alpha_paper(50.0, 100.0, 10_000.0), 0.5f64.tanh());
        // the most-shown product of a query gets tanh(1)
        assert_eq!(alpha_paper(100.0, 100.0, 10_000.0), 1.0f64.tanh());
        // above gamma both sides are capped: every product shown >= gamma times gets tanh(1)
        assert_eq!(alpha_paper(20_000.0, 50_000.0, 10_000.0), 1.0f64.tanh());
        assert_eq!(alpha_paper(5_000.0, 50_000.0, 10_000.0), 0.5f64.tanh());
    }

    #[test]
    fn alpha_is_zero_without_impressions() {
        assert_eq!(alpha_paper(0.0, 0.0, 10_000.0), 0.0);
        assert_eq!(alpha_paper(0.0, 7.0, 10_000.0), 0.0);
    }

    #[test]
    fn bayes_alpha_weighs_absolute_evidence() {
        // a once-seen query's top product: (1 + 10) / (1 + 10 + 30) = 11/41, not tanh(1)
        assert_eq!(alpha_bayes(1.0, 10.0, 30.0), 11.0 / 41.0);
        assert_eq!(
            alpha_bayes(0.0, 10.0, 30.0),
            0.25,
            "a prior-only pair: kappa / (kappa + m)"
        );
        assert_eq!(alpha_bayes(0.0, 0.0, 30.0), 0.0);
        assert!(alpha_bayes(1e9, 10.0, 30.0) > 0.999_999);
        let c = Confidence {
            blend: Blend::Bayes,
            gamma: 10_000.0,
            smoothing: 10.0,
            pseudo_impressions: 30.0,
        };
        assert_eq!(
            alpha(&c, 1.0, 1.0),
            11.0 / 41.0,
            "the query's own maximum plays no part"
        );
        let paper = Confidence {
            blend: Blend::Paper,
            ..c
        };
        assert_eq!(alpha(&paper, 1.0, 1.0), 1.0f64.tanh());
    }

    #[test]
    fn bayes_f_is_the_posterior_mean_of_the_weighted_rate() {
        // with beta = 1: F = (W + m * Prior) / (I + kappa + m), W = weighted counts
        let (i, kappa, m, prior_rate) = (40.0, 10.0, 30.0, 0.2);
        let w = HistoryWeights {
            click: 1.0,
            add: 2.0,
            purchase: 4.0,
            smoothing: kappa,
        };
        let (clicks, adds, purchases) = (6.0, 1.0, 1.0);
        let h = history(&w, i, clicks, adds, purchases);
        let f = blend(h, prior_rate, alpha_bayes(i, kappa, m), 1.0);
        let weighted = clicks + 2.0 * adds + 4.0 * purchases;
        assert!((f - (weighted + m * prior_rate) / (i + kappa + m)).abs() < 1e-15);
    }

    #[test]
    fn prior_weightings() {
        use PriorWeighting::{Mean, Score};
        assert_eq!(neighbour_weight(Mean, 0.7, 1.5), 1.0);
        assert_eq!(neighbour_weight(Score, 0.7, 1.5), 0.7);
        assert_eq!(
            neighbour_weight(Score, 0.0, 0.0),
            1.0,
            "all scores 0: the plain mean"
        );
        assert_eq!(weight_total(Mean, 3.0, 1.5), 3.0);
        assert_eq!(weight_total(Score, 3.0, 1.5), 1.5);
        assert_eq!(weight_total(Score, 3.0, 0.0), 3.0);
        assert_eq!(prior(0.9, 3.0), 0.3);
    }

    #[test]
    fn blend_endpoints() {
        assert_eq!(blend(0.3, 0.9, 1.0, 1.0), 0.3);
        assert_eq!(blend(0.3, 0.9, 0.0, 0.5), 0.45);
        assert_eq!(blend(0.0, 0.0, 0.7, 1.0), 0.0);
    }
}
