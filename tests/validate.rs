//! `q2q-prior validate`: one line per check, counts computed independently here from the same
//! files, every failure reported at once, JSON for machines, exit code 2 only on FAIL.
//! (That `validate` fails exactly where `run` does is asserted by every bad-input case in
//! run_cli.rs.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;

/// The report's lines as (status, input, check, rest).
fn lines(report: &str) -> Vec<(String, String, String, String)> {
    report
        .lines()
        .filter(|l| !l.starts_with("validate:"))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let status = parts.next().unwrap().to_string();
            let input = parts.next().unwrap().to_string();
            let check = parts.next().unwrap().to_string();
            (status, input, check, l.to_string())
        })
        .collect()
}

fn line<'a>(
    all: &'a [(String, String, String, String)],
    input: &str,
    check: &str,
) -> &'a (String, String, String, String) {
    all.iter()
        .find(|l| l.1 == input && l.2 == check)
        .unwrap_or_else(|| panic!("no line for {input} {check}"))
}

fn validate(dir: &Path, extra: &[&str]) -> std::process::Output {
    let e = dir.join("engagement.csv");
    let n = dir.join("neighbours.csv");
    let mut args = vec![
        "validate",
        "--engagement",
        e.to_str().unwrap(),
        "--neighbours",
        n.to_str().unwrap(),
    ];
    args.extend(extra);
    run(&args)
}

/// What the report's diagnostics should say, computed from the parsed CSVs.
struct Expected {
    rows: usize,
    self_pairs: usize,
    duplicate_keys: usize,
    distinct_keys: usize,
    without_history: usize,
    queries: usize,
    below_k: usize,
    without_any: usize,
}

fn expected(engagement: &str, neighbours: &str, k: usize, min_score: f64) -> Expected {
    let e = parse_engagement(engagement);
    let n = parse_neighbours(neighbours);
    let with_history: BTreeSet<&str> = e.iter().map(|r| r.query.as_str()).collect();
    let mut keys: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut usable: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &n {
        *keys.entry((&r.query, &r.neighbour)).or_default() += 1;
        let set = usable.entry(&r.query).or_default();
        if r.query != r.neighbour
            && r.score >= min_score
            && with_history.contains(r.neighbour.as_str())
        {
            set.insert(&r.neighbour);
        }
    }
    Expected {
        rows: n.len(),
        self_pairs: n.iter().filter(|r| r.query == r.neighbour).count(),
        duplicate_keys: keys.values().filter(|&&c| c > 1).count(),
        distinct_keys: keys.len(),
        without_history: n
            .iter()
            .filter(|r| !with_history.contains(r.neighbour.as_str()))
            .count(),
        queries: usable.len(),
        below_k: usable.values().filter(|s| s.len() < k).count(),
        without_any: usable.values().filter(|s| s.is_empty()).count(),
    }
}

#[test]
fn demo_fixture_report_matches_independent_counts() {
    let demo = root().join("fixtures/demo");
    let out = run(&[
        "validate",
        "--config",
        demo.join("job.toml").to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{report}{}", stderr(&out));
    let all = lines(&report);
    let e_text = std::fs::read_to_string(demo.join("engagement.csv")).unwrap();
    let n_text = std::fs::read_to_string(demo.join("neighbours.csv")).unwrap();
    let want = expected(&e_text, &n_text, 3, 0.0);

    // every check, in a stable order
    let checks: Vec<String> = all.iter().map(|l| format!("{} {}", l.1, l.2)).collect();
    assert_eq!(
        checks,
        [
            "engagement schema",
            "neighbours schema",
            "inputs compatible",
            "engagement rows",
            "engagement query_null_or_empty",
            "engagement product_id_null_or_empty",
            "engagement query_blank",
            "engagement product_id_blank",
            "engagement impressions_null_or_negative",
            "engagement clicks_null_or_negative",
            "engagement adds_null_or_negative",
            "engagement purchases_null_or_negative",
            "engagement clicks_above_impressions",
            "engagement purchases_above_clicks",
            "engagement duplicate_keys",
            "neighbours rows",
            "neighbours query_null_or_empty",
            "neighbours neighbour_null_or_empty",
            "neighbours score_null_nan_inf_or_negative",
            "neighbours self_pairs",
            "neighbours query_blank",
            "neighbours neighbour_blank",
            "neighbours duplicate_keys",
            "neighbours neighbours_without_history",
            "neighbours queries_below_top_k",
            "neighbours score_distribution",
        ]
    );
    let e_rows = e_text.lines().count() - 1;
    assert!(
        line(&all, "engagement", "rows")
            .3
            .contains(&format!("{e_rows} rows"))
    );
    let self_pairs = line(&all, "neighbours", "self_pairs");
    assert_eq!(self_pairs.0, "WARN");
    assert!(
        self_pairs
            .3
            .contains(&format!("{} of {} ", want.self_pairs, want.rows)),
        "{}",
        self_pairs.3
    );
    let dups = line(&all, "neighbours", "duplicate_keys");
    assert_eq!(dups.0, "WARN");
    assert!(
        dups.3.contains(&format!(
            "{} of {} ",
            want.duplicate_keys, want.distinct_keys
        )),
        "{}",
        dups.3
    );
    let missing = line(&all, "neighbours", "neighbours_without_history");
    assert!(
        missing
            .3
            .contains(&format!("{} of {}", want.without_history, want.rows)),
        "{}",
        missing.3
    );
    let below = line(&all, "neighbours", "queries_below_top_k");
    assert!(
        below
            .3
            .contains(&format!("{} of {}", want.below_k, want.queries))
            && below.3.contains(&format!("{} have none", want.without_any)),
        "{}",
        below.3
    );
    let scores: Vec<f64> = parse_neighbours(&n_text).iter().map(|r| r.score).collect();
    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
    let min = scores.iter().cloned().fold(f64::MAX, f64::min);
    let distribution = &line(&all, "neighbours", "score_distribution").3;
    assert!(
        distribution.contains(&format!("min {min} /"))
            && distribution.contains(&format!("max {max} /")),
        "{distribution}"
    );
    assert!(report.ends_with(&format!(
        "validate: {} PASS, 2 WARN, 0 FAIL\n",
        all.len() - 2
    )));
}

#[test]
fn thresholds_and_k_change_the_diagnostics() {
    let tiny = root().join("fixtures/tiny");
    let e_text = std::fs::read_to_string(tiny.join("engagement.csv")).unwrap();
    let n_text = std::fs::read_to_string(tiny.join("neighbours.csv")).unwrap();
    let config = tiny.join("job.toml");
    for (k, warn_share) in [(3usize, "0.1"), (1, "0.1"), (3, "0.9")] {
        let out = run(&[
            "validate",
            "--config",
            config.to_str().unwrap(),
            "--top-k",
            &k.to_string(),
            "--warn-share",
            warn_share,
        ]);
        assert_eq!(out.status.code(), Some(0));
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let all = lines(&report);
        let want = expected(&e_text, &n_text, k, 0.1);
        let share: f64 = warn_share.parse().unwrap();
        let below = line(&all, "neighbours", "queries_below_top_k");
        assert!(
            below
                .3
                .contains(&format!("{} of {}", want.below_k, want.queries)),
            "{}",
            below.3
        );
        let status = if want.below_k as f64 / want.queries as f64 > share {
            "WARN"
        } else {
            "PASS"
        };
        assert_eq!(below.0, status, "k={k} share={warn_share}: {}", below.3);
        let missing = line(&all, "neighbours", "neighbours_without_history");
        let status = if want.without_history as f64 / want.rows as f64 > share {
            "WARN"
        } else {
            "PASS"
        };
        assert_eq!(missing.0, status, "{}", missing.3);
    }
    let out = run(&[
        "validate",
        "--config",
        config.to_str().unwrap(),
        "--warn-share",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn every_failure_is_reported_at_once_and_warnings_do_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "engagement.csv",
        "query,product_id,impressions,clicks,adds,purchases\n\
         a,P1,10,20,0,0\n\
         a,P2,10,1,0,3\n\
         b,P1,-4,0,0,0\n\
         b,P1,5,0,0,0\n",
    );
    write(
        dir.path(),
        "neighbours.csv",
        "query,neighbour,score\na,b,NaN\nb,a,0.5\nb,b,1.0\n",
    );
    let out = validate(dir.path(), &[]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert!(
        stderr(&out).contains("4 check(s) failed"),
        "{}",
        stderr(&out)
    );
    let all = lines(&report);
    let status = |input: &str, check: &str| line(&all, input, check).0.clone();
    assert_eq!(status("engagement", "clicks_above_impressions"), "FAIL");
    assert_eq!(status("engagement", "impressions_null_or_negative"), "FAIL");
    assert_eq!(status("engagement", "duplicate_keys"), "FAIL");
    assert_eq!(status("engagement", "purchases_above_clicks"), "WARN");
    assert_eq!(
        status("neighbours", "score_null_nan_inf_or_negative"),
        "FAIL"
    );
    assert_eq!(status("neighbours", "self_pairs"), "WARN");
    // the distribution leaves the NaN out (the score check FAILs on it)
    let distribution = &line(&all, "neighbours", "score_distribution").3;
    assert!(
        distribution.contains("min 0.5 / median 0.75 / max 1 / mean 0.75 of 2 finite scores"),
        "{distribution}"
    );
    let clicks = &line(&all, "engagement", "clicks_above_impressions").3;
    // b,P1 counts too: 0 clicks > -4 impressions
    assert!(clicks.contains("2 of 4 (50.00%) rows"), "{clicks}");
    assert!(
        clicks.contains("e.g. query=\"a\", product_id=\"P1\""),
        "{clicks}"
    );
    assert!(
        clicks.contains("expected clicks <= impressions"),
        "{clicks}"
    );

    // summing duplicates turns that FAIL into a WARN; the rest still fail
    let out = validate(dir.path(), &["--on-duplicate", "sum"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        line(&lines(&report), "engagement", "duplicate_keys").0,
        "WARN"
    );

    // warnings alone: exit 0
    write(
        dir.path(),
        "engagement.csv",
        "query,product_id,impressions,clicks,adds,purchases\na,P1,10,1,0,3\nb,P1,5,0,0,0\n",
    );
    write(
        dir.path(),
        "neighbours.csv",
        "query,neighbour,score\na,b,0.5\nb,b,1.0\n",
    );
    let out = validate(dir.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_broken_input_does_not_hide_the_other_ones_report() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "engagement.csv",
        "query,product,impressions,clicks,adds,purchases\na,P1,10,1,0,0\n",
    );
    write(
        dir.path(),
        "neighbours.csv",
        "query,neighbour,score\na,b,0.5\n",
    );
    let out = validate(dir.path(), &[]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2));
    let all = lines(&report);
    let schema = &line(&all, "engagement", "schema").3;
    assert!(schema.starts_with("FAIL"), "{schema}");
    assert!(
        schema.contains("column 'product_id'") && schema.contains("missing column"),
        "{schema}"
    );
    assert_eq!(line(&all, "neighbours", "self_pairs").0, "PASS");
    assert!(
        !report.contains("engagement  rows"),
        "row checks of a broken input are skipped"
    );
    // what needs both inputs says it was skipped; what needs neighbours only still runs
    assert_eq!(
        line(&all, "neighbours", "neighbours_without_history").0,
        "SKIP"
    );
    assert_eq!(line(&all, "neighbours", "queries_below_top_k").0, "SKIP");
    assert_eq!(line(&all, "neighbours", "score_distribution").0, "PASS");
    assert!(report.ends_with(", 1 FAIL, 2 SKIP\n"), "{report}");

    // a missing path
    let out = run(&[
        "validate",
        "--engagement",
        dir.path().join("nope/").to_str().unwrap(),
        "--neighbours",
        dir.path().join("neighbours.csv").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        line(&lines(&report), "engagement", "schema").0 == "FAIL",
        "{report}"
    );
}

#[test]
fn json_report_for_machines() {
    let config = root().join("fixtures/tiny/job.toml");
    let out = run(&[
        "validate",
        "--config",
        config.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(report["status"], "WARN");
    let counted = ["pass", "warn", "fail"]
        .iter()
        .map(|k| report[*k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(counted as usize, checks.len());
    let self_pairs = checks.iter().find(|c| c["check"] == "self_pairs").unwrap();
    assert_eq!(self_pairs["status"], "WARN");
    assert_eq!(self_pairs["input"], "neighbours");
    assert_eq!(self_pairs["count"], 1);
    assert_eq!(self_pairs["total"], 13);
    assert_eq!(self_pairs["column"], "neighbour");
    assert!(
        self_pairs["example"]
            .as_str()
            .unwrap()
            .contains("red shoez")
    );
}

#[test]
fn partitioned_inputs_are_checked_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    for (market, rows) in [
        ("US", "a,P1,10,1,0,0\nb,P1,10,1,0,0\n"),
        ("DE", "a,P1,10,1,0,0\n"),
    ] {
        let folder = dir.path().join(format!("e/market={market}"));
        std::fs::create_dir_all(&folder).unwrap();
        write(
            &folder,
            "part-0.csv",
            &format!("query,product_id,impressions,clicks,adds,purchases\n{rows}"),
        );
    }
    write(
        dir.path(),
        "n.csv",
        "query,neighbour,score\na,b,0.5\nb,a,0.5\n",
    );
    let args = |neighbours: &Path| {
        run(&[
            "validate",
            "--engagement",
            dir.path().join("e").to_str().unwrap(),
            "--neighbours",
            neighbours.to_str().unwrap(),
        ])
    };
    let out = args(&dir.path().join("n.csv"));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{report}");
    let all = lines(&report);
    assert!(
        line(&all, "inputs", "compatible")
            .3
            .contains("[market] / []")
    );
    // the neighbour lists serve both markets: in DE, `b` has no engagement
    let missing = &line(&all, "neighbours", "neighbours_without_history").3;
    assert!(missing.contains("1 of 4 (25.00%)"), "{missing}");
    assert!(
        missing.contains("counted per engagement partition (2 partitions)"),
        "{missing}"
    );

    // neighbours split by a column engagement lacks
    let folder = dir.path().join("n/day=1");
    std::fs::create_dir_all(&folder).unwrap();
    write(&folder, "part-0.csv", "query,neighbour,score\na,b,0.5\n");
    let out = args(&dir.path().join("n"));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{report}");
    let all = lines(&report);
    let compatible = &line(&all, "inputs", "compatible").3;
    assert!(
        compatible.starts_with("FAIL") && compatible.contains("'day'"),
        "{compatible}"
    );
}
