//! Stopping cleanly: Ctrl-C or SIGTERM (what cron, Airflow and Kubernetes send) cancels the
//! command's work, which removes its staging output before the process exits.

use tokio_util::sync::CancellationToken;

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
