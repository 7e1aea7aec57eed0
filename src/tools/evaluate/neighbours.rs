//! `evaluate neighbours`: scores the upstream model's neighbour lists against behaviour labels, the
//! way the paper compares its bi- and cross-encoders (section 5.2, Tables 4-8): NDCG@3 graded by
//! the label (the reranking stage; 3 because the prior averages the top 3) and Recall@100/1000
//! (the retrieval stage), overall and by query segment, with bootstrap intervals over queries and
//! a paired comparison of two lists. The join is `sql/evaluate_neighbours.sql`; this module
//! streams its rows query by query.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, Float64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use datafusion::logical_expr::{col, lit};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use super::bootstrap::{Interval, Paired};
use super::metrics::{Gain, query_metrics};
use super::report::{self, SEGMENTS, Segments};
use crate::config::{ExecutionConfig, InputSpec};
use crate::error::{Error, Result};
use crate::io::checks::{self, Check, Severity};
use crate::io::tables;
use crate::session;

pub const SQL: &str = include_str!("../../../sql/evaluate_neighbours.sql");
/// Queries with a positive label that no list names.
const NOT_LISTED_SQL: &str = include_str!("../../../sql/evaluate_neighbours_not_listed.sql");

/// One model's neighbour lists, under the name the report uses.
#[derive(Debug, Clone)]
pub struct NeighbourList {
    pub name: String,
    pub input: InputSpec,
}

/// Which relevant neighbours the ideal DCG ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ideal {
    /// Every positively labelled neighbour of the query, listed or not: a list that misses good
    /// neighbours loses (evaluates retrieval and reranking together).
    All,
    /// Only the listed ones: how well the list orders what it was given (a reranker scoring a
    /// fixed candidate set, as in the paper's test sets). A list without any positive scores 0.
    Listed,
}

#[derive(Debug, Clone)]
pub struct NeighboursSpec {
    pub lists: Vec<NeighbourList>,
    /// Behaviour labels per (query, candidate): `mine pairs` output or any table with query,
    /// candidate and a numeric label >= 0.
    pub labels: InputSpec,
    /// Engagement with impressions, for segments by traffic; without it only `all` is reported.
    pub engagement: Option<InputSpec>,
    pub segments: Segments,
    pub ndcg_at: usize,
    pub recall_at: Vec<usize>,
    pub gain: Gain,
    pub ideal: Ideal,
    /// Two list names to compare pairwise (first minus second).
    pub compare: Option<(String, String)>,
    pub bootstrap: usize,
    pub seed: u64,
    /// Per-query metrics written here (Parquet, CSV or NDJSON by extension).
    pub per_query: Option<String>,
    pub execution: ExecutionConfig,
}

impl NeighboursSpec {
    /// Metric names in column order: `ndcg@K`, then `recall@K` for each cutoff.
    pub fn metric_names(&self) -> Vec<String> {
        std::iter::once(format!("ndcg@{}", self.ndcg_at))
            .chain(self.recall_at.iter().map(|k| format!("recall@{k}")))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricValue {
    pub metric: String,
    pub value: Interval,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListResult {
    pub list: String,
    pub metrics: Vec<MetricValue>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentResult {
    pub segment: &'static str,
    pub queries: u64,
    pub lists: Vec<ListResult>,
    pub paired: Vec<Paired>,
}

/// What one list contributed.
#[derive(Debug, Clone, Serialize)]
pub struct ListCounts {
    pub list: String,
    pub uri: String,
    pub rows: u64,
    /// Evaluated queries this list has no neighbours for (they score 0 on every metric).
    pub queries_missing: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NeighbourEvaluation {
    pub ndcg_at: usize,
    pub recall_at: Vec<usize>,
    pub gain: Gain,
    pub ideal: Ideal,
    /// Segment thresholds, when engagement was given to segment by.
    pub segments_by_traffic: Option<Segments>,
    pub bootstrap: usize,
    pub seed: u64,
    pub compare: Option<(String, String)>,
    /// Listed queries with at least one positive label: the ones evaluated.
    pub evaluated_queries: u64,
    /// Listed queries without a positive label (metrics undefined, left out).
    pub listed_queries_without_positive_label: u64,
    /// Queries with a positive label that no list has (left out).
    pub labelled_queries_not_listed: u64,
    pub lists: Vec<ListCounts>,
    pub segments: Vec<SegmentResult>,
}

/// Every evaluated query's metrics.
struct PerQuery {
    queries: Vec<String>,
    traffic: Vec<f64>,
    segment: Vec<usize>,
    positives: Vec<u64>,
    /// Neighbours listed, `listed[q * lists + l]`.
    listed: Vec<u64>,
    /// `values[(q * lists + l) * metrics + m]`
    values: Vec<f64>,
    /// Queries without a positive label, and per list the evaluated queries it does not list.
    without_positive: u64,
    missing: Vec<u64>,
}

pub async fn evaluate(spec: &NeighboursSpec) -> Result<NeighbourEvaluation> {
    if spec.lists.is_empty() {
        return Err(Error::config("give at least one --neighbours list"));
    }
    if let Some((a, b)) = &spec.compare {
        for name in [a, b] {
            if !spec.lists.iter().any(|l| &l.name == name) {
                return Err(Error::config(format!(
                    "--compare: no list named '{name}'; the lists are {}",
                    names(spec)
                )));
            }
        }
    }
    let ctx = session::new_context(&spec.execution)?;
    let mut lists: Option<DataFrame> = None;
    let mut counts = Vec::new();
    for (i, list) in spec.lists.iter().enumerate() {
        let (df, rows) = open_list(&ctx, &list.input).await?;
        let df = df.select(vec![
            lit(i as i64).alias("list"),
            col("query"),
            col("candidate"),
            col("score"),
        ])?;
        lists = Some(match lists {
            None => df,
            Some(all) => all.union(df)?,
        });
        counts.push(ListCounts {
            list: list.name.clone(),
            uri: list.input.uri.clone(),
            rows,
            queries_missing: 0,
        });
    }
    let lists = lists.expect("at least one list");
    ctx.register_table("lists", lists.into_view())?;
    let labels = open_labels(&ctx, &spec.labels).await?;
    ctx.register_table("labels", labels.into_view())?;
    let traffic = match &spec.engagement {
        Some(engagement) => {
            let (engagement, _) = tables::open_checked(
                &ctx,
                "engagement",
                engagement,
                &[
                    ("query", checks::is_string, tables::STRING),
                    ("impressions", tables::is_number, tables::COUNT),
                ],
                vec![checks::key_check("query", &DataType::Utf8)],
            )
            .await?;
            engagement.typed.aggregate(
                vec![col("query")],
                vec![
                    datafusion::functions_aggregate::expr_fn::max(datafusion::logical_expr::cast(
                        col("impressions"),
                        DataType::Float64,
                    ))
                    .alias("traffic"),
                ],
            )?
        }
        None => ctx.read_batch(RecordBatch::new_empty(Arc::new(Schema::new(vec![
            Field::new("query", DataType::Utf8, true),
            Field::new("traffic", DataType::Float64, true),
        ]))))?,
    };
    ctx.register_table("traffic", traffic.into_view())?;

    let not_listed = scalar(&ctx, NOT_LISTED_SQL).await?;
    let data = collect(&ctx, spec).await?;
    for (c, missing) in counts.iter_mut().zip(&data.missing) {
        c.queries_missing = *missing;
    }
    if let Some(path) = &spec.per_query {
        write_per_query(&ctx, spec, &data, path).await?;
    }
    Ok(summarise(spec, &data, counts, not_listed))
}

fn names(spec: &NeighboursSpec) -> String {
    spec.lists
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A neighbour list: query, neighbour (or candidate, as `mine ance` reads retrieval output) and a
/// finite score; typed as (query, candidate, score).
async fn open_list(ctx: &SessionContext, spec: &InputSpec) -> Result<(DataFrame, u64)> {
    let probe = tables::open_table(ctx, "neighbours", spec).await?;
    let column = if probe
        .column_type("neighbour", checks::is_string, tables::STRING)?
        .is_some()
    {
        "neighbour"
    } else if probe
        .column_type("candidate", checks::is_string, tables::STRING)?
        .is_some()
    {
        "candidate"
    } else {
        // the error lists the columns the input has
        "neighbour"
    };
    let (input, rows) = tables::open_checked(
        ctx,
        "neighbours",
        spec,
        &[
            ("query", checks::is_string, tables::STRING),
            (column, checks::is_string, tables::STRING),
            (
                "score",
                tables::is_number,
                "a numeric score from the model, higher = more similar",
            ),
        ],
        vec![
            checks::key_check("query", &DataType::Utf8),
            checks::key_check(column, &DataType::Utf8),
            checks::finite_check("score_null_or_not_finite", "score", "a finite score"),
        ],
    )
    .await?;
    let df = input.typed.select(vec![
        col("query"),
        col(column).alias("candidate"),
        col("score"),
    ])?;
    Ok((df, rows))
}

/// Behaviour labels: query, candidate and a finite label >= 0 (0: not similar).
async fn open_labels(ctx: &SessionContext, spec: &InputSpec) -> Result<DataFrame> {
    let (input, _) = tables::open_checked(
        ctx,
        "labels",
        spec,
        &[
            ("query", checks::is_string, tables::STRING),
            ("candidate", checks::is_string, tables::STRING),
            (
                "label",
                tables::is_number,
                "a numeric label >= 0, e.g. overlap x Jaccard from `mine pairs`",
            ),
        ],
        vec![
            checks::key_check("query", &DataType::Utf8),
            checks::key_check("candidate", &DataType::Utf8),
            Check {
                id: "label_null_negative_or_not_finite",
                column: "label",
                severity: Severity::Fail,
                violation: col("label")
                    .is_null()
                    .or(checks::not_finite("label"))
                    .or(col("label").lt(lit(0.0))),
                expected: "a finite label >= 0",
            },
        ],
    )
    .await?;
    Ok(input.typed)
}

async fn scalar(ctx: &SessionContext, sql: &str) -> Result<u64> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches.iter().find(|b| b.num_rows() > 0).map_or(0, |b| {
        b.column(0).as_primitive::<Int64Type>().value(0).max(0) as u64
    }))
}

/// One query's rows while streaming.
#[derive(Default)]
struct QueryRows {
    query: String,
    traffic: f64,
    /// The query's positive labels: (candidate, label).
    positives: Vec<(String, f64)>,
    /// Per list: (score, label) of every listed neighbour, and the positive ones' names.
    listed: Vec<Vec<(f64, f64)>>,
    listed_positive: Vec<HashSet<String>>,
}

/// Streams the joined rows query by query and computes every query's metrics.
async fn collect(ctx: &SessionContext, spec: &NeighboursSpec) -> Result<PerQuery> {
    let n = spec.lists.len();
    let mut out = PerQuery {
        queries: Vec::new(),
        traffic: Vec::new(),
        segment: Vec::new(),
        positives: Vec::new(),
        listed: Vec::new(),
        values: Vec::new(),
        without_positive: 0,
        missing: vec![0; n],
    };
    let segmented = spec.engagement.is_some();
    let mut finish = |rows: &mut QueryRows| {
        if rows.positives.is_empty() {
            out.without_positive += 1;
        } else {
            let labels: Vec<f64> = rows.positives.iter().map(|(_, l)| *l).collect();
            out.queries.push(std::mem::take(&mut rows.query));
            out.traffic.push(rows.traffic);
            // without engagement every query is in `all` only
            out.segment.push(if segmented {
                spec.segments.of(rows.traffic)
            } else {
                3
            });
            out.positives.push(labels.len() as u64);
            for l in 0..n {
                // rows of a query arrive in any order: a fixed order within tied scores makes the
                // sums (and so the report) identical from run to run, to the last bit
                rows.listed[l]
                    .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
                let listed = &rows.listed[l];
                if listed.is_empty() {
                    out.missing[l] += 1;
                }
                let missing: Vec<f64> = rows
                    .positives
                    .iter()
                    .filter(|(c, _)| !rows.listed_positive[l].contains(c))
                    .map(|(_, label)| *label)
                    .collect();
                let ideal_missing: &[f64] = match spec.ideal {
                    Ideal::All => &missing,
                    Ideal::Listed => &[],
                };
                out.listed.push(listed.len() as u64);
                out.values.push(
                    query_metrics(listed, ideal_missing, spec.ndcg_at, spec.gain)
                        .map_or(0.0, |m| m.ndcg),
                );
                for &k in &spec.recall_at {
                    out.values.push(
                        query_metrics(listed, &missing, k, spec.gain).map_or(0.0, |m| m.recall),
                    );
                }
            }
        }
        rows.positives.clear();
        rows.listed.iter_mut().for_each(Vec::clear);
        rows.listed_positive.iter_mut().for_each(HashSet::clear);
    };
    let mut current = QueryRows {
        listed: vec![Vec::new(); n],
        listed_positive: vec![HashSet::new(); n],
        ..Default::default()
    };
    let mut started = false;
    let mut stream = ctx.sql(SQL).await?.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let queries = cast(batch.column(0), &DataType::Utf8)?;
        let queries = queries.as_string::<i32>();
        let traffic = batch.column(1).as_primitive::<Float64Type>();
        let list = batch.column(2).as_primitive::<Int64Type>();
        let candidates = cast(batch.column(3), &DataType::Utf8)?;
        let candidates = candidates.as_string::<i32>();
        let scores = batch.column(4).as_primitive::<Float64Type>();
        let labels = batch.column(5).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            let query = queries.value(row);
            if !started || current.query != query {
                if started {
                    finish(&mut current);
                }
                started = true;
                current.query = query.to_string();
                current.traffic = traffic.value(row);
            }
            let label = labels.value(row);
            let candidate = candidates.value(row);
            match usize::try_from(list.value(row)) {
                // a positive label (list -1): rows come first, ordered by list
                Err(_) => current.positives.push((candidate.to_string(), label)),
                Ok(l) => {
                    current.listed[l].push((scores.value(row), label));
                    if label > 0.0 {
                        current.listed_positive[l].insert(candidate.to_string());
                    }
                }
            }
        }
    }
    if started {
        finish(&mut current);
    }
    Ok(out)
}

fn summarise(
    spec: &NeighboursSpec,
    data: &PerQuery,
    lists: Vec<ListCounts>,
    not_listed: u64,
) -> NeighbourEvaluation {
    let n = spec.lists.len();
    let names = spec.metric_names();
    let width = names.len();
    let pair = spec.compare.as_ref().map(|(a, b)| {
        let index = |s: &String| {
            spec.lists
                .iter()
                .position(|l| &l.name == s)
                .expect("checked")
        };
        (index(a), index(b))
    });
    let segmented = spec.engagement.is_some();
    let segments = report::by_segment(
        &data.values,
        n,
        &names,
        &data.segment,
        segmented,
        pair,
        spec.bootstrap,
        spec.seed,
    )
    .into_iter()
    .map(|s| SegmentResult {
        segment: s.segment,
        queries: s.queries,
        lists: spec
            .lists
            .iter()
            .enumerate()
            .map(|(l, list)| ListResult {
                list: list.name.clone(),
                metrics: names
                    .iter()
                    .enumerate()
                    .map(|(m, metric)| MetricValue {
                        metric: metric.clone(),
                        value: s.means[l * width + m],
                    })
                    .collect(),
            })
            .collect(),
        paired: s.paired,
    })
    .collect();
    NeighbourEvaluation {
        ndcg_at: spec.ndcg_at,
        recall_at: spec.recall_at.clone(),
        gain: spec.gain,
        ideal: spec.ideal,
        segments_by_traffic: segmented.then_some(spec.segments),
        bootstrap: spec.bootstrap,
        seed: spec.seed,
        compare: spec.compare.clone(),
        evaluated_queries: data.queries.len() as u64,
        listed_queries_without_positive_label: data.without_positive,
        labelled_queries_not_listed: not_listed,
        lists,
        segments,
    }
}

async fn write_per_query(
    ctx: &SessionContext,
    spec: &NeighboursSpec,
    data: &PerQuery,
    path: &str,
) -> Result<()> {
    let n = spec.lists.len();
    let names = spec.metric_names();
    let width = names.len();
    let rows = data.queries.len() * n;
    let mut query = Vec::with_capacity(rows);
    let mut segment = Vec::with_capacity(rows);
    let mut traffic = Vec::with_capacity(rows);
    let mut list = Vec::with_capacity(rows);
    let mut positives = Vec::with_capacity(rows);
    let mut listed = Vec::with_capacity(rows);
    let mut values: Vec<Vec<f64>> = vec![Vec::with_capacity(rows); width];
    for q in 0..data.queries.len() {
        for (l, spec_list) in spec.lists.iter().enumerate() {
            query.push(data.queries[q].as_str());
            segment.push(SEGMENTS[data.segment[q]]);
            traffic.push(data.traffic[q]);
            list.push(spec_list.name.as_str());
            positives.push(data.positives[q]);
            listed.push(data.listed[q * n + l]);
            for (m, column) in values.iter_mut().enumerate() {
                column.push(data.values[(q * n + l) * width + m]);
            }
        }
    }
    let mut fields = vec![
        Field::new("query", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, false),
        Field::new("traffic", DataType::Float64, false),
        Field::new("list", DataType::Utf8, false),
        Field::new("positives", DataType::UInt64, false),
        Field::new("listed", DataType::UInt64, false),
    ];
    let mut columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from(query)),
        Arc::new(StringArray::from(segment)),
        Arc::new(Float64Array::from(traffic)),
        Arc::new(StringArray::from(list)),
        Arc::new(UInt64Array::from(positives)),
        Arc::new(UInt64Array::from(listed)),
    ];
    for (name, column) in names.iter().zip(values) {
        // ndcg@3 -> ndcg_at_3: a column name every reader accepts unquoted
        fields.push(Field::new(
            name.replace('@', "_at_"),
            DataType::Float64,
            false,
        ));
        columns.push(Arc::new(Float64Array::from(column)));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    report::write_per_query(ctx, batch, path).await
}

impl fmt::Display for NeighbourEvaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ci = report::ci_note(self.bootstrap);
        let segments = match &self.segments_by_traffic {
            Some(s) => format!(
                "segments by traffic: tail < {} <= torso < {} <= head",
                s.tail_below, s.head_from
            ),
            None => "no segments (give --engagement to segment by traffic)".to_string(),
        };
        writeln!(
            f,
            "# {} queries evaluated ({} listed queries without a positive label and {} labelled queries in no list left out); \
             {segments}; gain {}; ideal DCG over {} positives{ci}",
            self.evaluated_queries,
            self.listed_queries_without_positive_label,
            self.labelled_queries_not_listed,
            match self.gain {
                Gain::Exponential => "2^label - 1",
                Gain::Linear => "label",
            },
            match self.ideal {
                Ideal::All => "all labelled",
                Ideal::Listed => "the listed",
            }
        )?;
        for l in &self.lists {
            if l.queries_missing > 0 {
                writeln!(
                    f,
                    "# list {}: no neighbours for {} evaluated queries (scored 0)",
                    l.list, l.queries_missing
                )?;
            }
        }
        let width = report::INTERVAL_WIDTH;
        let Some(first) = self.segments.first() else {
            return Ok(());
        };
        let names: Vec<&str> = first
            .lists
            .first()
            .map(|l| l.metrics.iter().map(|m| m.metric.as_str()).collect())
            .unwrap_or_default();
        write!(f, "{:<8} {:>8}  {:<12}", "segment", "queries", "list")?;
        for name in &names {
            write!(f, " {name:<width$}")?;
        }
        writeln!(f)?;
        for s in &self.segments {
            for l in &s.lists {
                write!(f, "{:<8} {:>8}  {:<12}", s.segment, s.queries, l.list)?;
                for m in &l.metrics {
                    write!(f, " {:<width$}", report::fmt_interval(&m.value, false))?;
                }
                writeln!(f)?;
            }
        }
        if let Some(compare) = &self.compare {
            let segments = self
                .segments
                .iter()
                .map(|s| (s.segment, s.paired.as_slice()));
            report::write_paired(f, compare, segments, 12, str::to_string)?;
        }
        Ok(())
    }
}
