//! The `q2q-prior` binary: parse, build one config, run the command, map the error to an exit code
//! (bad input or config 2, internal 1, interrupted 130, broken pipe 0).

use std::process::ExitCode;

use clap::Parser;
use q2q_prior::cli::Cli;

/// mimalloc, not the system allocator: glibc keeps freed memory in per-thread arenas, and RSS
/// drifted past `--memory-limit` by far more than the pool's reservations explain (measured in
/// docs/BENCHMARKS.md, 2026-12-04).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    for arg in std::env::args_os() {
        q2q_prior::redact::remember(&arg.to_string_lossy());
    }
    // clap's messages quote arguments: printed through the redaction like every other message
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if e.use_stderr() {
                eprint!("{}", q2q_prior::redact::text(&e.render().to_string()));
            } else {
                // --help, --version: on stdout, styled as clap styles them
                let _ = e.print();
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Deep plans (the feature job is one) are encoded and decoded recursively by Ballista's
        // protobuf codec, beyond DataFusion's own stack growth: the 2 MiB default overflows in
        // the scheduler. Reserved address space, not memory.
        .thread_stack_size(32 * 1024 * 1024)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(q2q_prior::Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", q2q_prior::redact::text(&e.to_string()));
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings only), credentials redacted.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(q2q_prior::redact::LogWriter)
        .init();
}
