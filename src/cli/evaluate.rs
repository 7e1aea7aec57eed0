//! `q2q-prior evaluate ...`: offline evaluation.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::InputSpec;
use crate::error::{Error, Result};
use crate::tools::evaluate::chart;
use crate::tools::evaluate::features::{self, EvaluateSpec};
use crate::tools::evaluate::metrics::Gain;
use crate::tools::evaluate::neighbours::{self, Ideal, NeighbourList, NeighboursSpec};
use crate::tools::evaluate::report::{self, Segments};

#[derive(Debug, Subcommand)]
pub enum EvaluateCommand {
    /// How well each score ranks products against held-out outcomes, by query segment.
    Features(FeaturesArgs),
    /// How well the upstream model's neighbour lists match behaviour labels (NDCG@3, Recall@100/1000).
    Neighbours(NeighboursArgs),
}

#[derive(Debug, Args)]
#[command(
    long_about = "Score neighbour lists (query, neighbour, score: the Q2Q model's output, or \
    retrieval output with a `candidate` column) against behaviour labels (query, candidate, label: \
    `mine pairs` output, label = overlap x Jaccard). For each listed query with a positive label: \
    NDCG@k graded by the label (the reranking stage; the paper uses k = 3, the neighbours the prior \
    averages) and Recall@k over the positively labelled neighbours (the retrieval stage; 100 and \
    1000). Ties in scores count as a random order; a query is never its own neighbour.\n\n\
    Give several lists as NAME=URI to compare models side by side; two lists get a paired \
    comparison (first minus second). With --engagement, queries are also split into head / torso \
    / tail by traffic (their largest impression count). Every mean has a 95% bootstrap interval \
    over queries. The table goes to stdout (--json for machines)."
)]
pub struct NeighboursArgs {
    /// A neighbour list, as NAME=URI or URI (named after the file); repeat to compare models.
    #[arg(long = "neighbours", required = true, value_name = "[NAME=]URI")]
    pub neighbours: Vec<String>,
    /// Behaviour labels: query, candidate, label >= 0 (e.g. `mine pairs` output).
    #[arg(long, value_name = "URI")]
    pub labels: String,
    /// Engagement (query, impressions) to segment queries by traffic.
    #[arg(long, value_name = "URI")]
    pub engagement: Option<String>,
    /// Traffic thresholds TAIL_BELOW,HEAD_FROM (with --engagement).
    #[arg(
        long,
        default_value = "20,1000",
        value_name = "T,H",
        requires = "engagement"
    )]
    pub segments: String,
    /// Cutoff of NDCG.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub ndcg_at: u64,
    /// Cutoffs of recall.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,1000",
        value_name = "K,..."
    )]
    pub recall_at: Vec<u64>,
    /// Gain of a label in DCG (labels from `mine pairs` are in [0, 1]).
    #[arg(long, value_enum, default_value_t = Gain::Linear)]
    pub gain: Gain,
    /// Which positives the ideal DCG ranks.
    #[arg(long, value_enum, default_value_t = Ideal::All)]
    pub ideal: Ideal,
    /// Paired comparison A,B of two list names (A - B per query) [default: the two lists, when two].
    #[arg(long, value_name = "A,B")]
    pub compare: Option<String>,
    /// Bootstrap resamples of queries for the intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write every query's metrics per list: .parquet, .csv or .ndjson.
    #[arg(long, value_name = "URI")]
    pub per_query: Option<String>,
    #[command(flatten)]
    pub engine: super::EngineArgs,
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
    #[command(flatten)]
    pub engine: super::EngineArgs,
}

pub async fn run(command: EvaluateCommand) -> Result<()> {
    match command {
        EvaluateCommand::Features(args) => features_command(args).await,
        EvaluateCommand::Neighbours(args) => neighbours_command(args).await,
    }
}

async fn features_command(args: FeaturesArgs) -> Result<()> {
    let compare = match &args.compare {
        Some(text) => Some(parse_compare(text, "scores", "f,h")?),
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
    if let Some(path) = &args.per_query {
        report::per_query_format(path)?;
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
        execution: args.engine.execution()?,
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
    print_report(&evaluation, args.json)
}

/// `--compare A,B`: two different names of `what` (scores, lists).
fn parse_compare(text: &str, what: &str, example: &str) -> Result<(String, String)> {
    let (a, b) = text.split_once(',').ok_or_else(|| {
        Error::config(format!(
            "--compare '{text}': expected two {what}, e.g. {example}"
        ))
    })?;
    let (a, b) = (a.trim().to_string(), b.trim().to_string());
    if a == b {
        return Err(Error::config(format!(
            "--compare {a},{b}: compare two different {what}"
        )));
    }
    Ok((a, b))
}

/// The report on stdout: as its table, or as JSON.
fn print_report<T: serde::Serialize + std::fmt::Display>(report: &T, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    out.flush()?;
    Ok(())
}

/// `NAME=URI` or a bare URI (named after its file). Text that names an existing local path is a
/// URI (a relative Hive folder such as `dt=2026-01-01/`); otherwise text before the first `=` made
/// of letters, digits, `_`, `-` and `.` is a name (a URL's `s3://...` never is). Write
/// `./key=value/...` for a relative Hive path that does not exist yet.
fn neighbour_list(text: &str) -> Result<NeighbourList> {
    let named = text.split_once('=').filter(|(name, uri)| {
        !std::path::Path::new(text).exists()
            && !name.is_empty()
            && !uri.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    });
    let (name, uri) = match named {
        Some((name, uri)) => (name.to_string(), uri.to_string()),
        None => {
            let file = text
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(text);
            let stem = file.split('.').next().unwrap_or(file);
            (
                if stem.is_empty() { file } else { stem }.to_string(),
                text.to_string(),
            )
        }
    };
    if uri.trim().is_empty() {
        return Err(Error::config(format!(
            "--neighbours '{text}': expected NAME=URI or a URI"
        )));
    }
    Ok(NeighbourList {
        name,
        input: InputSpec::new(uri),
    })
}

async fn neighbours_command(args: NeighboursArgs) -> Result<()> {
    let lists = args
        .neighbours
        .iter()
        .map(|t| neighbour_list(t))
        .collect::<Result<Vec<_>>>()?;
    for (i, list) in lists.iter().enumerate() {
        if lists[..i].iter().any(|l| l.name == list.name) {
            return Err(Error::config(format!(
                "--neighbours: two lists are named '{}'; name them NAME=URI",
                list.name
            )));
        }
    }
    let compare = match &args.compare {
        Some(text) => Some(parse_compare(text, "lists", "new,old")?),
        None if lists.len() == 2 => Some((lists[0].name.clone(), lists[1].name.clone())),
        None => None,
    };
    let mut recall_at = args.recall_at.clone();
    if recall_at.contains(&0) {
        return Err(Error::config("--recall-at: cutoffs are >= 1"));
    }
    recall_at.sort_unstable();
    recall_at.dedup();
    if let Some(path) = &args.per_query {
        report::per_query_format(path)?;
    }
    let spec = NeighboursSpec {
        lists,
        labels: InputSpec::new(args.labels),
        engagement: args.engagement.map(InputSpec::new),
        segments: Segments::parse(&args.segments)?,
        ndcg_at: args.ndcg_at as usize,
        recall_at: recall_at.into_iter().map(|k| k as usize).collect(),
        gain: args.gain,
        ideal: args.ideal,
        compare,
        bootstrap: args.bootstrap,
        seed: args.seed,
        per_query: args.per_query,
        execution: args.engine.execution()?,
    };
    let evaluation = neighbours::evaluate(&spec).await?;
    print_report(&evaluation, args.json)
}

#[cfg(test)]
mod tests {
    use super::neighbour_list;

    #[test]
    fn neighbour_lists_are_named_or_named_after_their_file() {
        let parts = |t: &str| {
            let l = neighbour_list(t).unwrap();
            (l.name, l.input.uri)
        };
        assert_eq!(
            parts("new=out/lists.parquet"),
            ("new".into(), "out/lists.parquet".into())
        );
        assert_eq!(
            parts("out/lists.parquet"),
            ("lists".into(), "out/lists.parquet".into())
        );
        assert_eq!(
            parts("s3://b/dt=2026-01-01/"),
            ("dt=2026-01-01".into(), "s3://b/dt=2026-01-01/".into())
        );
        assert_eq!(
            parts("bi-v2=s3://b/x.parquet"),
            ("bi-v2".into(), "s3://b/x.parquet".into())
        );
        // an existing Hive folder is a path, not NAME=URI (absolute here: tests share the cwd)
        let dir = tempfile::tempdir().unwrap();
        let hive = dir.path().join("model=bi");
        std::fs::create_dir(&hive).unwrap();
        let text = hive.to_str().unwrap();
        assert_eq!(parts(text), ("model=bi".into(), text.to_string()));
        assert!(neighbour_list("name=").is_ok_and(|l| l.name == "name="));
    }
}
