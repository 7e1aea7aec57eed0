//! `q2q-prior run`: compute the feature table.

use clap::Args;

use super::{JobArgs, OutputArgs};

use crate::error::Result;
use crate::job;

#[derive(Debug, Args)]
#[command(
    long_about = "Compute the feature table (query, product_id, h, prior, alpha, f, impressions, \
    n_neighbours, n_contributing) from engagement and neighbour lists.\n\n\
    Inputs are checked first; bad input stops the job with exit code 2 and a message naming the input, \
    column and an example row. The output is written to a staging file beside the destination and \
    renamed into place only when complete. A summary goes to stderr."
)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Print the physical plan the job would run (operators, partitioning, join algorithms) on
    /// stdout, and stop without reading rows or writing anything.
    #[arg(long)]
    pub explain: bool,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let config = args.job.load_with(Some(&args.output))?;
    if args.explain {
        print!("{}", job::explain(&config).await?);
        return Ok(());
    }
    let stop = super::signal::StopOnSignal::new("stopping: cleaning up the staging output");
    let summary = job::run(&config, &stop.token).await?;
    eprintln!("{}", crate::redact::text(&summary.to_string()));
    Ok(())
}
