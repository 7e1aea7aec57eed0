//! `q2q-prior run`: compute the feature table.

use clap::Args;

use super::JobArgs;
use crate::error::{Error, Result};
use crate::job;
use crate::sink;
use crate::storage::OutputLocation;

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
}

pub async fn run(args: RunArgs) -> Result<()> {
    let config = args.job.load()?;
    tokio::select! {
        result = job::run(&config) => {
            let summary = result?;
            eprintln!("{summary}");
            Ok(())
        }
        _ = shutdown_signal() => {
            // The job future was dropped mid-write: remove what it staged.
            if let (Some(output), Ok(ctx)) = (&config.output, crate::session::new_context(&config.execution))
                && let Ok(location) = OutputLocation::resolve(ctx.runtime_env().as_ref(), output)
            {
                sink::cleanup_staging(&location).await;
            }
            Err(Error::Interrupted)
        }
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
