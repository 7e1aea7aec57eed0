//! `evaluate features`: metrics checked per query against scikit-learn's `ndcg_score` (installed
//! into the test venv) and plain definitions, the bootstrap reproducible by seed, the chart a valid
//! SVG, and the claim the prior exists for: on synthetic data F beats H on tail queries.

mod common;

use std::path::Path;

use common::*;

/// A feature table and outcomes with ties, zero-relevance queries, unlabelled candidates and a
/// relevant outcome that is not a candidate; deterministic.
fn fixture(dir: &Path) -> (String, String) {
    let mut features = String::from("query,product_id,h,prior,f,impressions\n");
    let mut outcomes = String::from("query,product_id,label\n");
    let mut x: u64 = 12345;
    let mut next = |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    for q in 0..40 {
        let n = 2 + next(12);
        let traffic = [5, 50, 5000][q % 3];
        for p in 0..n {
            // one decimal: plenty of ties
            let h = next(4) as f64 / 10.0;
            let f = next(10) as f64 / 10.0;
            features.push_str(&format!(
                "q{q},p{p},{h},0.1,{f},{}\n",
                traffic - p as i64 % 3
            ));
            let label = next(5).saturating_sub(1);
            if label > 0 || next(2) == 0 {
                outcomes.push_str(&format!("q{q},p{p},{label}\n"));
            }
        }
        if q % 7 == 0 {
            outcomes.push_str(&format!("q{q},not-a-candidate,2\n"));
        }
    }
    // outcomes of a query the table does not have
    outcomes.push_str("elsewhere,p1,3\n");
    let f = write(dir, "features.csv", &features);
    let o = write(dir, "outcomes.csv", &outcomes);
    (
        f.to_str().unwrap().to_string(),
        o.to_str().unwrap().to_string(),
    )
}

const CHECK: &str = r##"
import csv, json, sys
import numpy as np
from sklearn.metrics import ndcg_score

features, outcomes, per_query, k, gain = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
labels = {(r["query"], r["product_id"]): int(r["label"]) for r in csv.DictReader(open(outcomes))}
cands = {}
for r in csv.DictReader(open(features)):
    cands.setdefault(r["query"], []).append(r)
ours = {(r["query"], r["score"]): r for r in csv.DictReader(open(per_query))}
checked = {"ndcg": 0, "plain": 0}
worst = 0.0
for q, rows in cands.items():
    y = np.array([labels.get((q, r["product_id"]), 0) for r in rows], dtype=float)
    outside = [l for (qq, p), l in labels.items() if qq == q and l > 0 and p not in {r["product_id"] for r in rows}]
    if y.max() <= 0 and not outside:
        assert all((q, s) not in ours for s in ("h", "f")), q
        continue
    for s in ("h", "f"):
        score = np.array([float(r[s]) for r in rows])
        mine = ours[(q, s)]
        if not outside and len(rows) > 1:
            g = (2 ** y - 1) if gain == "exponential" else y
            ref = ndcg_score([g], [score], k=k)  # ties averaged (ignore_ties=False)
            worst = max(worst, abs(ref - float(mine[f"ndcg_at_{k}"])))
            checked["ndcg"] += 1
        if len(set(score)) == len(score):
            # no ties: the plain definitions
            order = np.argsort(-score)
            rel = y[order] > 0
            total = rel.sum() + len(outside)
            recall = rel[:k].sum() / total
            first = np.flatnonzero(rel)
            mrr = 1.0 / (first[0] + 1) if len(first) else 0.0
            worst = max(worst, abs(recall - float(mine[f"recall_at_{k}"])), abs(mrr - float(mine["mrr"])))
            checked["plain"] += 1
print(json.dumps({"worst": worst, **checked}))
"##;

#[test]
fn metrics_match_scikit_learn_and_plain_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let (features, outcomes) = fixture(dir.path());
    for (k, gain) in [("3", "exponential"), ("10", "linear"), ("1", "exponential")] {
        let per_query = dir.path().join(format!("pq-{k}-{gain}.csv"));
        let out = run(&[
            "evaluate",
            "features",
            "--feature-table",
            &features,
            "--outcomes",
            &outcomes,
            "--scores",
            "h,f",
            "-k",
            k,
            "--gain",
            gain,
            "--bootstrap",
            "0",
            "--per-query",
            per_query.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let result: serde_json::Value = serde_json::from_str(&python(
            CHECK,
            &[&features, &outcomes, per_query.to_str().unwrap(), k, gain],
        ))
        .unwrap();
        eprintln!("k={k} {gain}: {result}");
        assert!(result["ndcg"].as_u64().unwrap() >= 40, "{result}");
        assert!(result["plain"].as_u64().unwrap() >= 5, "{result}");
        assert!(
            result["worst"].as_f64().unwrap() < 1e-9,
            "k={k} {gain}: {result}"
        );
    }
}

#[test]
fn report_counts_bootstrap_seed_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let (features, outcomes) = fixture(dir.path());
    let chart = dir.path().join("charts/chart.svg");
    let evaluate = |seed: &str, extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "features",
            "--feature-table",
            features.as_str(),
            "--outcomes",
            outcomes.as_str(),
            "--json",
            "--seed",
            seed,
            "--segments",
            "20,1000",
        ];
        args.extend(extra);
        let out = run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let a = evaluate("7", &["--chart", chart.to_str().unwrap()]);
    assert_eq!(a, evaluate("7", &[]), "a fixed seed gives the same report");
    let b = evaluate("8", &[]);
    let interval = |v: &serde_json::Value| v["segments"][3]["scores"][2]["ndcg"].clone();
    assert_ne!(interval(&a), interval(&b), "another seed, other intervals");
    assert_eq!(
        interval(&a)["mean"],
        interval(&b)["mean"],
        "the means do not depend on the seed"
    );
    // every query is in exactly one segment; the counts add up
    let queries: Vec<u64> = (0..4)
        .map(|s| a["segments"][s]["queries"].as_u64().unwrap())
        .collect();
    assert_eq!(queries[0] + queries[1] + queries[2], queries[3]);
    assert_eq!(a["evaluated_queries"].as_u64(), Some(queries[3]));
    assert_eq!(
        a["evaluated_queries"].as_u64().unwrap()
            + a["queries_without_relevant_outcome"].as_u64().unwrap(),
        40
    );
    assert_eq!(a["outcome_queries_without_candidates"], 1);
    for s in 0..4 {
        for score in 0..3 {
            let i = &a["segments"][s]["scores"][score]["ndcg"];
            let (low, mean, high) = (
                i["low"].as_f64().unwrap(),
                i["mean"].as_f64().unwrap(),
                i["high"].as_f64().unwrap(),
            );
            assert!(low <= mean && mean <= high, "{i}");
        }
        // the default comparison is f - h, with wins + ties + losses = queries
        let paired = &a["segments"][s]["paired"][0];
        let counted: u64 = ["wins", "ties", "losses"]
            .iter()
            .map(|k| paired[k].as_u64().unwrap())
            .sum();
        assert_eq!(counted, queries[s]);
    }

    // the chart: a valid SVG with one bar per segment, score and metric
    let svg = python(
        "import sys, xml.etree.ElementTree as ET\n\
         root = ET.parse(sys.argv[1]).getroot()\n\
         ns = '{http://www.w3.org/2000/svg}'\n\
         bars = [r for r in root.iter(ns + 'rect') if r.find(ns + 'title') is not None]\n\
         print(root.tag, len(bars))",
        &[chart.to_str().unwrap()],
    );
    assert_eq!(svg.trim(), "{http://www.w3.org/2000/svg}svg 36");
}

#[test]
fn on_synthetic_data_f_beats_h_on_tail_queries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let ok = |out: std::process::Output| assert!(out.status.success(), "{}", stderr(&out));
    ok(run(&[
        "synth",
        "--queries",
        "3000",
        "--seed",
        "11",
        "--later-period",
        "--out",
        d,
    ]));
    ok(run(&[
        "run",
        "--engagement",
        &format!("{d}/engagement.parquet"),
        "--neighbours",
        &format!("{d}/neighbours.parquet"),
        "-o",
        &format!("{d}/features.parquet"),
    ]));
    let out = run(&[
        "evaluate",
        "features",
        "--feature-table",
        &format!("{d}/features.parquet"),
        "--outcomes",
        &format!("{d}/engagement_later.parquet"),
        "--json",
        "--bootstrap",
        "300",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tail = &report["segments"][2];
    assert_eq!(tail["segment"], "tail");
    assert!(tail["queries"].as_u64().unwrap() > 1000);
    let ndcg = &tail["paired"][0];
    assert_eq!(ndcg["metric"], "ndcg");
    assert!(
        ndcg["difference"]["low"].as_f64().unwrap() > 0.0,
        "F - H on tail NDCG@10 is positive with 95% confidence: {ndcg}"
    );
    assert!(ndcg["p_value"].as_f64().unwrap() < 0.001, "{ndcg}");
}

#[test]
fn bad_options_and_outcomes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (features, outcomes) = fixture(dir.path());
    for (extra, message) in [
        (vec!["--scores", "h,nope"], "no numeric column 'nope'"),
        (
            vec!["--compare", "f,prior", "--scores", "f,h"],
            "'prior' is not one of --scores",
        ),
        (vec!["--segments", "1000,20"], "--segments '1000,20'"),
        (vec!["--chart", "c.png"], "name the file *.svg"),
        (vec!["--scores", "h,h"], "'h' is listed twice"),
        (vec!["--compare", "f,f"], "two different scores"),
        (vec!["--per-query", "x.txt"], "--per-query x.txt"),
    ] {
        let mut args = vec![
            "evaluate",
            "features",
            "--feature-table",
            features.as_str(),
            "--outcomes",
            outcomes.as_str(),
        ];
        args.extend(extra);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
    }
    let big = write(
        dir.path(),
        "big.csv",
        "query,product_id,label\nq1,p1,2000\n",
    );
    let out = run(&[
        "evaluate",
        "features",
        "--feature-table",
        &features,
        "--outcomes",
        big.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("label_above_31"), "{}", stderr(&out));
    let bad = write(dir.path(), "bad.csv", "query,product_id,label\nq1,p1,x\n");
    let out = run(&[
        "evaluate",
        "features",
        "--feature-table",
        &features,
        "--outcomes",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("'outcomes'"), "{}", stderr(&out));
}
