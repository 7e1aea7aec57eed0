//! `q2q-prior scheduler` and `q2q-prior executor`: a Ballista cluster that knows this project's
//! functions (see [`crate::cluster`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Args;

use crate::cluster::{self, ExecutorOptions, SchedulerOptions, StandaloneOptions};
use crate::error::Result;

#[derive(Debug, Args)]
#[command(
    long_about = "Run a Ballista scheduler. Clients submit jobs to it with \
    `--cluster df://HOST:PORT`; executors (`q2q-prior executor`) register with it. Runs until \
    stopped. Logs (RUST_LOG, e.g. info) go to stderr."
)]
pub struct SchedulerArgs {
    /// Address to listen on (gRPC).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub bind: SocketAddr,
    /// Host name executors and clients reach the scheduler by [default: the bind address].
    #[arg(long)]
    pub external_host: Option<String>,
    /// An executor that has not sent a heartbeat for this long is dead; its tasks run again on
    /// the others.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub executor_timeout_secs: u64,
    #[command(flatten)]
    pub object_store: super::ObjectStoreArgs,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Run a Ballista executor for the scheduler at --scheduler. It reads the \
    job's inputs itself: use object-store URLs or paths that every executor sees. Runs until \
    stopped. Logs (RUST_LOG, e.g. info) go to stderr."
)]
pub struct ExecutorArgs {
    /// The scheduler, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub scheduler: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_host: String,
    /// Host name the scheduler and other executors reach this one by [default: --bind-host].
    #[arg(long)]
    pub external_host: Option<String>,
    /// Arrow Flight port (shuffle data between executors).
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// gRPC port (tasks from the scheduler).
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Tasks run at once [default: number of cores].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: Option<u64>,
    /// Folder for shuffle and spill files [default: a temporary folder].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Memory for all tasks together, split evenly between them, before they spill [default:
    /// Ballista's share of the machine's memory].
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
    /// Seconds between heartbeats to the scheduler (keep well below its --executor-timeout-secs).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub heartbeat_secs: u64,
    #[command(flatten)]
    pub object_store: super::ObjectStoreArgs,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Run a scheduler and executors in this process, on 127.0.0.1 only: a cluster \
    for trials and tests, running the same code as `scheduler` and `executor`. Jobs use it with \
    `--cluster df://127.0.0.1:PORT`. Runs until stopped (Ctrl-C)."
)]
pub struct StandaloneArgs {
    /// The scheduler's port (on 127.0.0.1).
    #[arg(long, default_value_t = 50050)]
    pub port: u16,
    /// Executors to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub executors: u64,
    /// Task slots per executor (at least 2 lets a job survive losing a task's stage; see
    /// docs/DISTRIBUTED.md).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
    /// Memory per executor before its tasks spill [default: Ballista's share of the machine].
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
    /// Folder for the executors' shuffle and spill files [default: a new temporary folder,
    /// removed at exit].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    pub object_store: super::ObjectStoreArgs,
}

pub async fn standalone(args: StandaloneArgs) -> Result<()> {
    let (work_dir, temporary) = match args.work_dir {
        Some(dir) => (dir, false),
        None => (
            std::env::temp_dir().join(format!("q2q-standalone-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work_dir)?;
    let result = cluster::run_standalone(&StandaloneOptions {
        port: args.port,
        executors: args.executors as usize,
        concurrency: args.concurrency as usize,
        memory_limit: args.memory_limit.map(|m| m.as_u64()),
        work_dir: work_dir.clone(),
        execution: args.object_store.execution(),
    })
    .await;
    if temporary {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    result
}

pub async fn scheduler(args: SchedulerArgs) -> Result<()> {
    cluster::run_scheduler(&SchedulerOptions {
        bind: args.bind,
        external_host: args.external_host,
        executor_timeout: Duration::from_secs(args.executor_timeout_secs),
        execution: args.object_store.execution(),
    })
    .await
}

pub async fn executor(args: ExecutorArgs) -> Result<()> {
    if let Some(dir) = &args.work_dir {
        std::fs::create_dir_all(dir)?;
    }
    cluster::run_executor(&ExecutorOptions {
        scheduler: args.scheduler,
        bind_host: args.bind_host,
        external_host: args.external_host,
        port: args.port,
        grpc_port: args.grpc_port,
        concurrency: args.concurrency.map(|n| n as usize),
        work_dir: args.work_dir.map(|d| d.to_string_lossy().into_owned()),
        memory_limit: args.memory_limit.map(|m| m.as_u64()),
        heartbeat: Duration::from_secs(args.heartbeat_secs),
        execution: args.object_store.execution(),
    })
    .await
}
