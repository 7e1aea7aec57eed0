//! The ranker hand-offs end to end with the programs users run: LightGBM's own command-line
//! program (built from its PyPI source by `.ci/lightgbm-cli`) training and predicting with exactly
//! the commands the README prints, and `export svmlight` read by scikit-learn and trained on by
//! XGBoost's ranker.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// synth with a later period -> run -> `export <layout>` into `dir/out`.
fn export(dir: &Path, layout: &str) -> PathBuf {
    let out = dir.join("out");
    synth_run_export(dir, layout, &[], &[], &out);
    out
}

/// LightGBM's command-line program: `Q2Q_LIGHTGBM_CLI` (set by `.ci/test`), else built (once, into
/// the cache) by `.ci/lightgbm-cli`.
fn lightgbm_cli() -> PathBuf {
    if let Some(path) = std::env::var_os("Q2Q_LIGHTGBM_CLI") {
        return PathBuf::from(path);
    }
    let venv = venv_bin("python")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let built = Command::new(root().join(".ci/lightgbm-cli"))
        .env("Q2Q_TEST_VENV", venv)
        .output()
        .unwrap();
    PathBuf::from(ok(&built).trim())
}

/// NDCG@10 (scikit-learn) of scores against the labels of a LightGBM CSV + .query split, and of
/// the Python API trained from lightgbm.conf on the same files; JSON.
const SCORE: &str = r##"
import json, sys
import numpy as np, lightgbm as lgb
from sklearn.metrics import ndcg_score

out, predictions = sys.argv[1], sys.argv[2]
valid = np.loadtxt(f"{out}/valid.csv", delimiter=",", skiprows=1, ndmin=2)
y, X = valid[:, 0], valid[:, 1:]
sizes = [int(x) for x in open(f"{out}/valid.csv.query").read().split()]
bounds = np.cumsum([0] + sizes)
def mean_ndcg(scores):
    values = [ndcg_score([y[a:b]], [scores[a:b]], k=10)
              for a, b in zip(bounds[:-1], bounds[1:]) if b - a > 1 and y[a:b].max() > 0]
    return float(np.mean(values))
cli = np.loadtxt(predictions)
params = lightgbm_conf(f"{out}/lightgbm.conf")
data, valid_data = params.pop("data"), params.pop("valid_data")
for k in ("task", "output_model"):
    params.pop(k)
params["verbose"] = -1
train = lgb.Dataset(f"{out}/{data}", params=params)
val = lgb.Dataset(f"{out}/{valid_data}", reference=train, params=params)
model = lgb.train(params, train, valid_sets=[val])
rng = np.random.default_rng(0)
print(json.dumps({
    "rows": len(y), "predictions": len(cli),
    "cli_ndcg10": mean_ndcg(cli),
    "python_ndcg10": mean_ndcg(model.predict(X)),
    "random_ndcg10": float(np.mean([mean_ndcg(rng.random(len(y))) for _ in range(5)])),
}))
"##;

#[test]
fn lightgbm_cli_trains_and_predicts_with_the_printed_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = export(dir.path(), "lightgbm");
    let cli = lightgbm_cli();
    // README: cd OUT && lightgbm config=lightgbm.conf, then lightgbm config=predict.conf
    let train = Command::new(&cli)
        .arg("config=lightgbm.conf")
        .current_dir(&out)
        .output()
        .unwrap();
    let log = format!("{}{}", ok(&train), stderr(&train));
    assert!(
        !log.contains("ignoring the additional query file"),
        "the .query files are used: {log}"
    );
    // lambdarank refuses to train without query information: with no group column, it came
    // from train.csv.query / valid.csv.query
    assert!(
        log.contains("Calculating query boundaries"),
        "LightGBM loads the groups: {log}"
    );
    let model = std::fs::read_to_string(out.join("model.txt")).unwrap();
    let names = model
        .lines()
        .find_map(|l| l.strip_prefix("feature_names="))
        .unwrap();
    let features = std::fs::read_to_string(out.join("features.txt")).unwrap();
    assert_eq!(
        names.split(' ').collect::<Vec<_>>(),
        features.split_whitespace().collect::<Vec<_>>(),
        "no feature slot for the group"
    );
    let predict = Command::new(&cli)
        .arg("config=predict.conf")
        .current_dir(&out)
        .output()
        .unwrap();
    ok(&predict);
    let scored: serde_json::Value = serde_json::from_str(&python(
        &format!("{LIGHTGBM_CONF_PY}{SCORE}"),
        &[
            out.to_str().unwrap(),
            out.join("valid.predictions.txt").to_str().unwrap(),
        ],
    ))
    .unwrap();
    eprintln!("lightgbm cli: {scored}");
    assert_eq!(scored["rows"], scored["predictions"], "one score per row");
    let (cli_ndcg, python_ndcg, random) = (
        scored["cli_ndcg10"].as_f64().unwrap(),
        scored["python_ndcg10"].as_f64().unwrap(),
        scored["random_ndcg10"].as_f64().unwrap(),
    );
    assert!(cli_ndcg > random + 0.05, "{scored}");
    assert!(
        (cli_ndcg - python_ndcg).abs() < 0.01,
        "the CLI and the Python API trained on the same files agree: {scored}"
    );
}

/// Reads the svmlight split with scikit-learn, checks it against the Parquet copy row for row,
/// and trains XGBoost's ranker on it; JSON.
const SVMLIGHT: &str = r##"
import json, sys
import numpy as np, pyarrow.parquet as pq, xgboost as xgb
from sklearn.datasets import load_svmlight_file
from sklearn.metrics import ndcg_score

out = sys.argv[1]
features = open(f"{out}/features.txt").read().split()
feature_map = [line.split("\t") for line in open(f"{out}/feature_map.tsv").read().splitlines()]
def load(split):
    X, y, qid = load_svmlight_file(f"{out}/{split}.svm", query_id=True, n_features=len(features),
                                   zero_based=False)
    t = pq.read_table(f"{out}/{split}.parquet")
    same = (np.allclose(X.toarray(), np.column_stack([t.column(f).to_numpy().astype(float) for f in features]))
            and (y == t.column("label").to_numpy()).all() and (qid == t.column("qid").to_numpy()).all())
    return X, y, qid, same
Xt, yt, qt, same_train = load("train")
Xv, yv, qv, same_valid = load("valid")
ranker = xgb.XGBRanker(objective="rank:ndcg", n_estimators=100, learning_rate=0.1, max_depth=6,
                       tree_method="hist", n_jobs=1, random_state=0)
ranker.fit(Xt, yt, qid=qt)
pred = ranker.predict(Xv)
# XGBoost reads the feature map (it checks the ids) and names the features in the dump
ranker.get_booster().dump_model(f"{out}/dump.txt", fmap=f"{out}/feature_map.tsv")
dump = open(f"{out}/dump.txt").read()
def mean_ndcg(scores):
    values = []
    for q in np.unique(qv):
        m = qv == q
        if m.sum() > 1 and yv[m].max() > 0:
            values.append(ndcg_score([yv[m]], [scores[m]], k=10))
    return float(np.mean(values))
rng = np.random.default_rng(0)
print(json.dumps({
    "same_as_parquet": bool(same_train and same_valid),
    "feature_map": [[int(i), n, t] for i, n, t in feature_map],
    "dump_names": sorted({f for f in features if f"[{f}<" in dump}),
    "features": features,
    "rows": [int(Xt.shape[0]), int(Xv.shape[0])],
    "xgboost_ndcg10": mean_ndcg(pred),
    "random_ndcg10": float(np.mean([mean_ndcg(rng.random(len(yv))) for _ in range(5)])),
}))
"##;

#[test]
fn svmlight_export_reads_in_scikit_learn_and_trains_xgboost() {
    let dir = tempfile::tempdir().unwrap();
    let out = export(dir.path(), "svmlight");
    let first = std::fs::read_to_string(out.join("train.svm")).unwrap();
    let line = first.lines().next().unwrap();
    let mut fields = line.split(' ');
    assert!(
        fields.next().unwrap().parse::<u32>().is_ok(),
        "label first: {line}"
    );
    assert_eq!(fields.next().unwrap(), "qid:0", "{line}");
    for pair in fields {
        let (index, value) = pair.split_once(':').unwrap();
        assert!(index.parse::<usize>().unwrap() >= 1, "1-based: {line}");
        assert_ne!(
            value.parse::<f64>().unwrap(),
            0.0,
            "zeros are left out: {line}"
        );
    }
    for absent in ["train.csv", "lightgbm.conf"] {
        assert!(!out.join(absent).exists(), "{absent} is LightGBM's layout");
    }
    let result: serde_json::Value =
        serde_json::from_str(&python(SVMLIGHT, &[out.to_str().unwrap()])).unwrap();
    eprintln!("svmlight: {result}");
    assert_eq!(result["same_as_parquet"], true, "{result}");
    let features = result["features"].as_array().unwrap();
    let map = result["feature_map"].as_array().unwrap();
    assert_eq!(map.len(), features.len());
    for (i, (entry, name)) in map.iter().zip(features).enumerate() {
        assert_eq!(entry[0], i, "XGBoost's 0-based ids");
        assert_eq!(&entry[1], name);
    }
    assert!(
        !result["dump_names"].as_array().unwrap().is_empty(),
        "the model dump names features through the map: {result}"
    );
    let (xgboost, random) = (
        result["xgboost_ndcg10"].as_f64().unwrap(),
        result["random_ndcg10"].as_f64().unwrap(),
    );
    assert!(xgboost > random + 0.05, "{result}");
}
