//! Running on Apache Ballista, DataFusion's distributed engine, when one machine is not enough.
//!
//! `q2q-prior scheduler` and `q2q-prior executor` are Ballista's scheduler and executor embedded in
//! this binary, so that they decode plans with the project's functions: the scheduler's sessions
//! and the executors' function registry are filled by [`session::register_functions`], the same
//! function every local session uses, and their runtimes' object stores by
//! [`session::runtime_builder`]. A client session (`run`, `backfill` or `sql` with
//! `--cluster df://HOST:PORT`) is an ordinary session upgraded with Ballista's query planner
//! ([`session::client_state`]): its queries are planned by the scheduler and run by the
//! executors.
//!
//! The merge plan's custom parts travel with [`session::codecs`] (src/pipeline/merge/codec.rs),
//! which the client, the scheduler and the executors all use.
//!
//! Inputs are read by the executors: paths must mean the same file on every host (a shared
//! filesystem) or be object-store URLs, whose stores every process builds from its own environment
//! ([`crate::io::storage::EnvStoreRegistry`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::{ConfigProducer, RuntimeProducer};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;

use crate::config::ExecutionConfig;
use crate::error::{Error, Result};
use crate::session::{self, codecs};

fn df_error(e: Error) -> DataFusionError {
    match e {
        Error::DataFusion(e) => e,
        other => DataFusionError::External(Box::new(other)),
    }
}

/// Object stores from each provider's environment, as in local sessions, and spill files in
/// `work_dir` when given.
fn runtime_producer(execution: &ExecutionConfig, work_dir: Option<String>) -> RuntimeProducer {
    let execution = execution.clone();
    Arc::new(move |_config: &SessionConfig| {
        let mut builder = session::runtime_builder(&execution);
        if let Some(dir) = &work_dir {
            builder = builder.with_temp_file_path(dir.clone());
        }
        builder.build_arc()
    })
}

/// The scheduler's sessions: Ballista's defaults, this project's functions and object stores.
fn scheduler_session_builder(
    execution: ExecutionConfig,
) -> ballista_scheduler::scheduler_server::SessionBuilder {
    let runtime = runtime_producer(&execution, None);
    Arc::new(move |config: SessionConfig| {
        let runtime = runtime(&config)?;
        let state = ballista_core::utils::default_session_builder(config)?;
        let mut state = session::with_physical_rules(SessionStateBuilder::new_from_existing(state))
            .with_runtime_env(runtime)
            .build();
        session::register_functions(&mut state).map_err(df_error)?;
        Ok(state)
    })
}

/// The functions an executor decodes plans with: DataFusion's and this project's.
pub fn function_registry() -> Result<BallistaFunctionRegistry> {
    let mut state = SessionStateBuilder::new().with_default_features().build();
    session::register_functions(&mut state)?;
    Ok(BallistaFunctionRegistry::from(&state))
}

/// `q2q-prior scheduler`'s settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub bind: SocketAddr,
    /// The host name executors and clients reach this scheduler by; the bind address if absent.
    pub external_host: Option<String>,
    /// An executor silent for this long is dead: its tasks run again elsewhere.
    pub executor_timeout: Duration,
    /// The object-store settings of the scheduler's sessions.
    pub execution: ExecutionConfig,
}

/// Runs a Ballista scheduler until the process is stopped.
pub async fn run_scheduler(options: &SchedulerOptions) -> Result<()> {
    let execution = options.execution.clone();
    let timeout = options.executor_timeout.as_secs().max(1);
    let mut config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        external_host: options
            .external_host
            .clone()
            .unwrap_or_else(|| options.bind.ip().to_string()),
        executor_timeout_seconds: timeout,
        expire_dead_executor_interval_seconds: (timeout / 4).clamp(1, 15),
        no_executors_grace_period_seconds: timeout,
        ..SchedulerConfig::default()
    }
    .with_override_session_builder(scheduler_session_builder(execution));
    let (logical, physical) = codecs();
    config.override_logical_codec = Some(logical);
    config.override_physical_codec = Some(physical);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(ballista_error)?;
    eprintln!(
        "q2q-prior scheduler (Ballista {}, DataFusion {}) listening on {}",
        ballista_core::BALLISTA_VERSION,
        datafusion::DATAFUSION_VERSION,
        options.bind
    );
    start_server(cluster, options.bind, Arc::new(config))
        .await
        .map_err(ballista_error)
}

/// `q2q-prior executor`'s settings.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, HOST:PORT.
    pub scheduler: String,
    pub bind_host: String,
    /// The host name the scheduler and other executors reach this one by; `bind_host` if absent.
    pub external_host: Option<String>,
    /// Arrow Flight port (shuffle data).
    pub port: u16,
    /// gRPC port (tasks).
    pub grpc_port: u16,
    /// Tasks run at once; the number of cores if absent.
    pub concurrency: Option<usize>,
    /// Shuffle and spill files; a temporary folder if absent.
    pub work_dir: Option<String>,
    /// Memory for all tasks together (split evenly), before they spill.
    pub memory_limit: Option<u64>,
    pub heartbeat: Duration,
    /// The object-store settings of the executor's tasks.
    pub execution: ExecutionConfig,
}

/// Runs a Ballista executor until the process is stopped.
pub async fn run_executor(options: &ExecutorOptions) -> Result<()> {
    let (host, port) = options
        .scheduler
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            Error::config(format!(
                "--scheduler '{}': expected HOST:PORT, e.g. 127.0.0.1:50050",
                options.scheduler
            ))
        })?;
    let execution = &options.execution;
    let config_producer: ConfigProducer = Arc::new(ballista_core::utils::default_config_producer);
    let mut config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: Some(
            options
                .external_host
                .clone()
                .unwrap_or_else(|| options.bind_host.clone()),
        ),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: host,
        scheduler_port: port,
        work_dir: options.work_dir.clone(),
        memory_pool_size: options.memory_limit,
        executor_heartbeat_interval_seconds: options.heartbeat.as_secs().max(1),
        override_function_registry: Some(Arc::new(function_registry()?)),
        override_runtime_producer: Some(runtime_producer(execution, options.work_dir.clone())),
        override_config_producer: Some(config_producer),
        override_logical_codec: Some(codecs().0),
        override_physical_codec: Some(codecs().1),
        ..ExecutorProcessConfig::default()
    };
    if let Some(n) = options.concurrency {
        config.vcores = n.max(1);
    }
    eprintln!(
        "q2q-prior executor (Ballista {}) on {}:{} (tasks: {}), scheduler {}",
        ballista_core::BALLISTA_VERSION,
        options.bind_host,
        options.port,
        config.vcores,
        options.scheduler
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(ballista_error)
}

/// `q2q-prior standalone`'s settings: a whole cluster in this process, on 127.0.0.1 only.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// The scheduler's port; executors take the free ports the system gives.
    pub port: u16,
    pub executors: usize,
    /// Task slots per executor.
    pub concurrency: usize,
    /// Memory per executor, before its tasks spill.
    pub memory_limit: Option<u64>,
    /// Holds each executor's shuffle and spill files (`executor-N/`).
    pub work_dir: std::path::PathBuf,
    /// The object-store settings of the scheduler and the executors.
    pub execution: ExecutionConfig,
}

/// Runs a scheduler and `executors` executors in this process, listening on 127.0.0.1 only (for
/// trials and tests: the same code as the separate processes), until one of them stops or the
/// process is interrupted.
pub async fn run_standalone(options: &StandaloneOptions) -> Result<()> {
    let bind = SocketAddr::from(([127, 0, 0, 1], options.port));
    let mut tasks = tokio::task::JoinSet::new();
    let scheduler = SchedulerOptions {
        bind,
        external_host: None,
        executor_timeout: Duration::from_secs(30),
        execution: options.execution.clone(),
    };
    tasks.spawn(async move { run_scheduler(&scheduler).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(bind).await.is_err() {
        if let Some(done) = tasks.try_join_next() {
            // the scheduler stopped before it listened (e.g. the port is taken)
            return done.map_err(|e| Error::Io(std::io::Error::other(e)))?;
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Io(std::io::Error::other(format!(
                "the scheduler did not listen on {bind} within 30 s"
            ))));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..options.executors {
        let work_dir = options.work_dir.join(format!("executor-{i}"));
        std::fs::create_dir_all(&work_dir)?;
        let executor = ExecutorOptions {
            scheduler: bind.to_string(),
            bind_host: "127.0.0.1".into(),
            external_host: None,
            port: free_port()?,
            grpc_port: free_port()?,
            concurrency: Some(options.concurrency),
            work_dir: Some(work_dir.to_string_lossy().into_owned()),
            memory_limit: options.memory_limit,
            heartbeat: Duration::from_secs(5),
            execution: options.execution.clone(),
        };
        tasks.spawn(async move { run_executor(&executor).await });
    }
    eprintln!(
        "standalone cluster: df://{bind} ({} executor(s), {} task slot(s) each); Ctrl-C stops it",
        options.executors, options.concurrency
    );
    // the first to stop (an error, or Ctrl-C, which every part of it hears) ends the cluster
    let first = tasks.join_next().await;
    tasks.shutdown().await;
    match first {
        Some(result) => result.map_err(|e| Error::Io(std::io::Error::other(e)))?,
        None => Ok(()),
    }
}

/// A port free at the moment (the system's choice).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn ballista_error(e: ballista_core::error::BallistaError) -> Error {
    Error::Io(std::io::Error::other(format!("ballista: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executors_know_the_project_functions() {
        let registry = function_registry().unwrap();
        for f in crate::udf::all() {
            assert!(
                registry.scalar_functions.contains_key(f.name()),
                "{}",
                f.name()
            );
        }
        // and DataFusion's own
        assert!(registry.scalar_functions.contains_key("tanh"));
    }
}
