//! Confidence intervals by resampling queries (the unit a ranking metric is averaged over), and a
//! paired t-test for the difference of two scores on the same queries.

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// A mean and its 95% percentile-bootstrap interval (`None` without resamples or queries).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// Means of the columns of `values` (row-major, `width` columns, one row per query) with 95%
/// intervals from `resamples` bootstrap resamples of the rows. All columns share the resamples, so
/// intervals of differences stored as columns are paired.
pub fn means(values: &[f64], width: usize, resamples: usize, seed: u64) -> Vec<Interval> {
    let rows = values.len().checked_div(width).unwrap_or(0);
    let mut sums = vec![0.0; width];
    for row in values.chunks_exact(width.max(1)) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    let mean = |s: f64| if rows == 0 { f64::NAN } else { s / rows as f64 };
    if resamples == 0 || rows == 0 {
        return sums
            .into_iter()
            .map(|s| Interval {
                mean: mean(s),
                low: None,
                high: None,
            })
            .collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); width];
    let mut resample = vec![0.0; width];
    for _ in 0..resamples {
        resample.iter_mut().for_each(|s| *s = 0.0);
        for _ in 0..rows {
            let row = &values[rng.random_range(0..rows) * width..][..width];
            for (s, v) in resample.iter_mut().zip(row) {
                *s += v;
            }
        }
        for (d, s) in draws.iter_mut().zip(&resample) {
            d.push(s / rows as f64);
        }
    }
    sums.into_iter()
        .zip(draws)
        .map(|(s, mut d)| {
            d.sort_by(f64::total_cmp);
            Interval {
                mean: mean(s),
                low: Some(quantile(&d, 0.025)),
                high: Some(quantile(&d, 0.975)),
            }
        })
        .collect()
}

/// Linear interpolation between the closest ranks (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// The paired comparison `a - b` of one metric over the same queries.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub metric: String,
    pub difference: Interval,
    pub p_value: Option<f64>,
    pub wins: u64,
    pub ties: u64,
    pub losses: u64,
}

/// `differences` (a - b per query) summarised: their mean's `interval`, a paired t-test and the
/// queries where a wins, ties (within 1e-12) or loses.
pub fn paired(metric: impl Into<String>, interval: Interval, differences: &[f64]) -> Paired {
    let count = |f: fn(f64) -> bool| differences.iter().filter(|d| f(**d)).count() as u64;
    Paired {
        metric: metric.into(),
        difference: interval,
        p_value: paired_t_test(differences),
        wins: count(|d| d > 1e-12),
        ties: count(|d| d.abs() <= 1e-12),
        losses: count(|d| d < -1e-12),
    }
}

/// Two-sided p-value of a paired t-test that the mean of `differences` is 0.
pub fn paired_t_test(differences: &[f64]) -> Option<f64> {
    let n = differences.len();
    if n < 2 {
        return None;
    }
    let mean = differences.iter().sum::<f64>() / n as f64;
    let var = differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    if var == 0.0 {
        return Some(if mean == 0.0 { 1.0 } else { 0.0 });
    }
    let t = mean / (var / n as f64).sqrt();
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).ok()?;
    Some((2.0 * (1.0 - dist.cdf(t.abs()))).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_cover_the_true_mean_about_95_percent_of_the_time() {
        // many samples of 200 Bernoulli(0.3) "queries": the 95% interval should contain 0.3 in
        // roughly 95% of them (percentile bootstrap undercovers slightly at this size)
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let trials = 300;
        let mut covered = 0;
        for t in 0..trials {
            let values: Vec<f64> = (0..200)
                .map(|_| f64::from(u8::from(rng.random_bool(0.3))))
                .collect();
            let i = means(&values, 1, 400, t)[0];
            if i.low.unwrap() <= 0.3 && 0.3 <= i.high.unwrap() {
                covered += 1;
            }
        }
        let rate = covered as f64 / trials as f64;
        assert!((0.91..=0.98).contains(&rate), "coverage {rate}");
    }

    #[test]
    fn fixed_seed_gives_fixed_intervals_and_columns_share_resamples() {
        let values = [0.1, 0.2, 0.5, 0.4, 0.9, 1.0, 0.3, 0.3];
        let a = means(&values, 2, 1000, 7);
        assert_eq!(a, means(&values, 2, 1000, 7));
        assert!((a[0].mean - 0.45).abs() < 1e-12);
        assert!(a[0].low.unwrap() <= a[0].mean && a[0].mean <= a[0].high.unwrap());
        assert!(means(&values, 2, 0, 7)[1].low.is_none());
    }

    #[test]
    fn t_test_matches_a_known_value() {
        // scipy.stats.ttest_1samp([1, 2, 3, 4, 5], 0): t = 4.2426, p = 0.013241
        let p = paired_t_test(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert!((p - 0.013_241).abs() < 1e-5, "{p}");
        assert_eq!(paired_t_test(&[0.0, 0.0]), Some(1.0));
    }
}
