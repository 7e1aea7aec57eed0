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

use super::bootstrap::{Interval, Paired};
use super::metrics::{Gain, QueryMetrics, query_metrics};
use super::report::{self, SEGMENTS, Segments};
use crate::config::{ExecutionConfig, InputSpec};
use crate::error::{Error, Result};
use crate::io::tables;
use crate::session;
use crate::tools::feature_table;
use crate::tools::labels;

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
    let absent = scalar(&ctx, ABSENT_SQL).await?;
    let per_query = collect(&ctx, spec, &missing).await?;
    let total_queries = scalar(&ctx, "SELECT COUNT(DISTINCT query) FROM features").await?;
    if let Some(path) = &spec.per_query {
        write_per_query(&ctx, spec, &per_query, path).await?;
    }
    Ok(summarise(spec, &per_query, total_queries, absent))
}

/// Relevant outcomes of queries with candidates that are not among them.
const UNSCORED_SQL: &str = include_str!("../../../sql/evaluate_features_unscored.sql");
/// Queries with a relevant outcome and no candidate.
const ABSENT_SQL: &str = include_str!("../../../sql/evaluate_features_absent.sql");

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
    let batches = ctx.sql(UNSCORED_SQL).await?.collect().await?;
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
    let mut rows = Vec::with_capacity(data.metrics.len() * METRICS.len());
    for m in &data.metrics {
        rows.extend((0..METRICS.len()).map(|metric| metric_value(m, metric)));
    }
    let metrics: Vec<String> = METRICS.iter().map(|m| m.to_string()).collect();
    let segments = report::by_segment(
        &rows,
        n,
        &metrics,
        &data.segment,
        true,
        pair,
        spec.bootstrap,
        spec.seed,
    )
    .into_iter()
    .map(|s| SegmentResult {
        segment: s.segment,
        queries: s.queries,
        scores: spec
            .scores
            .iter()
            .enumerate()
            .map(|(i, score)| ScoreResult {
                score: score.clone(),
                ndcg: s.means[i * 3],
                mrr: s.means[i * 3 + 1],
                recall: s.means[i * 3 + 2],
            })
            .collect(),
        paired: s.paired,
    })
    .collect();
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
    report::write_per_query(ctx, batch, path).await
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.k;
        let ci = report::ci_note(self.bootstrap);
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
        let width = report::INTERVAL_WIDTH;
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
                    report::fmt_interval(&r.ndcg, false),
                    report::fmt_interval(&r.mrr, false),
                    report::fmt_interval(&r.recall, false)
                )?;
            }
        }
        if let Some(compare) = &self.compare {
            let segments = self
                .segments
                .iter()
                .map(|s| (s.segment, s.paired.as_slice()));
            report::write_paired(f, compare, segments, 10, |metric| match metric {
                "mrr" => "mrr".to_string(),
                m => format!("{m}@{k}"),
            })?;
        }
        Ok(())
    }
}
