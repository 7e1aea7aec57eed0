//! `q2q-prior mine ...`: training data for the upstream Q2Q model (see [`crate::tools::mine`]).

use clap::{Args, Subcommand};

use crate::config::{InputFormat, InputSpec, OutputFormat};
use crate::error::{Error, Result};
use crate::session;
use crate::tools::mine::ance::{self, AnceJob};
use crate::tools::mine::pairs::PairParams;
use crate::tools::mine::{self, PairJob, SplitShares, Window};

#[derive(Debug, Subcommand)]
pub enum MineCommand {
    /// Query pairs labelled by overlap x Jaccard of their co-purchased products.
    Pairs(PairsArgs),
    /// Hard negatives from the bi-encoder's retrieval minus co-purchase pairs (InfoNCE rows).
    Ance(AnceArgs),
}

#[derive(Debug, Args)]
#[command(
    long_about = "One InfoNCE training row per query, from the current bi-encoder's retrieval \
    (query, candidate, score, rank: its top-K per query) and the pairs from `mine pairs`: \
    positives are the query's co-purchase pairs (retrieved or not), best label first; hard \
    negatives are its retrieved candidates that are not co-purchase pairs in either direction \
    (nor the query itself), best rank first, after skipping --skip-top ranks. Columns: query, \
    split, positives, positive_labels, hard_negatives, hard_negative_scores, hard_negative_ranks \
    (lists), n_retrieved, n_subtracted. Totals go to stderr."
)]
pub struct AnceArgs {
    /// The bi-encoder's retrieval: query, candidate, score, rank.
    #[arg(long, value_name = "URI")]
    pub retrieval: String,
    /// The mined pairs (`mine pairs` output).
    #[arg(long, value_name = "URI")]
    pub pairs: String,
    /// Output file: .parquet (list columns), or .ndjson.
    #[arg(long, short = 'o', value_name = "URI")]
    pub output: String,
    /// Hard negatives per query, at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub negatives: u64,
    /// Never take ranks 1..=N as negatives (often unlabelled positives).
    #[arg(long, default_value_t = 0)]
    pub skip_top: u64,
    #[command(flatten)]
    pub engine: super::EngineArgs,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Mine query pairs from purchases (paper section 3). S(q) = distinct products \
    purchased from q; a pair (q, c) with at least --min-copurchases shared products gets \
    overlap = |S(q)∩S(c)| / min(|S(q)|,|S(c)|), jaccard = |S(q)∩S(c)| / |S(q)∪S(c)| and \
    label = overlap * jaccard. Each query keeps its top --top candidates by label, or the top \
    --top-share of them when that is more; --negatives random queries without any shared product \
    per kept pair are added with label 0. Pairs are enumerated through products (never a cartesian \
    product of queries); products bought from more than --hot-cap queries count co-purchases among \
    a deterministic sample of them. Rows: query, candidate, n_copurchase, n_union, n_min, jaccard, \
    overlap, label, is_negative, split (train/validation/test by a hash of the query). A report \
    by product bucket goes to stderr."
)]
pub struct PairsArgs {
    /// Engagement: query, product_id and purchases columns (other columns are ignored).
    #[arg(long, env = "Q2Q_ENGAGEMENT", value_name = "URI")]
    pub engagement: String,
    /// Engagement format [default: from the extension].
    #[arg(long, value_enum)]
    pub engagement_format: Option<InputFormat>,
    /// Output file: .parquet, .csv or .ndjson, local or object store.
    #[arg(long, short = 'o', value_name = "URI")]
    pub output: String,
    /// First dt=YYYY-MM-DD folder of the window (inclusive) [default: all].
    #[arg(long, value_name = "DATE")]
    pub from: Option<chrono::NaiveDate>,
    /// Last dt=YYYY-MM-DD folder of the window (inclusive) [default: all].
    #[arg(long, value_name = "DATE")]
    pub to: Option<chrono::NaiveDate>,
    /// Fewest distinct co-purchased products for a pair.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_copurchases: u32,
    /// Candidates kept per query ...
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub top: u64,
    /// ... or this share of its candidates when that is more.
    #[arg(long, default_value_t = 0.6)]
    pub top_share: f64,
    /// Products bought from more queries than this count co-purchases among a sample of this
    /// many.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..))]
    pub hot_cap: u64,
    /// Random negatives per kept pair.
    #[arg(long, default_value_t = 1.0)]
    pub negatives: f64,
    /// Seed of the sampling and the negatives.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Shares of queries in validation and test, VALIDATION,TEST (the rest trains).
    #[arg(long, default_value = "0.1,0.1", value_name = "V,T")]
    pub split: String,
    #[command(flatten)]
    pub engine: super::EngineArgs,
}

pub async fn run(command: MineCommand) -> Result<()> {
    match command {
        MineCommand::Pairs(args) => pairs(args).await,
        MineCommand::Ance(args) => ance(args).await,
    }
}

fn parse_split(text: &str) -> Result<SplitShares> {
    let bad = || {
        Error::config(format!(
            "--split '{text}': expected VALIDATION,TEST shares in [0, 1] with a sum below 1, e.g. 0.1,0.1"
        ))
    };
    let (v, t) = text.split_once(',').ok_or_else(bad)?;
    let (validation, test) = (
        v.trim().parse::<f64>().map_err(|_| bad())?,
        t.trim().parse::<f64>().map_err(|_| bad())?,
    );
    if !(0.0..1.0).contains(&validation) || !(0.0..1.0).contains(&test) || validation + test >= 1.0
    {
        return Err(bad());
    }
    Ok(SplitShares { validation, test })
}

async fn pairs(args: PairsArgs) -> Result<()> {
    if !(args.top_share > 0.0 && args.top_share <= 1.0) {
        return Err(Error::config(format!(
            "--top-share {}: expected a share in (0, 1]",
            args.top_share
        )));
    }
    if !(args.negatives.is_finite() && args.negatives >= 0.0) {
        return Err(Error::config(format!(
            "--negatives {}: expected a ratio >= 0",
            args.negatives
        )));
    }
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from > to
    {
        return Err(Error::config(format!("--from {from} is after --to {to}")));
    }
    let split = parse_split(&args.split)?;
    let format = OutputFormat::from_extension(&args.output).ok_or_else(|| {
        Error::config(format!(
            "--output {}: use a .parquet, .csv or .ndjson file",
            args.output
        ))
    })?;
    let params = PairParams {
        min_copurchases: args.min_copurchases,
        top_n: args.top as usize,
        top_share: args.top_share,
        hot_cap: args.hot_cap as usize,
        negative_ratio: args.negatives,
        seed: args.seed,
    };
    let spec = InputSpec {
        format: args.engagement_format,
        ..InputSpec::new(args.engagement)
    };
    let window = Window {
        from: args.from.map(|d| d.to_string()),
        to: args.to.map(|d| d.to_string()),
    };
    let ctx = session::new_context(&args.engine.execution()?)?;
    let stop = super::signal::StopOnSignal::new("stopping: cleaning up the staging output");
    let job = PairJob {
        engagement: spec,
        window,
        params,
        split,
        output: args.output.clone(),
        format,
    };
    let report = mine::mine_pairs(&ctx, &job, &stop.token).await?;
    eprintln!("{report}");
    eprintln!("  wrote {}", crate::redact::text(&args.output));
    Ok(())
}

async fn ance(args: AnceArgs) -> Result<()> {
    let format = match OutputFormat::from_extension(&args.output) {
        Some(OutputFormat::Csv) | None => {
            return Err(Error::config(format!(
                "--output {}: the rows have list columns; use a .parquet or .ndjson file",
                args.output
            )));
        }
        Some(format) => format,
    };
    let job = AnceJob {
        retrieval: InputSpec::new(args.retrieval),
        pairs: InputSpec::new(args.pairs),
        negatives: args.negatives,
        skip_top: args.skip_top,
        output: args.output.clone(),
        format,
    };
    let ctx = session::new_context(&args.engine.execution()?)?;
    let stop = super::signal::StopOnSignal::new("stopping: cleaning up the staging output");
    let report = ance::mine_ance(&ctx, &job, &stop.token).await?;
    eprintln!("{report}");
    eprintln!("  wrote {}", crate::redact::text(&args.output));
    Ok(())
}
