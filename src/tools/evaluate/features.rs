//! `evaluate features`: rank each query's candidate products (the feature table's rows) by each
//! score and measure the ranking against held-out outcomes, by query segment, with bootstrap
//! intervals and a paired comparison of two scores.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use futures::StreamExt;
use serde::Serialize;

use super::bootstrap::{self, Interval, Paired};
use super::metrics::{Gain, QueryMetrics, query_metrics};
use crate::config::{ExecutionConfig, InputSpec, OutputFormat};
use crate::error::{Error, Result};
use crate::io::sink;
use crate::io::storage::OutputLocation;
use crate::io::tables;
use crate::session;
use crate::tools::feature_table;
use crate::tools::labels;

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

    pub(super) fn of(&self, traffic: f64) -> usize {
        if traffic >= self.head_from {
            0
        } else if traffic >= self.tail_below {
            1
        } else {
            2
        }
    }
}

pub const SEGMENTS: [&str; 4] = ["head", "torso", "tail", "all"];
pub const METRICS: [&str; 3] = ["ndcg", "mrr", "recall"];

#[derive(Debug, Clone)]
pub struct EvaluateSpec {
    pub feature_table: InputSpec,
    pub outcomes: InputSpec,
    /// Score columns of the feature table to rank by.
    pub scores: Vec<String>,
    /// Two of `scores` to compare pairwise (first minus second).
    pub compare: Option<(String, String)>,
    pub k: usize,
    pub gain: Gain,
    pub segments: Segments,
    pub bootstrap: usize,
    pub seed: u64,
    /// Per-query metrics written here (Parquet, CSV or NDJSON by extension).
    pub per_query: Option<String>,
    pub execution: ExecutionConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreResult {
    pub score: String,
    pub ndcg: Interval,
    pub mrr: Interval,
    pub recall: Interval,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentResult {
    pub segment: &'static str,
    pub queries: u64,
    pub scores: Vec<ScoreResult>,
    pub paired: Vec<Paired>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub k: usize,
    pub gain: Gain,
    pub segments_by_traffic: Segments,
    pub bootstrap: usize,
    pub seed: u64,
    pub compare: Option<(String, String)>,
    /// Queries of the feature table with at least one relevant outcome: the ones evaluated.
    pub evaluated_queries: u64,
    /// Queries of the feature table without a relevant outcome (metrics undefined, left out).
    pub queries_without_relevant_outcome: u64,
    /// Queries with a relevant outcome that the feature table has no candidates for.
    pub outcome_queries_without_candidates: u64,
    pub segments: Vec<SegmentResult>,
}

/// The metrics of every evaluated query: (segment index, metrics per score).
struct PerQuery {
    queries: Vec<String>,
    traffic: Vec<f64>,
    segment: Vec<usize>,
    /// `metrics[q * scores + s]`
    metrics: Vec<QueryMetrics>,
}

pub async fn evaluate(spec: &EvaluateSpec) -> Result<Evaluation> {
    let ctx = session::new_context(&spec.execution)?;
    let table = feature_table::open(&ctx, "feature table", &spec.feature_table).await?;
    let outcomes = labels::open(&ctx, "outcomes", &spec.outcomes).await?;
    for score in &spec.scores {
        if !table.numeric.contains(score) {
            return Err(Error::config(format!(
                "--scores: the feature table has no numeric column '{score}'; it has {}",
                table.numeric.join(", ")
            )));
        }
    }
    if !table.numeric.iter().any(|c| c == "impressions") {
        return Err(crate::error::BadInput::new(
            table.input.role,
            &table.input.uri,
            "no impressions column to segment queries by traffic",
        )
        .column("impressions")
        .expected("the feature table as `run` writes it")
        .into());
    }
    if let Some((a, b)) = &spec.compare {
        for s in [a, b] {
            if !spec.scores.contains(s) {
                return Err(Error::config(format!(
                    "--compare: '{s}' is not one of --scores ({})",
                    spec.scores.join(",")
                )));
            }
        }
    }
    ctx.register_table("features", table.input.typed.clone().into_view())?;
    ctx.register_table("outcomes", outcomes.input.typed.clone().into_view())?;

    let missing = missing_relevant(&ctx).await?;
    let absent = scalar(
        &ctx,
        "SELECT COUNT(DISTINCT query) FROM outcomes WHERE label > 0 \
         AND query NOT IN (SELECT query FROM features)",
    )
    .await?;
    let per_query = collect(&ctx, spec, &missing).await?;
    let total_queries = scalar(&ctx, "SELECT COUNT(DISTINCT query) FROM features").await?;
    if let Some(path) = &spec.per_query {
        write_per_query(&ctx, spec, &per_query, path).await?;
    }
    Ok(summarise(spec, &per_query, total_queries, absent))
}

async fn scalar(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<u64> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches.iter().find(|b| b.num_rows() > 0).map_or(0, |b| {
        b.column(0).as_primitive::<Int64Type>().value(0).max(0) as u64
    }))
}

/// Labels of relevant outcomes that are not candidates, by query.
async fn missing_relevant(
    ctx: &datafusion::prelude::SessionContext,
) -> Result<HashMap<String, Vec<f64>>> {
    let batches = ctx
        .sql(
            "SELECT o.query, o.label FROM outcomes AS o \
             LEFT ANTI JOIN features AS f ON o.query = f.query AND o.product_id = f.product_id \
             WHERE o.label > 0 AND o.query IN (SELECT query FROM features)",
        )
        .await?
        .collect()
        .await?;
    let mut missing: HashMap<String, Vec<f64>> = HashMap::new();
    for batch in &batches {
        let queries = cast(batch.column(0), &DataType::Utf8)?;
        let queries = queries.as_string::<i32>();
        let labels = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            missing
                .entry(queries.value(row).to_string())
                .or_default()
                .push(labels.value(row) as f64);
        }
    }
    Ok(missing)
}

/// Streams the candidates query by query and computes every query's metrics.
async fn collect(
    ctx: &datafusion::prelude::SessionContext,
    spec: &EvaluateSpec,
    missing: &HashMap<String, Vec<f64>>,
) -> Result<PerQuery> {
    let scores: Vec<String> = spec
        .scores
        .iter()
        .map(|s| {
            format!(
                "CAST(f.{} AS DOUBLE) AS {}",
                tables::quote_identifier(s),
                tables::quote_identifier(s)
            )
        })
        .collect();
    let sql = format!(
        "WITH traffic AS (SELECT query, MAX(impressions) AS traffic FROM features GROUP BY query) \
         SELECT f.query, CAST(t.traffic AS DOUBLE) AS traffic, COALESCE(o.label, 0) AS label, {} \
         FROM features AS f JOIN traffic AS t ON f.query = t.query \
         LEFT JOIN outcomes AS o ON o.query = f.query AND o.product_id = f.product_id \
         ORDER BY f.query",
        scores.join(", ")
    );
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let n = spec.scores.len();
    let mut out = PerQuery {
        queries: Vec::new(),
        traffic: Vec::new(),
        segment: Vec::new(),
        metrics: Vec::new(),
    };
    // candidates of the current query, per score
    let mut current: Option<(String, f64)> = None;
    let mut rows: Vec<Vec<(f64, f64)>> = vec![Vec::new(); n];
    let mut finish = |query: String, traffic: f64, rows: &mut Vec<Vec<(f64, f64)>>| {
        let none = Vec::new();
        let missing = missing.get(&query).unwrap_or(&none);
        let metrics: Option<Vec<QueryMetrics>> = rows
            .iter()
            .map(|c| query_metrics(c, missing, spec.k, spec.gain))
            .collect();
        if let Some(metrics) = metrics {
            out.queries.push(query);
            out.traffic.push(traffic);
            out.segment.push(spec.segments.of(traffic));
            out.metrics.extend(metrics);
        }
        rows.iter_mut().for_each(Vec::clear);
    };
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let queries = cast(batch.column(0), &DataType::Utf8)?;
        let queries = queries.as_string::<i32>();
        let traffic = batch.column(1).as_primitive::<Float64Type>();
        let labels = batch.column(2).as_primitive::<Int64Type>();
        let values: Vec<&Float64Array> = (0..n)
            .map(|s| batch.column(3 + s).as_primitive::<Float64Type>())
            .collect();
        for row in 0..batch.num_rows() {
            let query = queries.value(row);
            if current.as_ref().is_none_or(|(q, _)| q != query) {
                if let Some((q, t)) = current.take() {
                    finish(q, t, &mut rows);
                }
                current = Some((query.to_string(), traffic.value(row)));
            }
            for (s, column) in values.iter().enumerate() {
                let score = if column.is_null(row) {
                    f64::NAN
                } else {
                    column.value(row)
                };
                rows[s].push((score, labels.value(row) as f64));
            }
        }
    }
    if let Some((q, t)) = current.take() {
        finish(q, t, &mut rows);
    }
    Ok(out)
}

fn metric_value(m: &QueryMetrics, metric: usize) -> f64 {
    match metric {
        0 => m.ndcg,
        1 => m.mrr,
        _ => m.recall,
    }
}

fn summarise(spec: &EvaluateSpec, data: &PerQuery, total_queries: u64, absent: u64) -> Evaluation {
    let n = spec.scores.len();
    let pair = spec.compare.as_ref().map(|(a, b)| {
        let index = |s: &String| spec.scores.iter().position(|x| x == s).expect("checked");
        (index(a), index(b))
    });
    let mut segments = Vec::new();
    for (si, name) in SEGMENTS.iter().enumerate() {
        let members: Vec<usize> = (0..data.queries.len())
            .filter(|&q| si == 3 || data.segment[q] == si)
            .collect();
        // columns: score x metric, then (with a pair) the 3 differences
        let width = n * 3 + if pair.is_some() { 3 } else { 0 };
        let mut values = Vec::with_capacity(members.len() * width);
        for &q in &members {
            let m = &data.metrics[q * n..(q + 1) * n];
            for score in m {
                for metric in 0..3 {
                    values.push(metric_value(score, metric));
                }
            }
            if let Some((a, b)) = pair {
                for metric in 0..3 {
                    values.push(metric_value(&m[a], metric) - metric_value(&m[b], metric));
                }
            }
        }
        // one stream per segment, derived from the seed, so segments do not depend on each other
        let intervals = bootstrap::means(&values, width, spec.bootstrap, spec.seed ^ si as u64);
        let scores = spec
            .scores
            .iter()
            .enumerate()
            .map(|(s, score)| ScoreResult {
                score: score.clone(),
                ndcg: intervals[s * 3],
                mrr: intervals[s * 3 + 1],
                recall: intervals[s * 3 + 2],
            })
            .collect();
        let mut paired = Vec::new();
        if pair.is_some() {
            for (metric, name) in METRICS.iter().enumerate() {
                let differences: Vec<f64> = values
                    .chunks_exact(width)
                    .map(|row| row[n * 3 + metric])
                    .collect();
                paired.push(bootstrap::paired(
                    *name,
                    intervals[n * 3 + metric],
                    &differences,
                ));
            }
        }
        segments.push(SegmentResult {
            segment: name,
            queries: members.len() as u64,
            scores,
            paired,
        });
    }
    Evaluation {
        k: spec.k,
        gain: spec.gain,
        segments_by_traffic: spec.segments,
        bootstrap: spec.bootstrap,
        seed: spec.seed,
        compare: spec.compare.clone(),
        evaluated_queries: data.queries.len() as u64,
        queries_without_relevant_outcome: total_queries.saturating_sub(data.queries.len() as u64),
        outcome_queries_without_candidates: absent,
        segments,
    }
}

async fn write_per_query(
    ctx: &datafusion::prelude::SessionContext,
    spec: &EvaluateSpec,
    data: &PerQuery,
    path: &str,
) -> Result<()> {
    let n = spec.scores.len();
    let rows = data.queries.len() * n;
    let mut query = Vec::with_capacity(rows);
    let mut segment = Vec::with_capacity(rows);
    let mut traffic = Vec::with_capacity(rows);
    let mut score = Vec::with_capacity(rows);
    let mut values: [Vec<f64>; 3] = std::array::from_fn(|_| Vec::with_capacity(rows));
    for q in 0..data.queries.len() {
        for (s, name) in spec.scores.iter().enumerate() {
            query.push(data.queries[q].as_str());
            segment.push(SEGMENTS[data.segment[q]]);
            traffic.push(data.traffic[q]);
            score.push(name.as_str());
            for (metric, column) in values.iter_mut().enumerate() {
                column.push(metric_value(&data.metrics[q * n + s], metric));
            }
        }
    }
    let k = spec.k;
    let schema = Arc::new(Schema::new(vec![
        Field::new("query", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, false),
        Field::new("traffic", DataType::Float64, false),
        Field::new("score", DataType::Utf8, false),
        Field::new(format!("ndcg_at_{k}"), DataType::Float64, false),
        Field::new("mrr", DataType::Float64, false),
        Field::new(format!("recall_at_{k}"), DataType::Float64, false),
    ]));
    let [ndcg, mrr, recall] = values;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(query)),
            Arc::new(StringArray::from(segment)),
            Arc::new(Float64Array::from(traffic)),
            Arc::new(StringArray::from(score)),
            Arc::new(Float64Array::from(ndcg)),
            Arc::new(Float64Array::from(mrr)),
            Arc::new(Float64Array::from(recall)),
        ],
    )?;
    let format = per_query_format(path)?;
    let location = OutputLocation::resolve(ctx.runtime_env().as_ref(), path)?;
    let cancel = tokio_util::sync::CancellationToken::new();
    sink::write_atomic(ctx.read_batch(batch)?, &location, format, &cancel, |_| {}).await?;
    Ok(())
}

/// The format of the per-query file, from its extension.
pub fn per_query_format(path: &str) -> Result<OutputFormat> {
    OutputFormat::from_extension(path).ok_or_else(|| {
        Error::config(format!(
            "--per-query {path}: use a .parquet, .csv or .ndjson file"
        ))
    })
}

pub(super) fn fmt_interval(i: &Interval, signed: bool) -> String {
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

pub(super) fn fmt_p(p: Option<f64>) -> String {
    match p {
        None => "-".into(),
        Some(p) if p < 1e-4 => "<1e-4".into(),
        Some(p) => format!("{p:.4}"),
    }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.k;
        let ci = if self.bootstrap > 0 {
            format!(
                " [95% CI, {} bootstrap resamples of queries]",
                self.bootstrap
            )
        } else {
            String::new()
        };
        writeln!(
            f,
            "# {} queries evaluated ({} without a relevant outcome left out; {} outcome queries without candidates); \
             segments by traffic: tail < {} <= torso < {} <= head; gain {}{ci}",
            self.evaluated_queries,
            self.queries_without_relevant_outcome,
            self.outcome_queries_without_candidates,
            self.segments_by_traffic.tail_below,
            self.segments_by_traffic.head_from,
            match self.gain {
                Gain::Exponential => "2^label - 1",
                Gain::Linear => "label",
            }
        )?;
        let width = 30;
        writeln!(
            f,
            "{:<8} {:>8}  {:<12} {:<width$} {:<width$} {:<width$}",
            "segment",
            "queries",
            "score",
            format!("ndcg@{k}"),
            "mrr",
            format!("recall@{k}")
        )?;
        for s in &self.segments {
            for r in &s.scores {
                writeln!(
                    f,
                    "{:<8} {:>8}  {:<12} {:<width$} {:<width$} {:<width$}",
                    s.segment,
                    s.queries,
                    r.score,
                    fmt_interval(&r.ndcg, false),
                    fmt_interval(&r.mrr, false),
                    fmt_interval(&r.recall, false)
                )?;
            }
        }
        if let Some((a, b)) = &self.compare {
            writeln!(f)?;
            writeln!(
                f,
                "# paired: {a} - {b} per query (mean [95% CI]), paired t-test p, queries where {a} wins / ties / loses"
            )?;
            writeln!(
                f,
                "{:<8} {:<10} {:<width$} {:>8} {:>8} {:>8} {:>8}",
                "segment", "metric", "difference", "p", "wins", "ties", "losses"
            )?;
            for s in &self.segments {
                for p in &s.paired {
                    let metric = match p.metric.as_str() {
                        "mrr" => "mrr".to_string(),
                        m => format!("{m}@{k}"),
                    };
                    writeln!(
                        f,
                        "{:<8} {:<10} {:<width$} {:>8} {:>8} {:>8} {:>8}",
                        s.segment,
                        metric,
                        fmt_interval(&p.difference, true),
                        fmt_p(p.p_value),
                        p.wins,
                        p.ties,
                        p.losses
                    )?;
                }
            }
        }
        Ok(())
    }
}
