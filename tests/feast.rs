//! examples/feast end to end with Feast 0.67 (PyPI, in the test venv): the backfill of
//! fixtures/daily, `feast apply`, point-in-time `get_historical_features` (entity rows between
//! partitions, pairs without a feature row, a pair a later build dropped), `feast materialize` and
//! `get_online_features`, and the shared fill rule of examples/feast/fill.py.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks Feast's answers against the partition files themselves; prints JSON.
const CHECK: &str = r##"
import json, sys
from datetime import datetime, timedelta, timezone
import pandas as pd, pyarrow.dataset as ds
from feast import FeatureStore
sys.path.insert(0, sys.argv[1])
from fill import fill_absent, FEATURES

repo, files = sys.argv[1], sys.argv[2]
store = FeatureStore(repo_path=repo)
table = ds.dataset(files, format="parquet", partitioning="hive").to_table().to_pandas()
table["dt"] = table["dt"].astype(str)

def partition_row(query, product, t):
    # day D's build holds for searches on D (event_timestamp D 00:00, TTL one day)
    day = t.strftime("%Y-%m-%d")
    rows = table[(table.dt == day) & (table["query"] == query) & (table.product_id == product)]
    return None if rows.empty else rows.iloc[0]

utc = lambda s: pd.Timestamp(s, tz="UTC")
entities = pd.DataFrame([
    ("red shoes", "P1", utc("2026-01-03 12:00")),     # a pair in every build
    ("red shoes", "P1", utc("2026-01-05 06:00")),     # the same pair on the rebuilt day
    ("crimson shoes", "P2", utc("2026-01-04 23:59")), # a prior-only pair, late in a day
    ("red shoes", "P4", utc("2026-01-04 08:00")),     # in the build of 01-04 ...
    ("red shoes", "P4", utc("2026-01-05 12:00")),     # ... dropped by the rebuild of 01-05
    ("no such query", "P1", utc("2026-01-04 00:00")), # never a feature row
    ("red shoes", "P1", utc("2026-01-08 00:00")),     # after the last partition's TTL
], columns=["query", "product_id", "event_timestamp"])
features = [f"q2q_prior:{f}" for f in FEATURES]
got = store.get_historical_features(entity_df=entities, features=features).to_df()

checked = []
for _, e in entities.iterrows():
    match = got[(got["query"] == e["query"]) & (got.product_id == e.product_id)
                & (got.event_timestamp == e.event_timestamp)]
    assert len(match) == 1, (e, got)
    row, expected = match.iloc[0], partition_row(e["query"], e.product_id, e.event_timestamp)
    if expected is None:
        ok = all(pd.isna(row[f]) for f in FEATURES)
    else:
        ok = all(abs(float(row[f]) - float(expected[f])) <= 1e-12 * max(1.0, abs(float(expected[f])))
                 for f in FEATURES)
    checked.append({"entity": [e["query"], e.product_id, str(e.event_timestamp)],
                    "absent": expected is None, "as_partition": bool(ok)})

filled = fill_absent(got)
absent = filled[filled["query"] == "no such query"].iloc[0]

store.materialize(start_date=datetime(2026, 1, 2, tzinfo=timezone.utc),
                  end_date=datetime(2026, 1, 6, tzinfo=timezone.utc))
online = store.get_online_features(
    features=features,
    entity_rows=[{"query": "red shoes", "product_id": "P1"},
                 {"query": "red shoes", "product_id": "P4"},
                 {"query": "no such query", "product_id": "P1"}],
).to_df()
latest = partition_row("red shoes", "P1", utc("2026-01-05 00:00"))
stale = partition_row("red shoes", "P4", utc("2026-01-04 00:00"))
print(json.dumps({
    "historical": checked,
    "rows": len(got),
    "filled_absent": [float(absent[f]) for f in FEATURES] + [int(absent["has_prior"])],
    "online_latest": bool(abs(online.iloc[0]["f"] - latest["f"]) < 1e-12),
    "online_dropped_pair_keeps": bool(abs(online.iloc[1]["f"] - stale["f"]) < 1e-12),
    "online_absent_null": bool(all(pd.isna(online.iloc[2][f]) for f in FEATURES)),
}))
"##;

#[test]
fn feast_serves_the_backfill_point_in_time_offline_and_online() {
    let dir = tempfile::tempdir().unwrap();
    let daily = dir.path().join("daily");
    let job = root().join("fixtures/daily/job.toml");
    let backfill = |extra: &[&str]| {
        let mut args = vec![
            "backfill",
            "--config",
            job.to_str().unwrap(),
            "-o",
            daily.to_str().unwrap(),
        ];
        args.extend(extra);
        ok(&run(&args));
    };
    backfill(&["--from", "2026-01-02", "--to", "2026-01-05"]);
    // a rebuild that drops pairs: day 01-05 with a higher min_score
    backfill(&[
        "--from",
        "2026-01-05",
        "--to",
        "2026-01-05",
        "--min-score",
        "0.9",
        "--force",
    ]);
    let repo = dir.path().join("repo");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(root().join("examples/feast"))
        .arg(&repo)
        .status()
        .unwrap();
    assert!(copy.success());
    let _ = std::fs::remove_dir_all(repo.join("data"));
    let files = format!("{}/*/*.parquet", daily.display());
    let applied = Command::new(venv_bin("feast"))
        .arg("apply")
        .current_dir(&repo)
        .env("Q2Q_FEAST_SOURCE", &files)
        .output()
        .unwrap();
    let log = ok(&applied);
    assert!(log.contains("q2q_prior"), "{log}");
    let result = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(CHECK)
        .arg(&repo)
        .arg(&daily)
        .env("Q2Q_FEAST_SOURCE", &files)
        .current_dir(&repo)
        .output()
        .unwrap();
    // Feast prints materialization progress on stdout too: the JSON is the last line
    let stdout = ok(&result);
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    eprintln!("feast: {result}");
    assert_eq!(result["rows"], 7, "every entity row comes back: {result}");
    let historical = result["historical"].as_array().unwrap();
    let absent: Vec<bool> = historical
        .iter()
        .map(|h| h["absent"].as_bool().unwrap())
        .collect();
    assert_eq!(
        absent,
        [false, false, false, false, true, true, true],
        "the dropped pair, the unknown pair and the expired one have no feature row: {result}"
    );
    for h in historical {
        assert_eq!(h["as_partition"], true, "point-in-time value of {h}");
    }
    assert_eq!(
        result["filled_absent"],
        serde_json::json!([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0]),
        "the fill rule export lightgbm applies"
    );
    assert_eq!(result["online_latest"], true, "{result}");
    assert_eq!(result["online_absent_null"], true, "{result}");
    // documented in the README: online, a pair dropped by a later build keeps its last value
    assert_eq!(result["online_dropped_pair_keeps"], true, "{result}");
    assert!(Path::new(&repo.join("data/online_store.db")).exists());
}
