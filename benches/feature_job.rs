//! Bench: the whole feature job on `synth` data, end to end (read, checks, stages, write).
//!
//! `cargo bench --bench feature_job -- [--queries N] [--runs R] [--seed S]`
//!
//! Data is generated once into a temp folder (outside the timed loop); each run writes a fresh
//! output. Prints the median, min and max wall time and throughput. Figures go to
//! docs/BENCHMARKS.md with date, machine and command.

mod common;

use common::arg;
use std::time::{Duration, Instant};

use q2q_prior::config::{InputFormat, InputSpec, JobConfig};
use q2q_prior::tools::synth::{self, SynthSpec};

fn main() {
    // cargo passes --bench; anything we do not know is ignored.
    let queries = arg("--queries", 66_000);
    let runs = arg("--runs", 5).max(1);
    let seed = arg("--seed", 42);
    let dir = tempfile::tempdir().expect("temp dir");

    let start = Instant::now();
    let data = common::generate_blocking(synth::generate(
        &SynthSpec {
            queries: queries as usize,
            seed,
            format: InputFormat::Parquet,
            later_period: false,
            bestseller_queries: 0,
        },
        dir.path().to_str().expect("a UTF-8 temp dir"),
        &q2q_prior::session::runtime_env(&Default::default()).expect("runtime"),
    ));
    eprintln!(
        "synth: {} queries, {} engagement rows, {} neighbour rows in {:.1}s",
        data.queries,
        data.engagement_rows,
        data.neighbour_rows,
        start.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut times: Vec<Duration> = Vec::new();
    let mut rows_out = 0;
    for run in 0..runs {
        let output = dir.path().join(format!("features-{run}.parquet"));
        let config = JobConfig {
            engagement: Some(InputSpec::new(data.engagement.clone())),
            neighbours: Some(InputSpec::new(data.neighbours.clone())),
            output: Some(output.to_string_lossy().into_owned()),
            ..JobConfig::default()
        };
        let start = Instant::now();
        let summary = runtime
            .block_on(q2q_prior::job::run(
                &config,
                &tokio_util::sync::CancellationToken::new(),
            ))
            .expect("feature job");
        let took = start.elapsed();
        eprintln!(
            "run {run}: {:.3}s (checks {:.3}s, neighbour sets {:.3}s, prior+blend+write {:.3}s)",
            took.as_secs_f64(),
            summary.check_time.as_secs_f64(),
            summary
                .neighbour_sets_time
                .unwrap_or_default()
                .as_secs_f64(),
            summary.features_time.as_secs_f64()
        );
        rows_out = summary.written.rows;
        times.push(took);
        std::fs::remove_file(&output).ok();
    }
    times.sort();
    let median = times[times.len() / 2];
    let rows_in = data.engagement_rows + data.neighbour_rows;
    println!(
        "feature_job queries={queries} engagement_rows={} neighbour_rows={} output_rows={rows_out}",
        data.engagement_rows, data.neighbour_rows
    );
    println!(
        "wall median {:.3}s  min {:.3}s  max {:.3}s  over {runs} runs; {:.0} input rows/s",
        median.as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        rows_in as f64 / median.as_secs_f64()
    );
    if let Some(peak) = peak_rss_mib() {
        println!("peak RSS of the bench process {peak:.0} MiB (includes the data generation)");
    }
}

/// Peak resident set size from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
