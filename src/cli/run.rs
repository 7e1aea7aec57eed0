//! `q2q-prior run`: compute the feature table.

use clap::Args;

use super::{JobArgs, OutputArgs};
use tokio_util::sync::CancellationToken;

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
    let stop = StopOnSignal::new("stopping: cleaning up the staging output");
    let summary = job::run(&config, &stop.token).await?;
    eprintln!("{}", crate::redact::text(&summary.to_string()));
    Ok(())
}

/// A cancellation token that Ctrl-C or SIGTERM cancels (logging `message` first) for as long as
/// this value lives: commands pass `token` to work that cleans up its staging output when cancelled.
pub struct StopOnSignal {
    pub token: CancellationToken,
    listener: tokio::task::JoinHandle<()>,
}

impl StopOnSignal {
    pub fn new(message: &'static str) -> Self {
        let token = CancellationToken::new();
        let listener = tokio::spawn({
            let token = token.clone();
            async move {
                shutdown_signal().await;
                tracing::warn!("{message}");
                token.cancel();
            }
        });
        StopOnSignal { token, listener }
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Resolves on Ctrl-C or SIGTERM (what cron, Airflow and Kubernetes send to stop a task).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
