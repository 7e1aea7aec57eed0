//! `q2q-prior evaluate ...`: offline evaluation.

use std::io::Write;
use std::path::PathBuf;

use bytesize::ByteSize;
use clap::{Args, Subcommand};

use crate::config::{ExecutionConfig, InputSpec};
use crate::error::{Error, Result};
use crate::evaluate::chart;
use crate::evaluate::features::{self, EvaluateSpec, Segments};
use crate::evaluate::metrics::Gain;

#[derive(Debug, Subcommand)]
pub enum EvaluateCommand {
    /// How well each score ranks products against held-out outcomes, by query segment.
    Features(FeaturesArgs),
}

#[derive(Debug, Args)]
#[command(
    long_about = "For each query of a feature table (from `run`), rank its candidate products \
    (the table's rows) by each score and measure NDCG@k, MRR and Recall@k against held-out \
    outcomes: a later period's engagement (graded 3 purchased, 2 added to cart, 1 clicked, 0 shown) \
    or a `label` column. Metrics are tie-aware (equal scores count as a random order). Queries are \
    split into head / torso / tail by traffic (their largest impression count), and every mean gets \
    a 95% bootstrap interval over queries; --compare adds a paired comparison of two scores.\n\n\
    The table goes to stdout (--json for machines); --chart writes an SVG."
)]
pub struct FeaturesArgs {
    /// Feature table written by `run`.
    #[arg(long, value_name = "URI")]
    pub feature_table: String,
    /// Held-out outcomes: query, product_id and label, or clicks/adds/purchases of a later period.
    #[arg(long, value_name = "URI")]
    pub outcomes: String,
    /// Scores to rank by: numeric columns of the feature table.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "h,prior,f",
        value_name = "NAMES"
    )]
    pub scores: Vec<String>,
    /// Paired comparison A,B (A - B per query) [default: f,h when both are scored].
    #[arg(long, value_name = "A,B")]
    pub compare: Option<String>,
    /// Cutoff of NDCG@k and Recall@k.
    #[arg(long, short = 'k', default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub k: u64,
    /// Gain of a grade in DCG.
    #[arg(long, value_enum, default_value_t = Gain::Exponential)]
    pub gain: Gain,
    /// Traffic thresholds TAIL_BELOW,HEAD_FROM.
    #[arg(long, default_value = "20,1000", value_name = "T,H")]
    pub segments: String,
    /// Bootstrap resamples of queries for the intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG chart of the metrics by segment and score.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// Write every query's metrics (query, segment, traffic, score, metrics): .parquet, .csv or .ndjson.
    #[arg(long, value_name = "URI")]
    pub per_query: Option<String>,
    /// Memory limit for the query engine, e.g. 4GiB.
    #[arg(long, env = "Q2Q_MEMORY_LIMIT", value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
}

pub async fn run(command: EvaluateCommand) -> Result<()> {
    match command {
        EvaluateCommand::Features(args) => features_command(args).await,
    }
}

async fn features_command(args: FeaturesArgs) -> Result<()> {
    let compare = match &args.compare {
        Some(text) => {
            let (a, b) = text.split_once(',').ok_or_else(|| {
                Error::config(format!("--compare '{text}': expected two scores, e.g. f,h"))
            })?;
            Some((a.trim().to_string(), b.trim().to_string()))
        }
        None if args.scores.iter().any(|s| s == "f") && args.scores.iter().any(|s| s == "h") => {
            Some(("f".to_string(), "h".to_string()))
        }
        None => None,
    };
    if let Some(chart) = &args.chart
        && chart
            .extension()
            .is_none_or(|e| !e.eq_ignore_ascii_case("svg"))
    {
        return Err(Error::config(format!(
            "--chart {}: the chart is SVG; name the file *.svg",
            chart.display()
        )));
    }
    for (i, score) in args.scores.iter().enumerate() {
        if args.scores[..i].contains(score) {
            return Err(Error::config(format!(
                "--scores: '{score}' is listed twice"
            )));
        }
    }
    if let Some((a, b)) = &compare
        && a == b
    {
        return Err(Error::config(format!(
            "--compare {a},{b}: compare two different scores"
        )));
    }
    if let Some(path) = &args.per_query {
        features::per_query_format(path)?;
    }
    let spec = EvaluateSpec {
        feature_table: InputSpec::new(args.feature_table),
        outcomes: InputSpec::new(args.outcomes),
        scores: args.scores,
        compare,
        k: args.k as usize,
        gain: args.gain,
        segments: Segments::parse(&args.segments)?,
        bootstrap: args.bootstrap,
        seed: args.seed,
        per_query: args.per_query,
        execution: ExecutionConfig {
            memory_limit: args.memory_limit,
            ..Default::default()
        },
    };
    let evaluation = features::evaluate(&spec).await?;
    if let Some(path) = &args.chart {
        // beside the destination, then renamed: never a half-written chart
        let staging = path.with_extension("svg.partial");
        let written = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&staging, chart::svg(&evaluation)))
            .and_then(|()| std::fs::rename(&staging, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&staging);
            return Err(Error::config(format!(
                "--chart {}: cannot write it: {e}",
                path.display()
            )));
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &evaluation).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        write!(out, "{evaluation}")?;
    }
    out.flush()?;
    Ok(())
}
