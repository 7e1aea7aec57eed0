//! `mine pairs`: query pairs labelled by their co-purchased products (paper section 3, eq. 1-3).
//!
//! S(q) is the set of distinct products purchased from query q. For a pair (q, c) with
//! n = |S(q) ∩ S(c)| >= `min_copurchases`: overlap OS = n / min(|S(q)|, |S(c)|), Jaccard
//! JS = n / |S(q) ∪ S(c)|, label = OS * JS. Each input query keeps its best candidates by label:
//! the top `top_n`, or the top `top_share` of them when that is more (the paper's rule for very
//! popular queries). Random negatives (no co-purchased product at all) are added per query.
//!
//! Enumeration goes through products, never through a cartesian product of queries: the purchases
//! are held twice, as each query's products and as each product's queries, and a query's
//! candidates with their co-purchase counts are the queries of its products, counted in one dense
//! accumulator (Gustavson's row-by-row sparse product). Work is the sum over products of the
//! square of their query count, memory the purchases plus one accumulator per thread. Products
//! are bucketed by how many queries bought them (for the report), and a product bought from more
//! than `hot_cap` queries counts co-purchases among a deterministic sample of `hot_cap` of them
//! (the paper's divide-and-conquer of section 5.1): its other queries still own it in S(q) (the
//! set sizes are exact), but their co-purchases through it are not counted. The report says how
//! many pairs each bucket produced and what the sampling dropped.

use std::collections::HashMap;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

/// Settings of `mine pairs`.
#[derive(Debug, Clone, PartialEq)]
pub struct PairParams {
    /// Fewest distinct co-purchased products for a pair (the paper: 3, within a year).
    pub min_copurchases: u32,
    /// Candidates kept per input query: the top `top_n` by label ...
    pub top_n: usize,
    /// ... or the top `top_share` of its candidates when that is more.
    pub top_share: f64,
    /// Products bought from more queries than this count co-purchases among a sample of this many.
    pub hot_cap: usize,
    /// Random negatives per kept positive, per query.
    pub negative_ratio: f64,
    /// Seed of the hot-product sampling and the negatives.
    pub seed: u64,
}

impl Default for PairParams {
    fn default() -> Self {
        PairParams {
            min_copurchases: 3,
            top_n: 30,
            top_share: 0.6,
            hot_cap: 1000,
            negative_ratio: 1.0,
            seed: 42,
        }
    }
}

/// Purchases, interned: queries and products are dense ids (queries in name order), held as each
/// query's sorted products and each product's queries.
#[derive(Debug, Default)]
pub struct Purchases {
    pub queries: Vec<String>,
    pub products: Vec<String>,
    query_offsets: Vec<usize>,
    query_products: Vec<u32>,
    product_offsets: Vec<usize>,
    product_queries: Vec<u32>,
}

impl Purchases {
    /// From (query, product) pairs, in any order, duplicates allowed.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut query_ids: HashMap<&'a str, u32> = HashMap::new();
        let mut product_ids: HashMap<&'a str, u32> = HashMap::new();
        let mut edges: Vec<(u32, u32)> = Vec::new();
        for (q, p) in pairs {
            let next = query_ids.len() as u32;
            let q = *query_ids.entry(q).or_insert(next);
            let next = product_ids.len() as u32;
            let p = *product_ids.entry(p).or_insert(next);
            edges.push((q, p));
        }
        // queries renumbered in name order: the output is ordered by query
        let mut names: Vec<(&str, u32)> = query_ids.into_iter().collect();
        names.sort_unstable();
        let mut renumber = vec![0u32; names.len()];
        for (new, (_, old)) in names.iter().enumerate() {
            renumber[*old as usize] = new as u32;
        }
        let queries: Vec<String> = names.iter().map(|(n, _)| n.to_string()).collect();
        let mut products = vec![String::new(); product_ids.len()];
        for (name, id) in product_ids {
            products[id as usize] = name.to_string();
        }
        for e in &mut edges {
            e.0 = renumber[e.0 as usize];
        }
        edges.sort_unstable();
        edges.dedup();
        let (query_offsets, query_products) =
            csr(queries.len(), edges.iter().map(|&(q, p)| (q, p)));
        edges.sort_unstable_by_key(|&(q, p)| (p, q));
        let (product_offsets, product_queries) =
            csr(products.len(), edges.iter().map(|&(q, p)| (p, q)));
        Purchases {
            queries,
            products,
            query_offsets,
            query_products,
            product_offsets,
            product_queries,
        }
    }

    /// S(q): the products purchased from query `q`, sorted by id.
    pub fn products_of(&self, q: u32) -> &[u32] {
        &self.query_products[self.query_offsets[q as usize]..self.query_offsets[q as usize + 1]]
    }

    /// The queries product `p` was purchased from, by id.
    pub fn queries_of(&self, p: u32) -> &[u32] {
        &self.product_queries
            [self.product_offsets[p as usize]..self.product_offsets[p as usize + 1]]
    }

    pub fn purchase_count(&self) -> usize {
        self.query_products.len()
    }
}

/// Offsets and values of a compressed sparse row layout of `rows` rows, from (row, value) pairs
/// sorted by row.
fn csr(rows: usize, pairs: impl Iterator<Item = (u32, u32)>) -> (Vec<usize>, Vec<u32>) {
    let mut offsets = vec![0usize; rows + 1];
    let mut values = Vec::new();
    for (row, value) in pairs {
        offsets[row as usize + 1] += 1;
        values.push(value);
    }
    for i in 0..rows {
        offsets[i + 1] += offsets[i];
    }
    (offsets, values)
}

/// One output row.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRow {
    pub query: u32,
    pub candidate: u32,
    pub n_copurchase: u32,
    pub n_union: u32,
    pub n_min: u32,
    pub jaccard: f64,
    pub overlap: f64,
    pub label: f64,
    pub is_negative: bool,
}

impl PairRow {
    fn new(query: u32, candidate: u32, shared: u32, size_q: u32, size_c: u32) -> Self {
        let n_union = size_q + size_c - shared;
        let n_min = size_q.min(size_c);
        let jaccard = f64::from(shared) / f64::from(n_union);
        let overlap = f64::from(shared) / f64::from(n_min);
        PairRow {
            query,
            candidate,
            n_copurchase: shared,
            n_union,
            n_min,
            jaccard,
            overlap,
            label: overlap * jaccard,
            is_negative: false,
        }
    }
}

/// Products grouped by how many queries bought them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket {
    /// Queries per product: `from..=to` (`to` = None: no upper bound).
    pub from: usize,
    pub to: Option<usize>,
    pub products: u64,
    /// (query, product) purchases of these products.
    pub purchases: u64,
    /// Unordered query pairs their co-purchases were counted for (after sampling).
    pub pairs: u64,
    /// Hot products among them (more than `hot_cap` queries), sampled.
    pub sampled_products: u64,
    /// Purchases of sampled products left out of the co-purchase counts.
    pub dropped_purchases: u64,
    /// Unordered pairs not counted because of the sampling.
    pub dropped_pairs: u64,
}

/// What mining found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MineReport {
    pub queries: u64,
    pub products: u64,
    pub purchases: u64,
    pub buckets: Vec<Bucket>,
    /// Ordered (query, candidate) pairs with at least `min_copurchases` co-purchases.
    pub qualifying_pairs: u64,
    /// Of those, kept by the top-n / top-share rule.
    pub positives: u64,
    pub negatives: u64,
    /// Queries that got fewer negatives than the ratio asks for (too few disjoint queries).
    pub queries_short_of_negatives: u64,
    /// Input queries with at least one kept positive.
    pub queries_with_pairs: u64,
}

/// Bucket bounds: 1, 2-9, 10-99, 100-999, 1000-9999, 10000+ queries per product.
const BUCKET_BOUNDS: [(usize, Option<usize>); 6] = [
    (1, Some(1)),
    (2, Some(9)),
    (10, Some(99)),
    (100, Some(999)),
    (1000, Some(9999)),
    (10000, None),
];

fn pairs_of(n: usize) -> u64 {
    (n as u64) * (n as u64).saturating_sub(1) / 2
}

/// Each product's queries whose co-purchases are counted: all of them, or for hot products the
/// `hot_cap` with the smallest stable hash of (seed, product, query).
fn counted_queries(
    purchases: &Purchases,
    params: &PairParams,
) -> (Vec<usize>, Vec<u32>, Vec<Bucket>) {
    let mut buckets: Vec<Bucket> = BUCKET_BOUNDS
        .iter()
        .map(|&(from, to)| Bucket {
            from,
            to,
            ..Bucket::default()
        })
        .collect();
    let seed = params.seed.to_le_bytes();
    let mut offsets = Vec::with_capacity(purchases.products.len() + 1);
    offsets.push(0);
    let mut values = Vec::new();
    for p in 0..purchases.products.len() as u32 {
        let all = purchases.queries_of(p);
        let bucket = buckets
            .iter_mut()
            .find(|b| all.len() >= b.from && b.to.is_none_or(|t| all.len() <= t))
            .expect("buckets cover every size");
        bucket.products += 1;
        bucket.purchases += all.len() as u64;
        if all.len() > params.hot_cap {
            let name = purchases.products[p as usize].as_bytes();
            let mut ranked: Vec<(u64, u32)> = all
                .iter()
                .map(|&q| {
                    let query = purchases.queries[q as usize].as_bytes();
                    (crate::hash::fnv1a64_parts(&[&seed, name, query]), q)
                })
                .collect();
            ranked.sort_unstable();
            let mut kept: Vec<u32> = ranked[..params.hot_cap].iter().map(|&(_, q)| q).collect();
            kept.sort_unstable();
            bucket.sampled_products += 1;
            bucket.dropped_purchases += (all.len() - kept.len()) as u64;
            bucket.dropped_pairs += pairs_of(all.len()) - pairs_of(kept.len());
            bucket.pairs += pairs_of(kept.len());
            values.extend_from_slice(&kept);
        } else {
            bucket.pairs += pairs_of(all.len());
            values.extend_from_slice(all);
        }
        offsets.push(values.len());
    }
    (offsets, values, buckets)
}

/// Mines the labelled pairs: per input query (in name order) its kept positives by label
/// (descending; ties by candidate name), then its negatives.
pub fn mine(purchases: &Purchases, params: &PairParams) -> (Vec<PairRow>, MineReport) {
    let (offsets, counted, buckets) = counted_queries(purchases, params);
    let n = purchases.queries.len();
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(n.max(1));
    let chunk = n.div_ceil(threads.max(1)).max(1);
    let results: Vec<(Vec<PairRow>, MineReport)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let (offsets, counted) = (&offsets, &counted);
                scope.spawn(move || {
                    mine_queries(
                        purchases,
                        params,
                        offsets,
                        counted,
                        start..(start + chunk).min(n),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a mining thread panicked"))
            .collect()
    });
    let mut rows = Vec::new();
    let mut report = MineReport {
        queries: n as u64,
        products: purchases.products.len() as u64,
        purchases: purchases.purchase_count() as u64,
        buckets,
        ..MineReport::default()
    };
    for (part, counts) in results {
        rows.extend(part);
        report.qualifying_pairs += counts.qualifying_pairs;
        report.positives += counts.positives;
        report.negatives += counts.negatives;
        report.queries_short_of_negatives += counts.queries_short_of_negatives;
        report.queries_with_pairs += counts.queries_with_pairs;
    }
    (rows, report)
}

/// How many of `candidates` ranked candidates a query keeps.
pub fn kept_count(candidates: usize, params: &PairParams) -> usize {
    let share = (params.top_share * candidates as f64).ceil() as usize;
    candidates.min(params.top_n.max(share))
}

fn mine_queries(
    purchases: &Purchases,
    params: &PairParams,
    offsets: &[usize],
    counted: &[u32],
    range: std::ops::Range<usize>,
) -> (Vec<PairRow>, MineReport) {
    let n = purchases.queries.len();
    let mut shared = vec![0u32; n];
    let mut touched: Vec<u32> = Vec::new();
    let mut rows = Vec::new();
    let mut report = MineReport::default();
    for q in range {
        let q = q as u32;
        let s_q = purchases.products_of(q);
        for &p in s_q {
            let queries = &counted[offsets[p as usize]..offsets[p as usize + 1]];
            // a sampled-out query still owns the product, but does not count through it
            if queries.binary_search(&q).is_err() {
                continue;
            }
            for &c in queries {
                if c != q {
                    if shared[c as usize] == 0 {
                        touched.push(c);
                    }
                    shared[c as usize] += 1;
                }
            }
        }
        let size_q = s_q.len() as u32;
        let mut candidates: Vec<PairRow> = touched
            .iter()
            .filter(|&&c| shared[c as usize] >= params.min_copurchases)
            .map(|&c| {
                let size_c = purchases.products_of(c).len() as u32;
                PairRow::new(q, c, shared[c as usize], size_q, size_c)
            })
            .collect();
        for &c in &touched {
            shared[c as usize] = 0;
        }
        touched.clear();
        report.qualifying_pairs += candidates.len() as u64;
        candidates.sort_by(|a, b| {
            b.label.total_cmp(&a.label).then_with(|| {
                purchases.queries[a.candidate as usize]
                    .cmp(&purchases.queries[b.candidate as usize])
            })
        });
        candidates.truncate(kept_count(candidates.len(), params));
        if candidates.is_empty() {
            continue;
        }
        report.queries_with_pairs += 1;
        report.positives += candidates.len() as u64;
        let wanted = (params.negative_ratio * candidates.len() as f64).round() as usize;
        let negatives = negatives_for(purchases, params, q, wanted);
        if negatives.len() < wanted {
            report.queries_short_of_negatives += 1;
        }
        report.negatives += negatives.len() as u64;
        rows.extend(candidates);
        rows.extend(negatives);
    }
    (rows, report)
}

/// Up to `wanted` random queries with no product in common with `q` (checked on the full sets),
/// distinct, in draw order; deterministic for a seed and query name.
fn negatives_for(
    purchases: &Purchases,
    params: &PairParams,
    q: u32,
    wanted: usize,
) -> Vec<PairRow> {
    let n = purchases.queries.len();
    if wanted == 0 || n < 2 {
        return Vec::new();
    }
    let name = purchases.queries[q as usize].as_bytes();
    let mut rng = ChaCha8Rng::seed_from_u64(crate::hash::fnv1a64_parts(&[
        &params.seed.to_le_bytes(),
        b"negatives",
        name,
    ]));
    let s_q = purchases.products_of(q);
    let mut chosen: Vec<u32> = Vec::with_capacity(wanted);
    let mut rows = Vec::with_capacity(wanted);
    for _ in 0..wanted.saturating_mul(20).max(20) {
        if rows.len() == wanted {
            break;
        }
        let c = rng.random_range(0..n) as u32;
        if c == q || chosen.contains(&c) || intersects(s_q, purchases.products_of(c)) {
            continue;
        }
        chosen.push(c);
        let mut row = PairRow::new(
            q,
            c,
            0,
            s_q.len() as u32,
            purchases.products_of(c).len() as u32,
        );
        row.is_negative = true;
        rows.push(row);
    }
    rows
}

/// Whether two sorted id lists share an element.
fn intersects(a: &[u32], b: &[u32]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// Train / validation / test by a stable hash of the input query: all rows of a query fall in
/// one split, so no query is seen in training and evaluated on.
pub fn split_of(query: &str, validation: f64, test: f64) -> &'static str {
    let x = crate::hash::fnv1a64_parts(&[b"split", query.as_bytes()]) as f64 / 2f64.powi(64);
    if x < test {
        "test"
    } else if x < test + validation {
        "validation"
    } else {
        "train"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: every pair of queries, their sets intersected directly.
    fn brute_force(purchases: &Purchases, min: u32) -> Vec<(u32, u32, u32)> {
        let mut out = Vec::new();
        let n = purchases.queries.len() as u32;
        for q in 0..n {
            for c in 0..n {
                if q == c {
                    continue;
                }
                let a = purchases.products_of(q);
                let shared = a
                    .iter()
                    .filter(|p| purchases.products_of(c).contains(p))
                    .count() as u32;
                if shared >= min {
                    out.push((q, c, shared));
                }
            }
        }
        out
    }

    fn random_purchases(
        seed: u64,
        queries: usize,
        products: usize,
        per_query: usize,
    ) -> Vec<(String, String)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        for q in 0..queries {
            for _ in 0..rng.random_range(1..=per_query) {
                // a skewed catalogue: low product ids are popular
                let p = (rng.random_range(0.0f64..1.0).powi(3) * products as f64) as usize;
                out.push((format!("q{q:04}"), format!("p{p}")));
            }
        }
        out
    }

    #[test]
    fn enumeration_through_products_equals_brute_force() {
        for seed in 0..5 {
            let raw = random_purchases(seed, 120, 60, 15);
            let purchases =
                Purchases::from_pairs(raw.iter().map(|(q, p)| (q.as_str(), p.as_str())));
            let params = PairParams {
                min_copurchases: 2,
                top_n: usize::MAX,
                negative_ratio: 0.0,
                hot_cap: usize::MAX,
                ..PairParams::default()
            };
            let (rows, report) = mine(&purchases, &params);
            let mut got: Vec<(u32, u32, u32)> = rows
                .iter()
                .map(|r| (r.query, r.candidate, r.n_copurchase))
                .collect();
            got.sort_unstable();
            assert_eq!(got, brute_force(&purchases, 2), "seed {seed}");
            assert_eq!(report.qualifying_pairs, got.len() as u64);
            let pairs: u64 = report.buckets.iter().map(|b| b.pairs).sum();
            let expected: u64 = (0..purchases.products.len() as u32)
                .map(|p| pairs_of(purchases.queries_of(p).len()))
                .sum();
            assert_eq!(pairs, expected);
        }
    }

    #[test]
    fn keeps_top_n_or_top_share_whichever_is_more() {
        let params = PairParams::default();
        assert_eq!(kept_count(10, &params), 10);
        assert_eq!(kept_count(30, &params), 30);
        assert_eq!(kept_count(40, &params), 30);
        assert_eq!(kept_count(50, &params), 30);
        assert_eq!(kept_count(51, &params), 31); // ceil(30.6)
        assert_eq!(kept_count(1000, &params), 600);
    }

    #[test]
    fn hot_products_are_sampled_deterministically_and_reported() {
        // product "hot" bought from 50 queries, each query also buys the 3 products of its group of 5
        let mut raw = Vec::new();
        for q in 0..50 {
            raw.push((format!("q{q:02}"), "hot".to_string()));
            for k in 0..3 {
                raw.push((format!("q{q:02}"), format!("g{}-{k}", q / 5)));
            }
        }
        let purchases = Purchases::from_pairs(raw.iter().map(|(q, p)| (q.as_str(), p.as_str())));
        let params = PairParams {
            hot_cap: 20,
            min_copurchases: 1,
            negative_ratio: 0.0,
            top_n: usize::MAX,
            ..PairParams::default()
        };
        let (rows, report) = mine(&purchases, &params);
        let hot = &report.buckets[2]; // 10-99 queries per product
        assert_eq!((hot.products, hot.sampled_products), (1, 1));
        assert_eq!(hot.dropped_purchases, 30);
        assert_eq!(hot.dropped_pairs, pairs_of(50) - pairs_of(20));
        // set sizes stay exact: every query owns 4 products
        assert!(rows.iter().all(|r| r.n_union == 8 - r.n_copurchase));
        let (again, _) = mine(&purchases, &params);
        assert_eq!(rows, again);
        // shuffled input order: the same sample
        let mut shuffled = raw.clone();
        shuffled.reverse();
        let purchases2 =
            Purchases::from_pairs(shuffled.iter().map(|(q, p)| (q.as_str(), p.as_str())));
        assert_eq!(mine(&purchases2, &params).0, rows);
    }

    #[test]
    fn negatives_share_no_product_and_follow_the_ratio() {
        let raw = random_purchases(9, 300, 400, 6);
        let purchases = Purchases::from_pairs(raw.iter().map(|(q, p)| (q.as_str(), p.as_str())));
        let params = PairParams {
            min_copurchases: 1,
            negative_ratio: 2.0,
            ..PairParams::default()
        };
        let (rows, report) = mine(&purchases, &params);
        let negatives: Vec<_> = rows.iter().filter(|r| r.is_negative).collect();
        assert!(!negatives.is_empty());
        assert_eq!(negatives.len() as u64, report.negatives);
        for r in &negatives {
            assert!(!intersects(
                purchases.products_of(r.query),
                purchases.products_of(r.candidate)
            ));
            assert_eq!((r.n_copurchase, r.label), (0, 0.0));
        }
        for q in 0..purchases.queries.len() as u32 {
            let pos = rows
                .iter()
                .filter(|r| r.query == q && !r.is_negative)
                .count();
            let neg = rows
                .iter()
                .filter(|r| r.query == q && r.is_negative)
                .count();
            assert!(neg <= 2 * pos);
        }
        assert_eq!(report.positives + report.negatives, rows.len() as u64);
    }

    #[test]
    fn splits_by_query_are_stable_and_near_their_shares() {
        let counts = (0..10_000).fold([0usize; 3], |mut acc, i| {
            match split_of(&format!("query {i}"), 0.1, 0.1) {
                "train" => acc[0] += 1,
                "validation" => acc[1] += 1,
                _ => acc[2] += 1,
            }
            acc
        });
        assert!((7_700..8_300).contains(&counts[0]), "{counts:?}");
        assert!((800..1_200).contains(&counts[1]), "{counts:?}");
        assert_eq!(
            split_of("goya lady fingers", 0.1, 0.1),
            split_of("goya lady fingers", 0.1, 0.1)
        );
    }
}
