//! The engine's Parquet writer against DataFusion's own parallel Parquet sink, side by side in one
//! run. Issue 22 measured the hand-written column-parallel writer the engine had against it (it
//! lost, 1.15x DataFusion's time: docs/BENCHMARKS.md), so the engine's writer is now DataFusion's
//! sink behind the engine's staging and hashing; this bench keeps the cost of those visible.
//!
//! `cargo bench --bench parquet_writers -- --like OUTPUT.parquet --out DIR [--runs 3]`
//!
//! Each round, in turn: decode `--like` alone; decode it and write it with the engine's writer
//! (`q2q_prior::io::sink::write_atomic`, as `run` writes its output: staged, SHA-256 while
//! writing, DataFusion's sink); decode it and write it with DataFusion's
//! `DataFrame::write_parquet` (`allow_single_file_parallelism`, with 1 and with 2 parallel row-group
//! writers); and with parquet's single-threaded `ArrowWriter`. Every writer gets the engine's
//! settings (zstd level 1, row groups of 2^20 rows). A writer's time is its round's wall minus the
//! decode-only wall of the same round. Prints one line per round and writer, then the medians and
//! each writer's median as a multiple of the engine's.

use std::time::Instant;

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use q2q_prior::config::OutputFormat;
use q2q_prior::io::sink::{parquet_options, parquet_properties, write_atomic};
use q2q_prior::io::storage::OutputLocation;

fn value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

const WRITERS: [&str; 5] = [
    "decode",
    "engine",
    "datafusion-1",
    "datafusion-2",
    "arrow-writer",
];

fn main() {
    let like = value("--like").expect("--like OUTPUT.parquet is required");
    let out = value("--out").expect("--out DIR is required");
    let runs: usize = value("--runs").map_or(3, |r| r.parse().expect("--runs N"));
    std::fs::create_dir_all(&out).expect("--out folder");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut walls = vec![Vec::new(); WRITERS.len()];
    runtime.block_on(async {
        let ctx = SessionContext::new();
        for round in 0..runs {
            for (w, writer) in WRITERS.iter().enumerate() {
                let df = ctx
                    .read_parquet(like.as_str(), ParquetReadOptions::default())
                    .await
                    .expect("read --like");
                let target = format!("{out}/{writer}.parquet");
                let _ = std::fs::remove_file(&target);
                let start = Instant::now();
                match *writer {
                    "decode" => {
                        let mut stream = df.execute_stream().await.expect("plan");
                        while let Some(batch) = stream.next().await {
                            batch.expect("decode");
                        }
                    }
                    "engine" => {
                        let location = OutputLocation::resolve(ctx.runtime_env().as_ref(), &target)
                            .expect("location");
                        let cancel = tokio_util::sync::CancellationToken::new();
                        write_atomic(df, &location, OutputFormat::Parquet, &cancel, |_| {})
                            .await
                            .expect("engine writer");
                    }
                    "datafusion-1" | "datafusion-2" => {
                        let mut options = parquet_options();
                        options.global.maximum_parallel_row_group_writers =
                            if *writer == "datafusion-2" { 2 } else { 1 };
                        df.write_parquet(
                            &target,
                            DataFrameWriteOptions::new().with_single_file_output(true),
                            Some(options),
                        )
                        .await
                        .expect("datafusion writer");
                    }
                    _ => {
                        let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
                        let file = tokio::fs::File::create(&target).await.expect("create");
                        let mut writer =
                            AsyncArrowWriter::try_new(file, schema, Some(parquet_properties()))
                                .expect("arrow writer");
                        let mut stream = df.execute_stream().await.expect("plan");
                        while let Some(batch) = stream.next().await {
                            writer.write(&batch.expect("decode")).await.expect("write");
                        }
                        writer.close().await.expect("close");
                    }
                }
                let wall = start.elapsed().as_secs_f64();
                let bytes = std::fs::metadata(&target).map_or(0, |m| m.len());
                println!("round={round} writer={writer} wall_s={wall:.2} bytes={bytes}");
                walls[w].push(wall);
            }
        }
    });
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let decode = median(&walls[0]);
    // each round's write time: its wall minus the same round's decode
    let write = |w: usize| {
        let per_round: Vec<f64> = walls[w]
            .iter()
            .zip(&walls[0])
            .map(|(wall, decode)| wall - decode)
            .collect();
        median(&per_round)
    };
    let engine = write(1);
    println!("median decode_s={decode:.2}");
    for (w, writer) in WRITERS.iter().enumerate().skip(1) {
        println!(
            "median writer={writer} write_s={:.2} wall_s={:.2} write_vs_engine={:.2}",
            write(w),
            median(&walls[w]),
            write(w) / engine
        );
    }
}
