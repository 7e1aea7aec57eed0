//! `q2q-prior backfill`: (re)fill a feature store's daily partitions.

use chrono::NaiveDate;
use clap::Args;

use super::{JobArgs, OutputArgs};
use crate::backfill::{self, Request};
use crate::config::SnapshotMode;
use crate::error::{Error, Result};

#[derive(Debug, Args)]
#[command(
    long_about = "Compute one feature partition per day, <output>/dt=D/part-00000.parquet, with the \
    feature columns plus event_timestamp (D at 00:00 UTC) and created_timestamp (the run's start).\n\n\
    Day D reads the engagement of the window_days days before it (engagement in dt=YYYY-MM-DD \
    folders; a key's rows are summed over the window) and the latest neighbour snapshot folder on \
    or before D (or the neighbours path as it is).\n\n\
    Each partition is staged, published, then marked with _manifest.json and _SUCCESS (create-only). \
    A rerun skips partitions whose manifest matches the config and inputs, rebuilds the others \
    (missing, incomplete, damaged, stale) and cleans what killed runs left. Two runs never build \
    one partition at once (a lock per partition). Exit code 1 if any partition failed."
)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// First day to build (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    pub from: NaiveDate,
    /// Last day to build, inclusive (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    pub to: NaiveDate,
    /// Partitions built at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub parallel: u64,
    /// Rebuild partitions that are up to date too.
    #[arg(long)]
    pub force: bool,
    /// List what would be built and why (tab-separated on stdout); build nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Days of engagement before D that day D reads [backfill.window_days; default 365].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub window_days: Option<u32>,
    /// Neighbour lists of day D [backfill.neighbours_snapshot; default latest].
    #[arg(long, value_enum)]
    pub neighbours_snapshot: Option<SnapshotMode>,
    /// Name of the date folders of the inputs and the output [backfill.date_partition; default dt].
    #[arg(long, value_name = "KEY")]
    pub date_partition: Option<String>,
    /// Take over a partition lock not renewed for this many seconds (a dead run's)
    /// [backfill.lock_timeout_secs; default 600].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub lock_timeout_secs: Option<u64>,
}

pub async fn run(args: BackfillArgs) -> Result<()> {
    let mut config = args.job.load_with(Some(&args.output))?;
    if let Some(days) = args.window_days {
        config.backfill.window_days = days;
    }
    if let Some(mode) = args.neighbours_snapshot {
        config.backfill.neighbours_snapshot = mode;
    }
    if let Some(key) = args.date_partition {
        config.backfill.date_partition = key;
    }
    if let Some(secs) = args.lock_timeout_secs {
        config.backfill.lock_timeout_secs = secs;
    }
    config.validate()?;
    let request = Request {
        from: args.from,
        to: args.to,
        parallel: args.parallel as usize,
        force: args.force,
    };
    if args.dry_run {
        let plans = backfill::plan(&config, &request).await?;
        println!("partition\taction\treason\tengagement_days\tengagement_files\tneighbours");
        for p in &plans {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                p.folder,
                p.action.name(),
                crate::redact::text(p.action.reason()),
                p.engagement.len(),
                p.engagement_files,
                crate::redact::text(&p.neighbours)
            );
        }
        return Ok(());
    }
    let stop = super::signal::StopOnSignal::new("stopping: cleaning up staged partitions");
    let report = backfill::run(&config, &request, &stop.token).await?;
    eprint!("{}", crate::redact::text(&report.to_string()));
    if !report.failed.is_empty() {
        return Err(Error::PartitionsFailed(report.failed.len()));
    }
    Ok(())
}
