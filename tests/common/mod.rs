//! Helpers shared by the integration tests: run the real binary, write small inputs, read outputs.
#![allow(dead_code)]

pub mod daily;
pub mod moto;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use q2q_prior::pipeline::blend::OUTPUT_COLUMNS;
use q2q_prior::reference::{EngagementRow, FeatureRow, NeighbourRow};

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_q2q-prior"));
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("Q2Q_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The crate's folder. Read at run time (cargo test sets it) rather than baked in at compile
/// time: a build cache shared by two clones must not send one clone's tests to the other's files.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run q2q-prior")
}

/// Copies synth engagement `from` to Parquet `to` with its product ids (B018015095) as integers
/// of SQL type `sql_type`, odd ones negated, so numeric order differs from text order.
pub fn with_integer_product_ids(from: &Path, to: &Path, sql_type: &str) {
    let copy = format!(
        "COPY (SELECT query, CAST(CASE WHEN id % 2 = 1 THEN -id ELSE id END AS {sql_type}) AS \
         product_id, impressions, clicks, adds, purchases FROM (SELECT *, \
         CAST(substr(product_id, 2) AS BIGINT) AS id FROM '{}')) TO '{}'",
        from.display(),
        to.display()
    );
    let out = run(&["sql", "-c", &copy]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `q2q-prior run` on two inputs and an output (paths or URLs), plus extra flags.
pub fn run_job(engagement: &str, neighbours: &str, output: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--engagement",
        engagement,
        "--neighbours",
        neighbours,
        "--output",
        output,
    ];
    args.extend(extra);
    run(&args)
}

/// A synthetic marketplace with a later period in `dir` -> `run` (plus `run_extra`) ->
/// `export <layout>` (plus `export_extra`) into `out`: what the ranker tests train on.
pub fn synth_run_export(
    dir: &Path,
    layout: &str,
    run_extra: &[&str],
    export_extra: &[&str],
    out: &Path,
) {
    let d = dir.to_str().unwrap();
    let check = |result: Output| {
        assert!(result.status.success(), "{}", stderr(&result));
    };
    check(run(&[
        "synth",
        "--queries",
        "1500",
        "--seed",
        "3",
        "--later-period",
        "--out",
        d,
    ]));
    check(run_job(
        &format!("{d}/engagement.parquet"),
        &format!("{d}/neighbours.parquet"),
        &format!("{d}/features.parquet"),
        run_extra,
    ));
    let (features, labels) = (
        format!("{d}/features.parquet"),
        format!("{d}/engagement_later.parquet"),
    );
    let mut args = vec![
        "export",
        layout,
        "--feature-table",
        &features,
        "--labels",
        &labels,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(export_extra);
    check(run(&args));
}

/// `q2q-prior validate` on two inputs, plus extra flags.
pub fn validate_job(engagement: &str, neighbours: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "validate",
        "--engagement",
        engagement,
        "--neighbours",
        neighbours,
    ];
    args.extend(extra);
    run(&args)
}

/// Parses a small engagement CSV (no quoting) with the columns in the input's order.
pub fn parse_engagement(text: &str) -> Vec<EngagementRow> {
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            EngagementRow {
                query: f[0].into(),
                product_id: f[1].into(),
                impressions: f[2].parse().unwrap(),
                clicks: f[3].parse().unwrap(),
                adds: f[4].parse().unwrap(),
                purchases: f[5].parse().unwrap(),
            }
        })
        .collect()
}

/// Parses a small neighbours CSV (no quoting).
pub fn parse_neighbours(text: &str) -> Vec<NeighbourRow> {
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            NeighbourRow {
                query: f[0].into(),
                neighbour: f[1].into(),
                score: f[2].parse().unwrap(),
            }
        })
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` to `dir/name`, creating `dir` if needed.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Reads a feature table (Parquet or CSV, by extension) sorted by (query, product_id).
/// The SHA-256 of `bytes` in lowercase hex (as manifests record files).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn read_features(path: &Path) -> Vec<FeatureRow> {
    read_features_by(path, None).remove("").unwrap_or_default()
}

/// Reads a feature table grouped by the value of a partition column ("" without one); within a
/// group rows are sorted by (query, product_id).
pub fn read_features_by(
    path: &Path,
    partition: Option<&str>,
) -> std::collections::BTreeMap<String, Vec<FeatureRow>> {
    let mut groups = std::collections::BTreeMap::<String, Vec<FeatureRow>>::new();
    for batch in read_batches(path) {
        let keys = match partition {
            Some(name) => strings(&batch, name),
            None => vec![String::new(); batch.num_rows()],
        };
        for (key, row) in keys.into_iter().zip(rows_of(&batch)) {
            groups.entry(key).or_default().push(row);
        }
    }
    groups
}

/// Reads a feature table's rows in the order the file holds them.
pub fn read_features_in_file_order(path: &Path) -> Vec<FeatureRow> {
    read_batches_in(path, false)
        .iter()
        .flat_map(rows_of)
        .collect()
}

fn read_batches(path: &Path) -> Vec<RecordBatch> {
    read_batches_in(path, true)
}

fn read_batches_in(path: &Path, sorted: bool) -> Vec<RecordBatch> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = SessionContext::new();
        let p = path.to_str().unwrap();
        let df = if p.ends_with(".csv") {
            ctx.read_csv(p, CsvReadOptions::new()).await.unwrap()
        } else {
            ctx.read_parquet(p, ParquetReadOptions::default())
                .await
                .unwrap()
        };
        let df = if sorted {
            df.sort_by(vec![
                datafusion::prelude::col("query"),
                datafusion::prelude::col("product_id"),
            ])
            .unwrap()
        } else {
            df
        };
        df.collect().await.unwrap()
    })
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let column = cast(batch.column_by_name(name).unwrap(), &DataType::Utf8).unwrap();
    let column = column.as_string::<i32>();
    (0..column.len())
        .map(|i| column.value(i).to_string())
        .collect()
}

fn floats(batch: &RecordBatch, name: &str) -> Vec<f64> {
    let column = cast(batch.column_by_name(name).unwrap(), &DataType::Float64).unwrap();
    column.as_primitive::<Float64Type>().values().to_vec()
}

fn ints(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let column = cast(batch.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
    column.as_primitive::<Int64Type>().values().to_vec()
}

fn rows_of(batch: &RecordBatch) -> Vec<FeatureRow> {
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names[..OUTPUT_COLUMNS.len()],
        OUTPUT_COLUMNS,
        "output schema"
    );
    let (q, p) = (strings(batch, "query"), strings(batch, "product_id"));
    let (h, prior, alpha, f) = (
        floats(batch, "h"),
        floats(batch, "prior"),
        floats(batch, "alpha"),
        floats(batch, "f"),
    );
    let (i, n, c) = (
        ints(batch, "impressions"),
        ints(batch, "n_neighbours"),
        ints(batch, "n_contributing"),
    );
    (0..batch.num_rows())
        .map(|r| FeatureRow {
            query: q[r].clone(),
            product_id: p[r].clone(),
            h: h[r],
            prior: prior[r],
            alpha: alpha[r],
            f: f[r],
            impressions: i[r],
            n_neighbours: n[r],
            n_contributing: c[r],
        })
        .collect()
}

/// Asserts a folder output holds its parts and `_SUCCESS` only: nothing staged is left.
pub fn assert_only_parts(folder: &Path) {
    let names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == "_SUCCESS" || n.starts_with("part-")),
        "{names:?}"
    );
}

/// Asserts two feature tables are equal: keys and counts exactly, floats to 1e-12 relative.
pub fn assert_same_features(actual: &[FeatureRow], expected: &[FeatureRow]) {
    assert_eq!(actual.len(), expected.len(), "row count");
    for (a, e) in actual.iter().zip(expected) {
        let key = format!("({}, {})", e.query, e.product_id);
        assert_eq!(
            (&a.query, &a.product_id),
            (&e.query, &e.product_id),
            "key order at {key}"
        );
        assert_eq!(
            (a.impressions, a.n_neighbours, a.n_contributing),
            (e.impressions, e.n_neighbours, e.n_contributing),
            "counts of {key}"
        );
        for (name, x, y) in [
            ("h", a.h, e.h),
            ("prior", a.prior, e.prior),
            ("alpha", a.alpha, e.alpha),
            ("f", a.f, e.f),
        ] {
            assert!(close(x, y), "{name} of {key}: engine {x} vs expected {y}");
        }
    }
}

pub fn close(x: f64, y: f64) -> bool {
    x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
}

/// A program of the test venv (`.venv`, or `Q2Q_TEST_VENV`), which `.ci/test` fills from
/// `.ci/requirements-test.txt`.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("Q2Q_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv"));
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} not found: run the test suite with .ci/test, which installs the Python packages it needs into .venv",
        path.display()
    );
    path
}

/// Python: `lightgbm_conf(path)`, the keys of an exported `lightgbm.conf` as LightGBM's Python
/// API takes them (numbers as numbers). Prepend it to a snippet that calls it.
pub const LIGHTGBM_CONF_PY: &str = r##"
def lightgbm_conf(path):
    def typed(v):
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return v
    params = {}
    for line in open(path):
        line = line.split("#")[0].strip()
        if line:
            k, v = [x.strip() for x in line.split("=", 1)]
            params[k] = typed(v)
    return params
"##;

/// Ends a Python snippet without its interpreter shutdown, where `deltalake` 1.6.6 has aborted
/// after a read that succeeded ("terminate called without an active exception": after reading
/// from S3 in tests/delta.rs, and once after a local read in tests/cluster.rs; pyarrow's
/// threads at exit, apache/arrow#34314, delta-io/delta-rs#2184). An error before it still fails.
pub const EXIT_PY: &str = "\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n";

/// Runs a Python snippet in the test venv with `args` as sys.argv[1:]; returns its stdout and
/// fails the test (with stderr) if it fails.
pub fn python(code: &str, args: &[&str]) -> String {
    let out = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
