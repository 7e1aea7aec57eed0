//! The I/O floor of the feature job: decode every column of both inputs and write a file with the
//! output's rows, schema and Parquet settings. No job can be faster; benches/compare.sh reports
//! the engine's time as a multiple of this.
//!
//! `cargo bench --bench io_floor -- --engagement E --neighbours N --like OUTPUT --out FILE`
//!
//! The output's rows are loaded into memory before the clock starts (a job computes them; it does
//! not read them). Prints `io_floor read_s=.. write_s=.. wall_s=..` on stdout.

use std::time::Instant;

use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use q2q_prior::sink::parquet_properties;

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
        let rows = ctx
            .read_parquet(like.as_str(), ParquetReadOptions::default())
            .await
            .expect("read the output to mimic")
            .collect()
            .await
            .expect("collect");
        let schema = rows.first().expect("the output has rows").schema();

        let start = Instant::now();
        let mut decoded = 0usize;
        for input in [&engagement, &neighbours] {
            let mut stream = ctx
                .read_parquet(input.as_str(), ParquetReadOptions::default())
                .await
                .expect("read input")
                .execute_stream()
                .await
                .expect("scan");
            while let Some(batch) = stream.next().await {
                decoded += batch.expect("decode").num_rows();
            }
        }
        let read = start.elapsed();
        let file = std::fs::File::create(&out).expect("create output");
        let mut writer =
            ArrowWriter::try_new(file, schema, Some(parquet_properties())).expect("writer");
        for batch in &rows {
            writer.write(batch).expect("write");
        }
        writer.close().expect("close");
        let wall = start.elapsed();
        eprintln!(
            "io_floor: decoded {decoded} input rows, wrote {} rows",
            rows.iter().map(|b| b.num_rows()).sum::<usize>()
        );
        println!(
            "io_floor read_s={:.3} write_s={:.3} wall_s={:.3}",
            read.as_secs_f64(),
            (wall - read).as_secs_f64(),
            wall.as_secs_f64()
        );
    });
}
