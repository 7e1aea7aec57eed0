//! Bench: query normalization throughput on synth data.
//!
//! `cargo bench --bench normalize -- [--queries N] [--runs R]`
//!
//! Generates a marketplace once, then times (a) `normalize_query` as a plain function over every
//! engagement row's query and (b) the SQL path, `SELECT count(DISTINCT normalize_query(query))`,
//! through DataFusion from Parquet. Prints rows/s and how many distinct keys normalization leaves.

mod common;

use common::arg;
use std::collections::HashSet;
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::ParquetReadOptions;
use q2q_prior::config::InputFormat;
use q2q_prior::normalize::normalize_query;
use q2q_prior::tools::synth::{self, SynthSpec};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let queries = arg("--queries", 200_000);
    let runs = arg("--runs", 5).max(1) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = common::generate_blocking(synth::generate(
        &SynthSpec {
            queries: queries as usize,
            seed: 42,
            format: InputFormat::Parquet,
            later_period: false,
            bestseller_queries: 0,
        },
        dir.path().to_str().expect("a UTF-8 temp dir"),
        &q2q_prior::session::runtime_env(&Default::default()).expect("runtime"),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = q2q_prior::session::new_context(&Default::default()).expect("session");
    let path = data.engagement.clone();

    // every engagement row's query, as a plain function would see them
    let texts: Vec<String> = runtime
        .block_on(async {
            let batches = ctx
                .read_parquet(path.as_str(), ParquetReadOptions::default())
                .await?
                .select_columns(&["query"])?
                .collect()
                .await?;
            let mut texts = Vec::new();
            for b in batches {
                let column = cast(b.column(0), &DataType::Utf8)?;
                let column = column.as_string::<i32>();
                texts.extend((0..column.len()).map(|i| column.value(i).to_string()));
            }
            Ok::<_, datafusion::error::DataFusionError>(texts)
        })
        .expect("read queries");
    let distinct: HashSet<&str> = texts.iter().map(String::as_str).collect();
    runtime
        .block_on(ctx.register_parquet("engagement", path.as_str(), ParquetReadOptions::default()))
        .expect("register engagement");

    let mut function_rates = Vec::new();
    let mut keys = HashSet::new();
    for _ in 0..runs {
        let start = Instant::now();
        keys = texts
            .iter()
            .map(|t| normalize_query(t, None))
            .collect::<HashSet<_>>();
        function_rates.push(texts.len() as f64 / start.elapsed().as_secs_f64());
    }

    let mut sql_rates = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let n = runtime
            .block_on(async {
                ctx.sql("SELECT count(DISTINCT normalize_query(query)) FROM engagement")
                    .await?
                    .collect()
                    .await
            })
            .expect("sql");
        sql_rates.push(texts.len() as f64 / start.elapsed().as_secs_f64());
        assert_eq!(
            n[0].column(0).as_primitive::<Int64Type>().value(0) as usize,
            keys.len()
        );
    }

    println!(
        "normalize queries={queries} rows={} distinct_queries={} distinct_keys={} ({:.1}% fewer)",
        texts.len(),
        distinct.len(),
        keys.len(),
        100.0 * (1.0 - keys.len() as f64 / distinct.len() as f64)
    );
    println!(
        "plain function: median {:.0} rows/s over {runs} runs (1 core)",
        median(function_rates)
    );
    println!(
        "SQL, Parquet -> count(DISTINCT normalize_query(query)): median {:.0} rows/s over {runs} runs",
        median(sql_rates)
    );
}
