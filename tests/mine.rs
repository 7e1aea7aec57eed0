//! `mine pairs` on the paper's Table 2 ("goya lady fingers"), rebuilt as purchases in
//! fixtures/table2/engagement.csv, and on bad input.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;

/// One output row: the CSV's fields by column name.
type Row = HashMap<String, String>;

fn read_csv(path: &std::path::Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

fn mine(args: &[&str]) -> std::process::Output {
    let mut all = vec!["mine", "pairs"];
    all.extend(args);
    run(&all)
}

fn fixture() -> String {
    root()
        .join("fixtures/table2/engagement.csv")
        .to_str()
        .unwrap()
        .to_string()
}

/// The purchased products per query, from the fixture (independent of the engine).
fn purchased() -> HashMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let mut sets: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f[5].parse::<i64>().unwrap() > 0 {
            sets.entry(f[0].to_string())
                .or_default()
                .insert(f[1].to_string());
        }
    }
    sets
}

#[test]
fn reproduces_table_2_of_the_paper() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pairs.csv");
    let o = mine(&[
        "--engagement",
        &fixture(),
        "-o",
        out.to_str().unwrap(),
        "--negatives",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_csv(&out);
    let goya: Vec<&Row> = rows
        .iter()
        .filter(|r| r["query"] == "goya lady fingers")
        .collect();
    // Table 2: candidate, co-purchase, union, minimum, Jaccard (3 d.p.), overlap (2 d.p.),
    // target (3 d.p.). The last two rows tie; ours are ordered by candidate then. Their target,
    // 0.4 * 4/18 = 0.0889, is printed 0.088 in the paper (cut, where the other rows are rounded:
    // 0.1607 -> 0.161); we check it to within 0.001 and eq. 3 exactly.
    let table2 = [
        (
            "lady fingers for tiramisu prime",
            9,
            42,
            12,
            "0.214",
            "0.75",
            "0.161",
        ),
        (
            "lady finger cookies for tiramisu",
            8,
            34,
            12,
            "0.235",
            "0.67",
            "0.157",
        ),
        ("ladyfinger cookies", 8, 58, 12, "0.138", "0.67", "0.092"),
        (
            "lady fingers for trifle",
            4,
            18,
            10,
            "0.222",
            "0.40",
            "0.088",
        ),
        (
            "sponge fingers biscuit",
            4,
            18,
            10,
            "0.222",
            "0.40",
            "0.088",
        ),
    ];
    assert_eq!(goya.len(), table2.len(), "{goya:#?}");
    for (row, (candidate, co, union, min, jaccard, overlap, target)) in goya.iter().zip(table2) {
        let num = |c: &str| row[c].parse::<f64>().unwrap();
        assert_eq!(row["candidate"], candidate);
        assert_eq!(
            (
                row["n_copurchase"].as_str(),
                row["n_union"].as_str(),
                row["n_min"].as_str()
            ),
            (
                co.to_string().as_str(),
                union.to_string().as_str(),
                min.to_string().as_str()
            )
        );
        assert_eq!(format!("{:.3}", num("jaccard")), jaccard);
        assert_eq!(format!("{:.2}", num("overlap")), overlap);
        let paper: f64 = target.parse().unwrap();
        assert!((num("label") - paper).abs() < 0.001, "{candidate}");
        if co >= 8 {
            assert_eq!(format!("{:.3}", num("label")), target);
        }
        // exactly eq. 1-3
        assert_eq!(num("overlap"), co as f64 / min as f64);
        assert_eq!(num("jaccard"), co as f64 / union as f64);
        assert_eq!(num("label"), num("overlap") * num("jaccard"));
        assert_eq!(row["is_negative"], "false");
    }
    // "tiramisu cake" shares two purchases: below the minimum of three; impressions and clicks
    // without a purchase (goya lady fingers shows A00-A02) do not count
    assert!(
        rows.iter()
            .all(|r| r["candidate"] != "tiramisu cake" || r["query"] != "goya lady fingers")
    );
    // every pair of the output, recomputed from the fixture's purchases
    let sets = purchased();
    for r in &rows {
        let (a, b) = (&sets[&r["query"]], &sets[&r["candidate"]]);
        let shared = a.intersection(b).count();
        assert!(shared >= 3);
        assert_eq!(r["n_copurchase"], shared.to_string());
        assert_eq!(r["n_union"], a.union(b).count().to_string());
    }
    // both directions: each candidate also lists goya lady fingers
    for (candidate, ..) in table2 {
        assert!(
            rows.iter()
                .any(|r| r["query"] == candidate && r["candidate"] == "goya lady fingers"),
            "{candidate}"
        );
    }
    let report = stderr(&o);
    assert!(report.contains("queries per product"), "{report}");
    assert!(report.contains("kept as positives"), "{report}");
}

#[test]
fn negatives_share_no_purchase_and_splits_follow_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pairs.csv");
    let o = mine(&[
        "--engagement",
        &fixture(),
        "-o",
        out.to_str().unwrap(),
        "--negatives",
        "1",
        "--split",
        "0.3,0.3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_csv(&out);
    let sets = purchased();
    let goya_negatives: Vec<&Row> = rows
        .iter()
        .filter(|r| r["query"] == "goya lady fingers" && r["is_negative"] == "true")
        .collect();
    assert_eq!(goya_negatives.len(), 5, "one per kept pair");
    for r in rows.iter().filter(|r| r["is_negative"] == "true") {
        let (a, b) = (&sets[&r["query"]], &sets[&r["candidate"]]);
        assert_eq!(a.intersection(b).count(), 0, "{r:?}");
        assert_eq!(r["label"], "0.0");
        assert_eq!(r["n_union"], (a.len() + b.len()).to_string());
    }
    let mut split_of: HashMap<&str, &str> = HashMap::new();
    for r in &rows {
        assert!(["train", "validation", "test"].contains(&r["split"].as_str()));
        let first = split_of.entry(&r["query"]).or_insert(&r["split"]);
        assert_eq!(*first, r["split"], "one split per query");
    }
    // deterministic: a rerun writes the same file
    let again = dir.path().join("again.csv");
    let o = mine(&[
        "--engagement",
        &fixture(),
        "-o",
        again.to_str().unwrap(),
        "--negatives",
        "1",
        "--split",
        "0.3,0.3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn bad_input_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pairs.parquet");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cases = [
        (
            write("no_purchases.csv", "query,product_id,clicks\na,p1,1\n"),
            vec!["purchases", "integer purchases count"],
        ),
        (
            write(
                "negative.csv",
                "query,product_id,purchases\na,p1,1\nb,p1,-2\n",
            ),
            vec!["purchases", "a count >= 0", "-2"],
        ),
        (
            write("none_bought.csv", "query,product_id,purchases\na,p1,0\n"),
            vec!["no row has a purchase"],
        ),
    ];
    for (input, expected) in cases {
        let o = mine(&["--engagement", &input, "-o", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{input}: {}", stderr(&o));
        for e in expected {
            assert!(stderr(&o).contains(e), "{input}: {e}: {}", stderr(&o));
        }
        assert!(!out.exists());
    }
    // a window needs dt= folders
    let o = mine(&[
        "--engagement",
        &fixture(),
        "-o",
        out.to_str().unwrap(),
        "--from",
        "2026-01-01",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("dt partition"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn ance_rows_subtract_co_purchase_pairs_from_the_retrieval() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.parquet");
    let o = mine(&["--engagement", &fixture(), "-o", pairs.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let retrieval = root().join("fixtures/table2/retrieval.csv");
    let out = dir.path().join("ance.ndjson");
    let ance = |extra: &[&str]| {
        let mut args = vec![
            "mine",
            "ance",
            "--retrieval",
            retrieval.to_str().unwrap(),
            "--pairs",
            pairs.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        run(&args)
    };
    let o = ance(&["--negatives", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let goya = rows
        .iter()
        .find(|r| r["query"] == "goya lady fingers")
        .unwrap();
    // positives: the Table 2 candidates, best label first (retrieved or not)
    assert_eq!(
        goya["positives"],
        serde_json::json!([
            "lady fingers for tiramisu prime",
            "lady finger cookies for tiramisu",
            "ladyfinger cookies",
            "lady fingers for trifle",
            "sponge fingers biscuit"
        ])
    );
    // retrieved: ladyfinger cookies (co-purchase: out), itself (out), tiramisu cake (2 shared
    // purchases only: a hard negative), lady fingers for trifle (out), savoiardi biscuits,
    // unrelated query 03, sponge cake mix; the best 3 by rank
    assert_eq!(
        goya["hard_negatives"],
        serde_json::json!(["tiramisu cake", "savoiardi biscuits", "unrelated query 03"])
    );
    assert_eq!(goya["hard_negative_ranks"], serde_json::json!([3, 5, 6]));
    assert_eq!(
        goya["hard_negative_scores"],
        serde_json::json!([0.93, 0.88, 0.41])
    );
    assert_eq!(
        (goya["n_retrieved"].as_i64(), goya["n_subtracted"].as_i64()),
        (Some(6), Some(2))
    );
    // a query not retrieved for still has its positives, and empty negative lists
    let prime = rows
        .iter()
        .find(|r| r["query"] == "lady fingers for tiramisu prime")
        .unwrap();
    assert_eq!(prime["hard_negatives"], serde_json::json!([]));
    assert!(
        stderr(&o).contains("3 retrieved candidates subtracted"),
        "{}",
        stderr(&o)
    );

    // --skip-top 3: ranks 1-3 are never negatives
    let o = ance(&["--negatives", "3", "--skip-top", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let goya: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["query"] == "goya lady fingers")
        .unwrap();
    assert_eq!(
        goya["hard_negatives"],
        serde_json::json!([
            "savoiardi biscuits",
            "unrelated query 03",
            "sponge cake mix"
        ])
    );

    // bad retrieval: a rank of 0 names the input, column and row; nothing written
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "query,candidate,score,rank\na,b,0.5,0\n").unwrap();
    let out2 = dir.path().join("never.parquet");
    let o = run(&[
        "mine",
        "ance",
        "--retrieval",
        bad.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    for e in ["retrieval", "rank", "a rank >= 1"] {
        assert!(stderr(&o).contains(e), "{e}: {}", stderr(&o));
    }
    assert!(!out2.exists());
}

#[test]
fn a_bestseller_is_sampled_and_the_report_says_what_was_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = run(&[
        "synth",
        "--queries",
        "3000",
        "--bestseller-queries",
        "500",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let engagement = data.join("engagement.parquet");
    let mined = |cap: &str| {
        let out = dir.path().join(format!("pairs-{cap}.parquet"));
        let o = mine(&[
            "--engagement",
            engagement.to_str().unwrap(),
            "--hot-cap",
            cap,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    // the 100-999 bucket: products, purchases, pairs counted, sampled, purchases dropped, pairs dropped
    let bucket = |report: &str| -> Vec<u64> {
        report
            .lines()
            .find(|l| l.trim_start().starts_with("100-999"))
            .unwrap_or_else(|| panic!("{report}"))
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let pairs = |n: u64| n * (n - 1) / 2;
    assert_eq!(
        bucket(&mined("50")),
        [1, 500, pairs(50), 1, 450, pairs(500) - pairs(50)]
    );
    assert_eq!(bucket(&mined("1000")), [1, 500, pairs(500), 0, 0, 0]);
}
