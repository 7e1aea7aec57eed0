//! The merge plan (default) against the SQL plan (the definition in `sql/`): on synthetic data
//! with the parameters and input layouts users have, both write the same rows in the same order,
//! floats to 1e-12 relative. The property test (tests/property.rs) runs both plans against the
//! reference implementation on small random inputs.

mod common;

use std::path::Path;

use common::{assert_same_features, bin, read_features, read_features_by, run, stderr};
use q2q_prior::reference::FeatureRow;

/// A synthetic marketplace of `queries` queries (Parquet, or CSV with `csv`) in `dir`.
fn synth(dir: &Path, queries: &str, seed: &str, csv: bool) {
    let mut args = vec![
        "synth",
        "--queries",
        queries,
        "--seed",
        seed,
        "--out",
        dir.to_str().unwrap(),
    ];
    if csv {
        args.extend(["--format", "csv"]);
    }
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs the job with each plan; returns (merge, sql) outputs in file order and sorted.
fn both_plans(
    engagement: &str,
    neighbours: &str,
    dir: &Path,
    extra: &[&str],
) -> (Vec<FeatureRow>, Vec<FeatureRow>) {
    let mut outputs = Vec::new();
    let mut history_lines = Vec::new();
    for plan in ["merge", "sql"] {
        let out = dir.join(format!("features.{plan}.parquet"));
        let mut args = vec![
            "run",
            "--engagement",
            engagement,
            "--neighbours",
            neighbours,
            "--output",
            out.to_str().unwrap(),
            "--plan",
            plan,
        ];
        args.extend(extra);
        let result = run(&args);
        assert!(result.status.success(), "{plan}: {}", stderr(&result));
        let summary = stderr(&result);
        assert_eq!(
            summary.contains("merge plan (one operator"),
            plan == "merge",
            "{summary}"
        );
        // the merge plan counts the history's rows in its operator, the SQL plan by aggregating
        history_lines.push(
            summary
                .lines()
                .find(|l| l.trim_start().starts_with("history "))
                .unwrap_or_else(|| panic!("no history line: {summary}"))
                .to_string(),
        );
        outputs.push(out);
    }
    assert_eq!(history_lines[0], history_lines[1], "the history's rows");
    let merge = common::read_features_in_file_order(&outputs[0]);
    let sql = common::read_features_in_file_order(&outputs[1]);
    (merge, sql)
}

fn assert_plans_agree(engagement: &str, neighbours: &str, extra: &[&str]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let (merge, sql) = both_plans(engagement, neighbours, dir.path(), extra);
    assert!(!merge.is_empty());
    // same rows, same order (both sorted by query, product_id), floats to 1e-12 relative
    assert_same_features(&merge, &sql);
    merge.len()
}

#[test]
fn merge_plan_equals_sql_plan_on_synthetic_data() {
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), "3000", "11", false);
    let e = data.path().join("engagement.parquet");
    let n = data.path().join("neighbours.parquet");
    let (e, n) = (e.to_str().unwrap(), n.to_str().unwrap());

    let cases: [&[&str]; 7] = [
        &[],
        &["--top-k", "10"],
        // the bayes blend, with each prior weighting
        &["--blend", "bayes", "--top-k", "5"],
        &[
            "--blend",
            "bayes",
            "--pseudo-impressions",
            "7.5",
            "--prior-weighting",
            "score",
            "--beta",
            "0.8",
        ],
        // score weighting, a score threshold that drops rows, a low impression cap, half beta
        &[
            "--top-k",
            "5",
            "--prior-weighting",
            "score",
            "--min-score",
            "0.55",
            "--gamma",
            "20",
            "--beta",
            "0.5",
        ],
        // both inputs normalized: collapsed engagement keys summed, new self-pairs dropped
        &[
            "--engagement-normalize",
            "true",
            "--neighbours-normalize",
            "true",
            "--top-k",
            "4",
        ],
        // more partitions than cores do not change the rows
        &["--target-partitions", "7", "--top-k", "2"],
    ];
    for extra in cases {
        let rows = assert_plans_agree(e, n, extra);
        assert!(rows > 50_000, "{extra:?}: only {rows} rows");
    }
}

#[test]
fn merge_plan_equals_sql_plan_on_csv_and_partitioned_inputs() {
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), "800", "5", true);
    // the same engagement in two partition folders, read as two independent slices
    let e = data.path().join("engagement");
    for market in ["DE", "US"] {
        let folder = e.join(format!("market={market}"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(
            data.path().join("engagement.csv"),
            folder.join("part-0.csv"),
        )
        .unwrap();
    }
    let n = data.path().join("neighbours.csv");
    let dir = tempfile::tempdir().unwrap();
    let engagement = format!("{}/", e.display());
    let (merge, sql) = both_plans(
        &engagement,
        n.to_str().unwrap(),
        dir.path(),
        &["--top-k", "6"],
    );
    assert_same_features(&merge, &sql);
    let by_market = read_features_by(&dir.path().join("features.merge.parquet"), Some("market"));
    assert_eq!(by_market.keys().collect::<Vec<_>>(), ["DE", "US"]);
    assert_same_features(&by_market["DE"], &by_market["US"]);
}

#[test]
fn merge_plan_equals_sql_plan_with_integer_product_ids() {
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), "3000", "13", false);
    // synth's ids (B018015095) as INT, odd ones negated: numeric order differs from text order
    let e = data.path().join("engagement.int.parquet");
    common::with_integer_product_ids(&data.path().join("engagement.parquet"), &e, "INT");
    let n = data.path().join("neighbours.parquet");
    for extra in [
        &[][..],
        &["--prior-weighting", "score", "--target-partitions", "3"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (merge, sql) = both_plans(e.to_str().unwrap(), n.to_str().unwrap(), dir.path(), extra);
        assert!(merge.len() > 50_000, "{extra:?}: only {} rows", merge.len());
        assert_same_features(&merge, &sql);
        let negative = merge
            .iter()
            .filter(|r| r.product_id.starts_with('-'))
            .count();
        assert!(negative > 0 && negative < merge.len());
    }
}

#[test]
fn merge_plan_equals_sql_plan_on_the_fixtures() {
    for fixture in ["tiny", "demo"] {
        let dir = tempfile::tempdir().unwrap();
        let root = common::root().join("fixtures").join(fixture);
        let e = root.join("engagement.csv");
        let n = root.join("neighbours.csv");
        let extra: &[&str] = if fixture == "tiny" {
            &["--min-score", "0.1"]
        } else {
            &[]
        };
        let (merge, sql) = both_plans(e.to_str().unwrap(), n.to_str().unwrap(), dir.path(), extra);
        assert_same_features(&merge, &sql);
        if fixture == "tiny" {
            let expected = read_features(&root.join("expected.csv"));
            assert_same_features(&merge, &expected);
        }
    }
}

#[test]
fn explain_shows_the_operators_of_each_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::root().join("fixtures/demo");
    let out = dir.path().join("features.parquet");
    let explain = |plan: &str| {
        let result = bin()
            .args(["run", "--config"])
            .arg(root.join("job.toml"))
            .args([
                "--output",
                out.to_str().unwrap(),
                "--explain",
                "--plan",
                plan,
            ])
            .output()
            .unwrap();
        assert!(result.status.success(), "{}", stderr(&result));
        String::from_utf8(result.stdout).unwrap()
    };
    let merge = explain("merge");
    // the operator's partitions are sorted ranges, read in order
    assert!(merge.starts_with("ConcatRangesExec:"), "{merge}");
    assert!(merge.contains("\n  PriorMergeExec:"), "{merge}");
    assert!(merge.contains("top_k=3"), "{merge}");
    // the operator's output is already ordered: no sort or merge of rows, no join, no aggregation
    for absent in [
        "SortExec",
        "SortPreservingMergeExec",
        "Join",
        "AggregateExec",
    ] {
        assert!(!merge.contains(absent), "{absent} in {merge}");
    }
    let sql = explain("sql");
    for present in ["SortExec", "SortMergeJoin", "AggregateExec"] {
        assert!(sql.contains(present), "{present} missing from {sql}");
    }
    assert!(!sql.contains("PriorMergeExec"));
    assert!(!out.exists(), "--explain wrote the output");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn merge_plan_under_a_memory_limit_below_its_history_spills_and_writes_the_same_file() {
    let data = tempfile::tempdir().unwrap();
    // ~1.8M engagement rows: the index takes about 160 MB in memory (72 of history, 24 of
    // neighbour candidates, the rest strings and neighbour sets, which must fit)
    synth(data.path(), "100000", "3", false);
    let (engagement, neighbours) = (
        data.path().join("engagement.parquet"),
        data.path().join("neighbours.parquet"),
    );
    let run = |name: &str, extra: &[&str]| {
        let out = data.path().join(name);
        let result = common::run_job(
            engagement.to_str().unwrap(),
            neighbours.to_str().unwrap(),
            out.to_str().unwrap(),
            extra,
        );
        assert!(result.status.success(), "{}", stderr(&result));
        (std::fs::read(out).unwrap(), stderr(&result))
    };
    let (free, free_log) = run("free.parquet", &[]);
    assert!(free_log.contains("spilled: nothing"), "{free_log}");
    let (limited, log) = run("limited.parquet", &["--memory-limit", "96MiB"]);
    assert!(limited == free, "the run under 96MiB wrote another file");
    let line = log
        .lines()
        .find(|l| l.contains("spilled:"))
        .unwrap_or_else(|| panic!("no spill line in {log}"));
    assert!(!line.contains("nothing"), "{line}");
    assert!(line.contains("spill files"), "{line}");
    assert!(
        line.contains("the history again to sort it by query"),
        "{line}"
    );
    assert!(line.contains("history read back in"), "{line}");
}
