//! `export lightgbm` feeding real LightGBM (installed from PyPI into the test venv): the files as
//! written train a lambdarank model, from the CSV with its config and from the Parquet copy.

mod common;

use std::path::Path;

use common::*;

fn ok(out: &std::process::Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

/// synth (with a later period) -> run -> export, in `dir` (the export in `dir/lgb`).
fn synth_and_export(dir: &Path, extra: &[&str]) {
    synth_run_and_export(dir, &[], extra)
}

/// [`synth_and_export`] with `run_extra` flags for the job.
fn synth_run_and_export(dir: &Path, run_extra: &[&str], extra: &[&str]) {
    synth_run_export(dir, "lightgbm", run_extra, extra, &dir.join("lgb"));
}

/// Trains from lightgbm.conf (the CLI's keys minus task/data/output, which the Python API takes
/// as arguments) on the CSV files, and from the Parquet copies with groups from `qid`; checks the
/// files' consistency; prints a JSON summary.
const TRAIN: &str = r##"
import csv, json, sys
import numpy as np, pyarrow.parquet as pq, lightgbm as lgb
from sklearn.metrics import ndcg_score

out = sys.argv[1]
params = lightgbm_conf(f"{out}/lightgbm.conf")
data, valid = params.pop("data"), params.pop("valid_data")
for k in ("task", "output_model"):
    params.pop(k)
params["verbose"] = -1
params["num_threads"] = 1

# 1. as lightgbm.conf says, from the CSV files (the C++ loader reads the header and label
# column, and the groups from <data>.query beside each file)
train = lgb.Dataset(f"{out}/{data}", params=params)
val = lgb.Dataset(f"{out}/{valid}", reference=train, params=params)
conf_model = lgb.train(params, train, valid_sets=[val])
valid_csv = np.loadtxt(f"{out}/{valid}", delimiter=",", skiprows=1, ndmin=2)
conf_pred = conf_model.predict(valid_csv[:, 1:])

# 2. from the Parquet copies, groups from qid
features = open(f"{out}/features.txt").read().split()
def load(split):
    t = pq.read_table(f"{out}/{split}.parquet")
    X = np.column_stack([t.column(f).to_numpy().astype(float) for f in features])
    y = t.column("label").to_numpy()
    qid = t.column("qid").to_numpy()
    _, sizes = np.unique(qid, return_counts=True)
    assert (np.diff(qid) >= 0).all(), "rows of a query are contiguous, qids ascending"
    return t, X, y, qid, sizes
tt, Xt, yt, qt, gt = load("train")
tv, Xv, yv, qv, gv = load("valid")
p = {k: v for k, v in params.items() if k not in ("header", "label_column", "group_column", "ignore_column", "early_stopping_round")}
model = lgb.train(p, lgb.Dataset(Xt, yt, group=gt), num_boost_round=100)
pred = model.predict(Xv)

def mean_ndcg(scores):
    values = []
    for q in np.unique(qv):
        m = qv == q
        if m.sum() > 1 and yv[m].max() > 0:
            values.append(ndcg_score([yv[m]], [scores[m]], k=10))
    return float(np.mean(values))
rng = np.random.default_rng(0)
random_ndcg = float(np.mean([mean_ndcg(rng.random(len(yv))) for _ in range(5)]))

# 3. consistency of the files
def read_csv(split):
    with open(f"{out}/{split}.csv") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]
header, rows = read_csv("train")
_, vrows = read_csv("valid")
sizes = [int(x) for x in open(f"{out}/train.csv.query").read().split()]
vsizes = [int(x) for x in open(f"{out}/valid.csv.query").read().split()]
numeric = all(float(v) == float(v) for r in rows + vrows for v in r)
print(json.dumps({
    "csv_ndcg10": mean_ndcg(conf_pred),
    "parquet_ndcg10": mean_ndcg(pred),
    "random_ndcg10": random_ndcg,
    "header": header,
    "features": features,
    "csv_rows": [len(rows), len(vrows)],
    "query_file_sum": [sum(sizes), sum(vsizes)],
    "query_file_matches_qid": sizes == gt.tolist() and vsizes == gv.tolist(),
    "model_features": conf_model.num_feature(),
    "train_groups": train.get_group().tolist() == gt.tolist(),
    "numeric": numeric,
    "overlap": len(set(tt.column("query").to_pylist()) & set(tv.column("query").to_pylist())),
    "queries": [len(gt), len(gv)],
}))
"##;

#[test]
fn lightgbm_trains_on_the_export_of_synth_data() {
    let dir = tempfile::tempdir().unwrap();
    synth_and_export(dir.path(), &[]);
    let out = dir.path().join("lgb");
    let result: serde_json::Value = serde_json::from_str(&python(
        &format!("{LIGHTGBM_CONF_PY}{TRAIN}"),
        &[out.to_str().unwrap()],
    ))
    .unwrap();

    let features: Vec<&str> = result["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        features,
        [
            "h",
            "prior",
            "alpha",
            "f",
            "impressions",
            "n_neighbours",
            "n_contributing",
            "has_prior"
        ]
    );
    let header: Vec<&str> = result["header"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(header[0], "label");
    assert_eq!(
        header[1..],
        features[..],
        "no group column: the .query files carry the groups"
    );
    assert_eq!(result["csv_rows"], result["query_file_sum"], "{result}");
    assert_eq!(result["query_file_matches_qid"], true, "{result}");
    assert_eq!(
        result["train_groups"], true,
        "LightGBM read train.csv.query: {result}"
    );
    assert_eq!(
        result["model_features"],
        features.len(),
        "no feature slot for the group: {result}"
    );
    assert_eq!(result["numeric"], true);
    assert_eq!(result["overlap"], 0, "no query in both splits");
    let queries: Vec<u64> = result["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let share = queries[0] as f64 / (queries[0] + queries[1]) as f64;
    assert!(
        (0.75..0.85).contains(&share),
        "about 80% of queries in train: {share}"
    );

    eprintln!("lightgbm: {result}");
    let random = result["random_ndcg10"].as_f64().unwrap();
    for trained in ["csv_ndcg10", "parquet_ndcg10"] {
        let ndcg = result[trained].as_f64().unwrap();
        assert!(
            ndcg > random + 0.05,
            "{trained} {ndcg} should beat a random ordering ({random}): {result}"
        );
    }

    // every label row is in one split; the summary says how many
    let labels = run(&[
        "sql",
        "-c",
        &format!(
            "SELECT COUNT(*) FROM '{}'",
            dir.path().join("engagement_later.parquet").display()
        ),
    ]);
    let total: u64 = String::from_utf8_lossy(&labels.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let rows: Vec<u64> = result["csv_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(rows[0] + rows[1], total);
}

/// The same training on a feature table of the bayes blend (score-weighted prior, as the README
/// recommends): the features are typed and named alike, and the model beats a random order.
#[test]
fn lightgbm_trains_on_a_bayes_feature_table() {
    let dir = tempfile::tempdir().unwrap();
    synth_run_and_export(
        dir.path(),
        &["--blend", "bayes", "--prior-weighting", "score"],
        &[],
    );
    let out = dir.path().join("lgb");
    let result: serde_json::Value = serde_json::from_str(&python(
        &format!("{LIGHTGBM_CONF_PY}{TRAIN}"),
        &[out.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(result["numeric"], true);
    let random = result["random_ndcg10"].as_f64().unwrap();
    for trained in ["csv_ndcg10", "parquet_ndcg10"] {
        let ndcg = result[trained].as_f64().unwrap();
        assert!(
            ndcg > random + 0.05,
            "{trained} {ndcg} vs random {random}: {result}"
        );
    }
}

#[test]
fn explicit_labels_extra_features_and_missing_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let features = root().join("fixtures/tiny/expected.csv");
    // a pair the feature table lacks, an extra numeric feature, labels above 30, a text column
    let labels = write(
        dir.path(),
        "labels.csv",
        "query,product_id,label,price,market\n\
         red shoes,P1,31,10.5,US\n\
         red shoes,P2,0,3.0,US\n\
         red shoes,P9,2,1.0,US\n\
         crimson shoes,P1,1,10.5,US\n\
         crimson shoes,P2,0,3.0,US\n",
    );
    let out = dir.path().join("lgb");
    let export = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "lightgbm",
            "--feature-table",
            features.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--split",
            "random=50%",
            "--seed",
            "1",
        ];
        args.extend(extra);
        run(&args)
    };
    ok(&export(&[]));
    let names = std::fs::read_to_string(out.join("features.txt")).unwrap();
    assert_eq!(
        names, "h\nprior\nalpha\nf\nimpressions\nn_neighbours\nn_contributing\nhas_prior\n",
        "the labels' own columns only when asked for"
    );
    ok(&export(&[
        "--force",
        "--features",
        "h,prior,has_prior,price",
    ]));
    let conf = std::fs::read_to_string(out.join("lightgbm.conf")).unwrap();
    assert!(conf.contains("\nlabel_gain = 0,1,3,7,"), "{conf}");
    assert!(conf.contains(",2147483647\n"), "{conf}");
    // the missing pair: zero features, has_prior 0, its own price
    let all = run(&[
        "sql",
        "--format",
        "csv",
        "-c",
        &format!(
            "SELECT query, product_id, label, h, prior, has_prior, price FROM '{}/*.parquet' ORDER BY query, product_id",
            out.display()
        ),
    ]);
    ok(&all);
    let text = String::from_utf8_lossy(&all.stdout).into_owned();
    assert!(text.contains("red shoes,P9,2,0.0,0.0,0,1.0\n"), "{text}");
    assert!(
        text.contains("red shoes,P1,31,0.08992506244796003,"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 6, "{text}");

    // an existing folder is replaced only with --force; --features picks and orders columns
    let again = export(&["--features", "f,has_prior"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    ok(&export(&["--features", "f,has_prior", "--force"]));
    let header = std::fs::read_to_string(out.join("train.csv")).unwrap();
    assert!(header.starts_with("label,f,has_prior\n"), "{header}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('_'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_labels_and_options_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let features = root().join("fixtures/tiny/expected.csv");
    let out = dir.path().join("lgb");
    let case = |labels: &str, extra: &[&str], expect: &[&str]| {
        let path = write(dir.path(), "labels.csv", labels);
        let mut args = vec![
            "export",
            "lightgbm",
            "--feature-table",
            features.to_str().unwrap(),
            "--labels",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let result = run(&args);
        assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
        for fragment in expect {
            assert!(
                stderr(&result).contains(fragment),
                "lacks {fragment:?}: {}",
                stderr(&result)
            );
        }
        assert!(!out.exists(), "nothing written");
        let staging: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('_'))
            .collect();
        assert!(staging.is_empty(), "{staging:?}");
    };
    let header = "query,product_id,label\n";
    case(
        &format!("{header}red shoes,P1,1.5\n"),
        &[],
        &[
            "'labels'",
            "column 'label'",
            "label_null_negative_or_fractional",
            "product_id=\"P1\"",
            "integer relevance grade",
        ],
    );
    case(
        &format!("{header}red shoes,P1,-1\n"),
        &[],
        &["label_null_negative_or_fractional"],
    );
    case(
        &format!("{header}red shoes,P1,1\nred shoes,P1,2\n"),
        &[],
        &["more than one row", "one label per (query, product_id)"],
    );
    case(
        "query,product_id,grade\nred shoes,P1,1\n",
        &[],
        &["column 'clicks'", "a `label` column, or clicks"],
    );
    case(
        &format!("{header}red shoes,P1,1\n"),
        &["--features", "h,nope"],
        &["no numeric column 'nope'", "available: h, prior"],
    );
    case(
        &format!("{header}red shoes,P1,1\nred shoes,P2,0\n"),
        &[],
        &["split has no queries", "--split query-hash=80%"],
    );
    case(
        &format!("{header}red shoes,P1,1\n"),
        &["--split", "half"],
        &["--split 'half'"],
    );
    case(
        &format!("{header}red shoes,P1,32\n"),
        &[],
        &["label_above_31", "at most 31"],
    );
    // a labels column named like an engine feature: fine unless asked for, then ambiguous
    let clash = "query,product_id,label,impressions\nred shoes,P1,1,7\ncrimson shoes,P1,0,3\n";
    case(
        clash,
        &["--features", "f,impressions"],
        &["'impressions' is a column of both"],
    );
}

#[test]
fn the_output_must_be_a_folder_of_its_own() {
    let features = root().join("fixtures/tiny/expected.csv");
    let out = run(&[
        "export",
        "lightgbm",
        "--feature-table",
        features.to_str().unwrap(),
        "--labels",
        features.to_str().unwrap(),
        "--out",
        ".",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("name a folder"), "{}", stderr(&out));
}

#[test]
fn an_interrupted_export_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    ok(&run(&[
        "synth",
        "--queries",
        "20000",
        "--seed",
        "5",
        "--later-period",
        "--out",
        d,
    ]));
    ok(&run(&[
        "run",
        "--engagement",
        &format!("{d}/engagement.parquet"),
        "--neighbours",
        &format!("{d}/neighbours.parquet"),
        "-o",
        &format!("{d}/features.parquet"),
    ]));
    let out = dir.path().join("lgb");
    let mut child = bin()
        .args([
            "export",
            "lightgbm",
            "--feature-table",
            &format!("{d}/features.parquet"),
            "--labels",
            &format!("{d}/engagement_later.parquet"),
            "--out",
            out.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert!(child.try_wait().unwrap().is_none(), "still exporting");
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!out.exists());
    let staging: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('_'))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
}
