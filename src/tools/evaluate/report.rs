//! What `evaluate features` and `evaluate neighbours` share: query segments by traffic, the
//! bootstrap summary of per-query metrics by segment with its paired comparison, the per-query
//! file, and the text of the tables.

use std::fmt;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use serde::Serialize;

use super::bootstrap::{self, Interval, Paired};
use crate::config::OutputFormat;
use crate::error::{Error, Result};
use crate::io::sink;
use crate::io::storage::OutputLocation;

/// Query segments by traffic: the query's largest impression count over its products (about its
/// number of searches: the top product is seen in nearly every search).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Segments {
    /// Queries with traffic below this are tail.
    pub tail_below: f64,
    /// Queries with traffic at or above this are head; in between, torso.
    pub head_from: f64,
}

impl Segments {
    pub fn parse(text: &str) -> Result<Segments> {
        let bad = || {
            Error::config(format!(
                "--segments '{text}': expected TAIL_BELOW,HEAD_FROM with 0 < TAIL_BELOW <= HEAD_FROM, e.g. 20,1000"
            ))
        };
        let (a, b) = text.split_once(',').ok_or_else(bad)?;
        let (tail_below, head_from): (f64, f64) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if !(tail_below > 0.0 && tail_below <= head_from && head_from.is_finite()) {
            return Err(bad());
        }
        Ok(Segments {
            tail_below,
            head_from,
        })
    }

    pub fn of(&self, traffic: f64) -> usize {
        if traffic >= self.head_from {
            0
        } else if traffic >= self.tail_below {
            1
        } else {
            2
        }
    }
}

/// The segments, in report order: head, torso, tail (indices 0-2 of [`Segments::of`]), then all.
pub const SEGMENTS: [&str; 4] = ["head", "torso", "tail", "all"];

/// One segment's summary: the mean and interval of every (item, metric) column, item-major, and
/// with a pair the paired comparison per metric.
pub struct SegmentSummary {
    pub segment: &'static str,
    pub queries: u64,
    pub means: Vec<Interval>,
    pub paired: Vec<Paired>,
}

/// Summarises per-query metric rows by segment. `rows` holds, for each query, `items` x
/// `metrics.len()` values (item-major: every metric of item 0, then of item 1, ...); `segment[q]`
/// is query q's segment (an index of [`SEGMENTS`]), and every query is also in "all". Without
/// `segmented` only "all" is reported. With `pair` (two item indices) each metric's per-query
/// difference gets its own interval and a paired test. Each segment resamples with its own
/// stream, derived from `seed`, so segments do not depend on each other.
#[allow(clippy::too_many_arguments)]
pub fn by_segment(
    rows: &[f64],
    items: usize,
    metrics: &[String],
    segment: &[usize],
    segmented: bool,
    pair: Option<(usize, usize)>,
    resamples: usize,
    seed: u64,
) -> Vec<SegmentSummary> {
    let width = metrics.len();
    let row_len = items * width;
    // columns: item x metric, then (with a pair) the differences per metric
    let columns = row_len + if pair.is_some() { width } else { 0 };
    let mut summaries = Vec::new();
    for (si, name) in SEGMENTS.iter().enumerate() {
        if !segmented && si != 3 {
            continue;
        }
        let members: Vec<usize> = (0..segment.len())
            .filter(|&q| si == 3 || segment[q] == si)
            .collect();
        let mut values = Vec::with_capacity(members.len() * columns);
        for &q in &members {
            let row = &rows[q * row_len..(q + 1) * row_len];
            values.extend_from_slice(row);
            if let Some((a, b)) = pair {
                for m in 0..width {
                    values.push(row[a * width + m] - row[b * width + m]);
                }
            }
        }
        let intervals = bootstrap::means(&values, columns, resamples, seed ^ si as u64);
        let mut paired = Vec::new();
        if pair.is_some() {
            for (m, metric) in metrics.iter().enumerate() {
                let differences: Vec<f64> = values
                    .chunks_exact(columns)
                    .map(|row| row[row_len + m])
                    .collect();
                paired.push(bootstrap::paired(
                    metric.clone(),
                    intervals[row_len + m],
                    &differences,
                ));
            }
        }
        summaries.push(SegmentSummary {
            segment: name,
            queries: members.len() as u64,
            means: intervals[..row_len].to_vec(),
            paired,
        });
    }
    summaries
}

/// The format of the per-query file, from its extension.
pub fn per_query_format(path: &str) -> Result<OutputFormat> {
    OutputFormat::from_extension(path).ok_or_else(|| {
        Error::config(format!(
            "--per-query {path}: use a .parquet, .csv or .ndjson file"
        ))
    })
}

/// Writes the per-query metrics to `path` (local or object store), atomically.
pub async fn write_per_query(ctx: &SessionContext, batch: RecordBatch, path: &str) -> Result<()> {
    let format = per_query_format(path)?;
    let location = OutputLocation::resolve(ctx.runtime_env().as_ref(), path)?;
    let cancel = tokio_util::sync::CancellationToken::new();
    sink::write_atomic(ctx.read_batch(batch)?, &location, format, &cancel, |_| {}).await?;
    Ok(())
}

/// The header's note on intervals.
pub fn ci_note(bootstrap: usize) -> String {
    if bootstrap > 0 {
        format!(" [95% CI, {bootstrap} bootstrap resamples of queries]")
    } else {
        String::new()
    }
}

/// The paired table of a comparison `a - b`: one line per segment and metric. `metric_width`
/// is the metric column's width, `label` a metric's name as shown.
pub fn write_paired<'a>(
    f: &mut fmt::Formatter<'_>,
    (a, b): &(String, String),
    segments: impl Iterator<Item = (&'a str, &'a [Paired])>,
    metric_width: usize,
    label: impl Fn(&str) -> String,
) -> fmt::Result {
    let width = INTERVAL_WIDTH;
    writeln!(f)?;
    writeln!(
        f,
        "# paired: {a} - {b} per query (mean [95% CI]), paired t-test p, queries where {a} wins / ties / loses"
    )?;
    writeln!(
        f,
        "{:<8} {:<metric_width$} {:<width$} {:>8} {:>8} {:>8} {:>8}",
        "segment", "metric", "difference", "p", "wins", "ties", "losses"
    )?;
    for (segment, paired) in segments {
        for p in paired {
            writeln!(
                f,
                "{:<8} {:<metric_width$} {:<width$} {:>8} {:>8} {:>8} {:>8}",
                segment,
                label(&p.metric),
                fmt_interval(&p.difference, true),
                fmt_p(p.p_value),
                p.wins,
                p.ties,
                p.losses
            )?;
        }
    }
    Ok(())
}

/// The width of an interval's column in the tables.
pub const INTERVAL_WIDTH: usize = 30;

/// `mean [low, high]` to four decimals (signed for differences), `-` when undefined.
pub fn fmt_interval(i: &Interval, signed: bool) -> String {
    let v = |x: f64| {
        if signed {
            format!("{x:+.4}")
        } else {
            format!("{x:.4}")
        }
    };
    if i.mean.is_nan() {
        return "-".into();
    }
    match (i.low, i.high) {
        (Some(l), Some(h)) => format!("{} [{}, {}]", v(i.mean), v(l), v(h)),
        _ => v(i.mean),
    }
}

/// A p-value to four decimals, `<1e-4` below that, `-` when undefined.
pub fn fmt_p(p: Option<f64>) -> String {
    match p {
        None => "-".into(),
        Some(p) if p < 1e-4 => "<1e-4".into(),
        Some(p) => format!("{p:.4}"),
    }
}
