//! Ranking metrics of one query, tie-aware: products with equal scores are in random order, and a
//! metric is its expectation over that order (for NDCG, McSherry & Najork's tie-averaged DCG, as
//! scikit-learn's `ndcg_score` computes it). Tail queries have many equal scores (no history: H is
//! 0), so breaking ties by any fixed rule would decide the comparison instead of the scores.

/// How a grade becomes a gain in DCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gain {
    /// 2^label - 1 (LightGBM's lambdarank default, Burges et al.).
    Exponential,
    /// The label itself (scikit-learn's `ndcg_score`).
    Linear,
}

impl Gain {
    pub fn of(self, label: f64) -> f64 {
        match self {
            Gain::Exponential => label.exp2() - 1.0,
            Gain::Linear => label,
        }
    }
}

/// The metrics of one query under one score.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueryMetrics {
    pub ndcg: f64,
    pub mrr: f64,
    pub recall: f64,
}

/// A query's candidates (score, label) and the labels of relevant outcomes that are not among the
/// candidates (they count in the ideal DCG and in recall's denominator, never in the ranking).
/// Returns `None` when the query has no relevant outcome (label > 0) at all: the metrics are
/// undefined there.
pub fn query_metrics(
    candidates: &[(f64, f64)],
    missing: &[f64],
    k: usize,
    gain: Gain,
) -> Option<QueryMetrics> {
    let relevant = candidates.iter().filter(|(_, l)| *l > 0.0).count()
        + missing.iter().filter(|l| **l > 0.0).count();
    if relevant == 0 {
        return None;
    }
    let mut order: Vec<(f64, f64)> = candidates.to_vec();
    // NaN scores sort last: they carry no ranking information
    order.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or_else(|| a.0.is_nan().cmp(&b.0.is_nan()))
    });
    let discount = |rank: usize| 1.0 / ((rank + 2) as f64).log2();

    let mut dcg = 0.0;
    let mut found = 0.0;
    let mut rr = 0.0;
    let mut rr_done = false;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && same(order[end].0, order[start].0) {
            end += 1;
        }
        let group = &order[start..end];
        let m = group.len();
        let r = group.iter().filter(|(_, l)| *l > 0.0).count();
        if start < k {
            let top = end.min(k);
            let mean_gain = group.iter().map(|(_, l)| gain.of(*l)).sum::<f64>() / m as f64;
            dcg += mean_gain * (start..top).map(discount).sum::<f64>();
            found += r as f64 * (top - start) as f64 / m as f64;
        }
        if !rr_done && r > 0 {
            rr = expected_reciprocal_rank(start, m, r);
            rr_done = true;
        }
        start = end;
    }

    let mut ideal: Vec<f64> = candidates
        .iter()
        .map(|(_, l)| *l)
        .chain(missing.iter().copied())
        .filter(|l| *l > 0.0)
        .collect();
    ideal.sort_unstable_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(rank, l)| gain.of(*l) * discount(rank))
        .sum();
    Some(QueryMetrics {
        ndcg: if idcg > 0.0 { dcg / idcg } else { 0.0 },
        mrr: rr,
        recall: found / relevant as f64,
    })
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

/// E[1 / rank of the first relevant item] when a tie group of `m` items, `r` of them relevant,
/// occupies 0-based ranks `start..start + m` in random order.
fn expected_reciprocal_rank(start: usize, m: usize, r: usize) -> f64 {
    // P(j irrelevant items come first) = C(m-1-j, r-1) / C(m, r), by the ratio of successive terms
    let mut p = r as f64 / m as f64;
    let mut expected = 0.0;
    for j in 0..=(m - r) {
        expected += p / (start + 1 + j) as f64;
        if j < m - r {
            p *= (m - r - j) as f64 / (m - 1 - j) as f64;
        }
    }
    expected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn hand_computed_without_ties() {
        // ranking: l=0, l=3, l=1 ; ideal: 3, 1
        let c = [(0.9, 0.0), (0.5, 3.0), (0.1, 1.0)];
        let m = query_metrics(&c, &[], 10, Gain::Exponential).unwrap();
        let dcg = 7.0 / 3f64.log2() + 1.0 / 4f64.log2();
        let idcg = 7.0 + 1.0 / 3f64.log2();
        close(m.ndcg, dcg / idcg);
        close(m.mrr, 0.5);
        close(m.recall, 1.0);
        // k = 1: nothing relevant on top
        let m = query_metrics(&c, &[], 1, Gain::Exponential).unwrap();
        close(m.ndcg, 0.0);
        close(m.recall, 0.0);
        // a relevant outcome the candidates miss: in the ideal and the denominator only
        let m = query_metrics(&c, &[2.0], 10, Gain::Linear).unwrap();
        let dcg = 3.0 / 3f64.log2() + 1.0 / 4f64.log2();
        let idcg = 3.0 + 2.0 / 3f64.log2() + 1.0 / 4f64.log2();
        close(m.ndcg, dcg / idcg);
        close(m.recall, 2.0 / 3.0);
        assert!(query_metrics(&[(1.0, 0.0)], &[0.0], 10, Gain::Linear).is_none());
    }

    /// Every order of the tied items, equally likely: the plain metrics averaged.
    fn brute_force(c: &[(f64, f64)], k: usize) -> QueryMetrics {
        fn permutations(items: Vec<(f64, f64)>) -> Vec<Vec<(f64, f64)>> {
            if items.len() <= 1 {
                return vec![items];
            }
            let mut out = Vec::new();
            for i in 0..items.len() {
                let mut rest = items.clone();
                let first = rest.remove(i);
                for mut p in permutations(rest) {
                    p.insert(0, first);
                    out.push(p);
                }
            }
            out
        }
        let mut sorted = c.to_vec();
        sorted.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        // permute within each tie group independently: enumerate all orders, keep the sorted ones
        let all = permutations(sorted.clone());
        let valid: Vec<_> = all
            .into_iter()
            .filter(|p| p.windows(2).all(|w| w[0].0 >= w[1].0))
            .collect();
        let mut total = QueryMetrics::default();
        for p in &valid {
            // distinct scores per position so the metric sees a strict order
            let strict: Vec<(f64, f64)> = p
                .iter()
                .enumerate()
                .map(|(i, (_, l))| (-(i as f64), *l))
                .collect();
            let m = query_metrics(&strict, &[], k, Gain::Exponential).unwrap();
            total.ndcg += m.ndcg / valid.len() as f64;
            total.mrr += m.mrr / valid.len() as f64;
            total.recall += m.recall / valid.len() as f64;
        }
        total
    }

    #[test]
    fn ties_give_the_expectation_over_random_orders() {
        for (c, k) in [
            (vec![(0.0, 0.0), (0.0, 2.0), (0.0, 0.0), (0.0, 1.0)], 2),
            (
                vec![
                    (1.0, 0.0),
                    (0.5, 0.0),
                    (0.5, 3.0),
                    (0.5, 0.0),
                    (0.2, 1.0),
                    (0.2, 0.0),
                ],
                3,
            ),
            (vec![(0.3, 1.0), (0.3, 1.0), (0.3, 0.0), (0.1, 2.0)], 1),
            (
                vec![(0.3, 0.0), (0.3, 0.0), (0.3, 0.0), (0.3, 4.0), (0.3, 0.0)],
                10,
            ),
        ] {
            let tie_aware = query_metrics(&c, &[], k, Gain::Exponential).unwrap();
            let expected = brute_force(&c, k);
            close(tie_aware.ndcg, expected.ndcg);
            close(tie_aware.mrr, expected.mrr);
            close(tie_aware.recall, expected.recall);
        }
    }
}
