//! The I/O floor of the feature job: decode every column of both inputs and write a file with the
//! output's rows, schema and Parquet settings, with the engine's writer (DataFusion's sink, columns
//! encoded in parallel, staged and hashed as the job writes). No job can be faster; benches/compare.sh reports the engine's time as a multiple
//! of this.
//!
//! `cargo bench --bench io_floor -- --engagement E --neighbours N --like OUTPUT --out FILE`
//!
//! A job computes the output's rows; it does not read them. So the write is measured as the time of
//! decoding the `--like` file and writing it, minus the time of decoding it alone (both streamed,
//! so memory stays bounded at any scale). Prints `io_floor read_s=.. write_s=.. wall_s=..` on
//! stdout, wall = read + write.

use std::time::{Duration, Instant};

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use q2q_prior::config::OutputFormat;
use q2q_prior::io::sink::write_stream_atomic;
use q2q_prior::io::storage::OutputLocation;

/// The engine's allocator (src/main.rs), so that the floor and the engine differ only in the work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn value(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("{name} PATH is required"))
}

fn main() {
    let (engagement, neighbours) = (value("--engagement"), value("--neighbours"));
    let (like, out) = (value("--like"), value("--out"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let ctx = SessionContext::new();
        let stream = |path: String| {
            let ctx = ctx.clone();
            async move {
                ctx.read_parquet(path.as_str(), ParquetReadOptions::default())
                    .await
                    .expect("read parquet")
                    .execute_stream()
                    .await
                    .expect("scan")
            }
        };

        let start = Instant::now();
        let mut decoded = 0usize;
        for input in [&engagement, &neighbours] {
            let mut batches = stream(input.clone()).await;
            while let Some(batch) = batches.next().await {
                decoded += batch.expect("decode").num_rows();
            }
        }
        let read = start.elapsed();

        // decoding the output alone, then decoding and writing it: the difference is the write
        let start = Instant::now();
        let mut batches = stream(like.clone()).await;
        while let Some(batch) = batches.next().await {
            batch.expect("decode");
        }
        let decode_like = start.elapsed();

        let start = Instant::now();
        let batches = stream(like.clone()).await;
        let location = OutputLocation::resolve(ctx.runtime_env().as_ref(), &out).expect("--out");
        let cancel = tokio_util::sync::CancellationToken::new();
        let written =
            write_stream_atomic(batches, &location, OutputFormat::Parquet, &cancel, |_| {})
                .await
                .expect("write")
                .rows;
        let write = start.elapsed().saturating_sub(decode_like);
        eprintln!("io_floor: decoded {decoded} input rows, wrote {written} rows");
        let wall: Duration = read + write;
        println!(
            "io_floor read_s={:.3} write_s={:.3} wall_s={:.3}",
            read.as_secs_f64(),
            write.as_secs_f64(),
            wall.as_secs_f64()
        );
    });
}
