//! A plain in-memory implementation of the feature semantics, written for clarity rather than
//! speed. It is the oracle of the property tests: the engine must agree with it on any input.
//!
//! It follows the semantics literally (maps and sorts, no SQL), so a mistake in a SQL
//! stage shows up as a disagreement rather than being copied.

use std::collections::{BTreeMap, HashMap};

use crate::config::FeatureParams;
use crate::formula;

#[derive(Debug, Clone, PartialEq)]
pub struct EngagementRow {
    pub query: String,
    pub product_id: String,
    pub impressions: i64,
    pub clicks: i64,
    pub adds: i64,
    pub purchases: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NeighbourRow {
    pub query: String,
    pub neighbour: String,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub query: String,
    pub product_id: String,
    pub h: f64,
    pub prior: f64,
    pub alpha: f64,
    pub f: f64,
    pub impressions: i64,
    pub n_neighbours: i64,
    pub n_contributing: i64,
}

/// Computes the feature table, sorted by (query, product_id). Engagement rows sharing a key are
/// summed (the engine's `on_duplicate = "sum"`; with the default policy the engine rejects them).
pub fn features(
    engagement: &[EngagementRow],
    neighbours: &[NeighbourRow],
    p: &FeatureParams,
) -> Vec<FeatureRow> {
    // history: (q, p) -> counts, summed over duplicate rows
    let mut counts: BTreeMap<(&str, &str), [i64; 4]> = BTreeMap::new();
    for r in engagement {
        let c = counts.entry((&r.query, &r.product_id)).or_default();
        c[0] += r.impressions;
        c[1] += r.clicks;
        c[2] += r.adds;
        c[3] += r.purchases;
    }
    let weights = p.history_weights();
    let history: BTreeMap<(&str, &str), (i64, f64)> = counts
        .iter()
        .map(|(&key, c)| {
            (
                key,
                (
                    c[0],
                    formula::history(&weights, c[0] as f64, c[1] as f64, c[2] as f64, c[3] as f64),
                ),
            )
        })
        .collect();
    let mut by_query: HashMap<&str, Vec<(&str, f64)>> = HashMap::new();
    let mut max_impressions: HashMap<&str, i64> = HashMap::new();
    for (&(q, product), &(impressions, h)) in &history {
        by_query.entry(q).or_default().push((product, h));
        let m = max_impressions.entry(q).or_insert(0);
        *m = (*m).max(impressions);
    }

    // neighbour sets: drop self-pairs, low scores, neighbours without history; max score per pair
    let mut best: HashMap<&str, HashMap<&str, f64>> = HashMap::new();
    for r in neighbours {
        if r.query == r.neighbour
            || r.score < p.min_score
            || !by_query.contains_key(r.neighbour.as_str())
        {
            continue;
        }
        let score = best
            .entry(&r.query)
            .or_default()
            .entry(&r.neighbour)
            .or_insert(f64::NEG_INFINITY);
        *score = score.max(r.score);
    }
    let mut sets: HashMap<&str, Vec<(&str, f64)>> = HashMap::new();
    for (q, candidates) in best {
        let mut ranked: Vec<(&str, f64)> = candidates.into_iter().collect();
        ranked.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        ranked.truncate(p.top_k as usize);
        sets.insert(q, ranked);
    }

    // prior: weighted mean over the set of H(c,p), H = 0 where c has no row for p
    let mut prior: BTreeMap<(&str, &str), (f64, i64)> = BTreeMap::new();
    for (&q, set) in &sets {
        let score_sum: f64 = set.iter().map(|(_, s)| s).sum();
        let total = formula::weight_total(p.prior_weighting, set.len() as f64, score_sum);
        let mut sums: BTreeMap<&str, (f64, i64)> = BTreeMap::new();
        for &(c, score) in set {
            let weight = formula::neighbour_weight(p.prior_weighting, score, score_sum);
            for &(product, h) in &by_query[c] {
                let entry = sums.entry(product).or_insert((0.0, 0));
                entry.0 += weight * h;
                entry.1 += 1;
            }
        }
        for (product, (sum, n)) in sums {
            prior.insert((q, product), (formula::prior(sum, total), n));
        }
    }

    // blend over the union of history and prior pairs
    let mut keys: Vec<(&str, &str)> = history.keys().chain(prior.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .map(|(q, product)| {
            let (impressions, h) = history.get(&(q, product)).copied().unwrap_or((0, 0.0));
            let (prior_value, n_contributing) =
                prior.get(&(q, product)).copied().unwrap_or((0.0, 0));
            let max_i = max_impressions.get(q).copied().unwrap_or(0);
            let alpha = formula::alpha(&p.confidence(), impressions as f64, max_i as f64);
            FeatureRow {
                query: q.to_string(),
                product_id: product.to_string(),
                h,
                prior: prior_value,
                alpha,
                f: formula::blend(h, prior_value, alpha, p.beta),
                impressions,
                n_neighbours: sets.get(q).map_or(0, |s| s.len() as i64),
                n_contributing,
            }
        })
        .collect()
}
