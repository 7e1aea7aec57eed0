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

// ---------------------------------------------------------------------------------------------
// evaluate neighbours

/// Two neighbour lists and labels with ties, self-pairs, duplicate rows, unlisted positives, a
/// query missing from one list and listed queries without a positive label; deterministic.
fn neighbour_fixture(dir: &Path) -> (String, String, String, String) {
    let mut a = String::from("query,neighbour,score\n");
    let mut b = String::from("query,candidate,score,rank\n");
    let mut labels = String::from("query,candidate,label,is_negative\n");
    let mut engagement = String::from("query,product_id,impressions\n");
    let mut x: u64 = 777;
    let mut next = |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let grades = [0.0, 0.1, 0.25, 0.5, 1.0];
    for q in 0..60 {
        engagement.push_str(&format!("q{q},p1,{}\n", [5, 50, 5000][q % 3]));
        for c in 0..16 {
            if next(3) == 0 {
                let label = grades[next(5) as usize];
                labels.push_str(&format!("q{q},c{c},{label},{}\n", label == 0.0));
            }
        }
        // a self-pair with the top label and the top score: must be ignored on both sides
        labels.push_str(&format!("q{q},q{q},1.0,false\n"));
        a.push_str(&format!("q{q},q{q},0.99\n"));
        // list a: one-decimal scores (ties), a duplicate row keeping the larger score
        for c in 0..16 {
            if next(2) == 0 {
                a.push_str(&format!("q{q},c{c},0.{}\n", next(5)));
            }
        }
        a.push_str(&format!("q{q},c3,0.05\n"));
        // list b: distinct scores, absent for every 7th query
        if q % 7 != 3 {
            let mut rank = 1;
            for c in (0..16).rev() {
                if next(3) > 0 {
                    b.push_str(&format!("q{q},c{c},{}.{c:02},{rank}\n", 20 - c));
                    rank += 1;
                }
            }
        }
    }
    // labels of a query no list has
    labels.push_str("elsewhere,c1,0.5,false\n");
    // a listed query whose labels are all 0: left out, and counted
    labels.push_str("unlabelled,c1,0,true\nunlabelled,c2,0,true\n");
    a.push_str("unlabelled,c1,0.5\nunlabelled,c2,0.4\nunlabelled,c3,0.3\n");
    // a pair labelled twice: the larger label counts
    labels.push_str("q1,c0,0.05,false\nq1,c0,0.75,false\n");
    let paths = [
        write(dir, "a.csv", &a),
        write(dir, "b.csv", &b),
        write(dir, "labels.csv", &labels),
        write(dir, "engagement.csv", &engagement),
    ];
    let [a, b, l, e] = paths.map(|p| p.to_str().unwrap().to_string());
    (a, b, l, e)
}

/// An independent implementation: scikit-learn's `ndcg_score` (ties averaged) and the plain
/// definition of recall on tie-free lists.
const CHECK_NEIGHBOURS: &str = r##"
import csv, json, sys
import numpy as np
from sklearn.metrics import ndcg_score

a_path, b_path, labels_path, per_query, ideal = sys.argv[1:6]
ndcg_k = 3
recall_ks = [2, 5]
labels = {}
for r in csv.DictReader(open(labels_path)):
    if r["query"] != r["candidate"]:
        key = (r["query"], r["candidate"])
        labels[key] = max(labels.get(key, 0.0), float(r["label"]))
lists = {}
for name, path in (("a", a_path), ("b", b_path)):
    best = {}
    for r in csv.DictReader(open(path)):
        c = r.get("neighbour") or r["candidate"]
        if c == r["query"]:
            continue
        key = (r["query"], c)
        best[key] = max(best.get(key, -1e300), float(r["score"]))
    per = {}
    for (q, c), s in best.items():
        per.setdefault(q, []).append((c, s))
    lists[name] = per
listed = set(lists["a"]) | set(lists["b"])
positives = {}
for (q, c), l in labels.items():
    if l > 0:
        positives.setdefault(q, {})[c] = l
ours = {(r["query"], r["list"]): r for r in csv.DictReader(open(per_query))}
checked = {"ndcg": 0, "recall": 0, "queries": 0, "zero": 0}
worst = 0.0
for q in sorted(listed):
    pos = positives.get(q, {})
    if not pos:
        assert (q, "a") not in ours and (q, "b") not in ours, q
        continue
    checked["queries"] += 1
    for name in ("a", "b"):
        mine = ours[(q, name)]
        items = lists[name].get(q, [])
        if not items:
            worst = max(worst, abs(float(mine["ndcg_at_3"])), abs(float(mine["recall_at_2"])))
            checked["zero"] += 1
            continue
        scores = [s for _, s in items]
        gains = [labels.get((q, c), 0.0) for c, _ in items]
        listed_names = {c for c, _ in items}
        missing = [l for c, l in pos.items() if c not in listed_names]
        if ideal == "all":
            # unlisted positives ranked below everything: outside the top 3 when >= 3 are listed
            low = min(scores) - 1.0
            scores_x = scores + [low - i for i in range(len(missing))]
            gains_x = gains + missing
        else:
            scores_x, gains_x = scores, gains
        if len(items) >= ndcg_k and len(scores_x) > 1:
            if max(gains_x) > 0:
                ref = ndcg_score([gains_x], [scores_x], k=ndcg_k)
            else:
                ref = 0.0
            worst = max(worst, abs(ref - float(mine["ndcg_at_3"])))
            checked["ndcg"] += 1
        if len(set(scores)) == len(scores):
            order = np.argsort(-np.array(scores))
            relevant = np.array(gains)[order] > 0
            for k in recall_ks:
                ref = relevant[:k].sum() / len(pos)
                worst = max(worst, abs(ref - float(mine[f"recall_at_{k}"])))
                checked["recall"] += 1
# exactly the evaluated queries, once per list
assert len(ours) == 2 * checked["queries"], (len(ours), checked)
print(json.dumps({"worst": worst, **checked}))
"##;

fn evaluate_neighbours(a: &str, b: &str, labels: &str, extra: &[&str]) -> std::process::Output {
    let a = format!("a={a}");
    let b = format!("b={b}");
    let mut args = vec![
        "evaluate",
        "neighbours",
        "--neighbours",
        &a,
        "--neighbours",
        &b,
        "--labels",
        labels,
        "--recall-at",
        "5,2",
    ];
    args.extend(extra);
    run(&args)
}

#[test]
fn neighbour_metrics_match_scikit_learn_and_plain_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, labels, _) = neighbour_fixture(dir.path());
    for ideal in ["all", "listed"] {
        let per_query = dir.path().join(format!("pq-{ideal}.csv"));
        let out = evaluate_neighbours(
            &a,
            &b,
            &labels,
            &[
                "--ideal",
                ideal,
                "--bootstrap",
                "0",
                "--per-query",
                per_query.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let result: serde_json::Value = serde_json::from_str(&python(
            CHECK_NEIGHBOURS,
            &[&a, &b, &labels, per_query.to_str().unwrap(), ideal],
        ))
        .unwrap();
        eprintln!("ideal={ideal}: {result}");
        assert!(result["queries"].as_u64().unwrap() >= 50, "{result}");
        assert!(result["ndcg"].as_u64().unwrap() >= 80, "{result}");
        assert!(result["recall"].as_u64().unwrap() >= 80, "{result}");
        assert!(result["zero"].as_u64().unwrap() >= 5, "{result}");
        assert!(result["worst"].as_f64().unwrap() < 1e-9, "{result}");
    }
}

#[test]
fn neighbour_report_segments_compares_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, labels, engagement) = neighbour_fixture(dir.path());
    let json = |seed: &str| {
        let out = evaluate_neighbours(
            &a,
            &b,
            &labels,
            &[
                "--engagement",
                &engagement,
                "--bootstrap",
                "200",
                "--seed",
                seed,
                "--json",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let report = json("1");
    assert_eq!(report, json("1"));
    assert_ne!(report["segments"], json("2")["segments"]);
    assert_eq!(report["compare"], serde_json::json!(["a", "b"]));
    assert_eq!(report["labelled_queries_not_listed"], 1);
    assert_eq!(report["listed_queries_without_positive_label"], 1);
    let segments = report["segments"].as_array().unwrap();
    let names: Vec<&str> = segments
        .iter()
        .map(|s| s["segment"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["head", "torso", "tail", "all"]);
    let count = |i: usize| segments[i]["queries"].as_u64().unwrap();
    assert_eq!(count(0) + count(1) + count(2), count(3));
    assert_eq!(count(3), report["evaluated_queries"].as_u64().unwrap());
    assert!(count(0) > 0 && count(1) > 0 && count(2) > 0);
    // list b misses every 7th query
    assert!(report["lists"][1]["queries_missing"].as_u64().unwrap() >= 5);
    let all = &segments[3];
    let metrics: Vec<&str> = all["lists"][0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["metric"].as_str().unwrap())
        .collect();
    assert_eq!(metrics, ["ndcg@3", "recall@2", "recall@5"]);
    for p in all["paired"].as_array().unwrap() {
        let d = &p["difference"];
        assert!(d["low"].as_f64().unwrap() <= d["mean"].as_f64().unwrap());
        assert!(d["mean"].as_f64().unwrap() <= d["high"].as_f64().unwrap());
        let total = ["wins", "ties", "losses"]
            .iter()
            .map(|k| p[k].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(total, count(3));
        // the difference of the means is the mean of the differences
        let metric = p["metric"].as_str().unwrap();
        let mean = |l: usize| {
            all["lists"][l]["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["metric"] == metric)
                .unwrap()["value"]["mean"]
                .as_f64()
                .unwrap()
        };
        assert!((mean(0) - mean(1) - d["mean"].as_f64().unwrap()).abs() < 1e-12);
    }
    // the table on stdout names both lists and the paired section
    let out = evaluate_neighbours(&a, &b, &labels, &["--bootstrap", "0"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("recall@5") && text.contains("# paired: a - b"),
        "{text}"
    );
}

#[test]
fn neighbour_evaluation_reads_mined_pairs_and_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    // labels straight from `mine pairs` on the Table 2 fixture, retrieval output as the list
    let pairs = dir.path().join("pairs.parquet");
    let engagement = root().join("fixtures/table2/engagement.csv");
    let o = run(&[
        "mine",
        "pairs",
        "--engagement",
        engagement.to_str().unwrap(),
        "-o",
        pairs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let retrieval = root().join("fixtures/table2/retrieval.csv");
    let o = run(&[
        "evaluate",
        "neighbours",
        "--neighbours",
        retrieval.to_str().unwrap(),
        "--labels",
        pairs.to_str().unwrap(),
        "--recall-at",
        "3,100",
        "--bootstrap",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["lists"][0]["list"], "retrieval");
    assert!(
        report["evaluated_queries"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let recall = |k: &str| {
        report["segments"][0]["lists"][0]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == k)
            .unwrap()["value"]["mean"]
            .as_f64()
            .unwrap()
    };
    assert!(recall("recall@3") <= recall("recall@100"));

    // a negative label: which input, which column, an example row, what was expected
    let (a, b, _, _) = neighbour_fixture(dir.path());
    let bad = write(
        dir.path(),
        "bad-labels.csv",
        "query,candidate,label\nq1,c1,0.5\nq1,c2,-0.25\n",
    );
    let out = evaluate_neighbours(&a, &b, bad.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("labels")
            && err.contains("label")
            && err.contains("-0.25")
            && err.contains(">= 0"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // a list without a score column
    let noscore = write(dir.path(), "noscore.csv", "query,neighbour\nq1,c1\n");
    let out = evaluate_neighbours(noscore.to_str().unwrap(), &b, &a, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("noscore.csv") && err.contains("score"),
        "{err}"
    );
}
