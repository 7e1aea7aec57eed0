//! `q2q-prior synth`: generate a synthetic marketplace.

use std::time::Instant;

use clap::Args;

use crate::config::InputFormat;
use crate::error::Result;
use crate::tools::synth::{self, SynthSpec};

#[derive(Debug, Args)]
#[command(
    long_about = "Generate a synthetic marketplace: engagement.<fmt> (query, product_id, impressions, \
    clicks, adds, purchases) and neighbours.<fmt> (query, neighbour, score) in --out.\n\n\
    Zipf query traffic (most queries are tail), intents with textual variants, position-biased \
    impressions, engagement rising with relevance, and noisy neighbour lists with self-pairs and \
    duplicates. The same --seed always gives the same files."
)]
pub struct SynthArgs {
    /// Number of distinct queries.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub queries: u64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output folder: a local path (created if missing) or an object-store URL (s3://, gs://,
    /// az://); each file is written atomically.
    #[arg(long, value_name = "DIR")]
    pub out: String,
    /// File format.
    #[arg(long, value_enum, default_value_t = InputFormat::Parquet)]
    pub format: InputFormat,
    /// Also write engagement_later.<fmt>: a second period of the same traffic and relevance, for
    /// `evaluate features` (held-out outcomes) and `export lightgbm` (labels).
    #[arg(long)]
    pub later_period: bool,
    /// Add a bestseller product (BESTSELLER-0) bought once from this many distinct queries: the
    /// hot product of co-purchase mining (`mine pairs --hot-cap`).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub bestseller_queries: u64,
}

pub async fn run(args: SynthArgs) -> Result<()> {
    let start = Instant::now();
    let spec = SynthSpec {
        queries: args.queries as usize,
        seed: args.seed,
        format: args.format,
        later_period: args.later_period,
        bestseller_queries: args.bestseller_queries as usize,
    };
    let runtime = crate::session::runtime_env(&crate::config::ExecutionConfig::default())?;
    let out = synth::generate(&spec, &args.out, &runtime).await?;
    eprintln!(
        "synth: {} queries (head {}, torso {}, tail {} = {:.1}%), {} engagement rows -> {}, {} neighbour rows -> {} ({:.1}s)",
        out.queries,
        out.head_queries,
        out.torso_queries,
        out.tail_queries,
        100.0 * out.tail_queries as f64 / out.queries.max(1) as f64,
        out.engagement_rows,
        crate::redact::text(&out.engagement),
        out.neighbour_rows,
        crate::redact::text(&out.neighbours),
        start.elapsed().as_secs_f64()
    );
    if let Some((path, rows)) = &out.later {
        eprintln!(
            "synth: later period: {rows} engagement rows -> {}",
            crate::redact::text(path)
        );
    }
    Ok(())
}
