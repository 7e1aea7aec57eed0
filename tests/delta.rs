//! `--format delta`: what `run` and `backfill` commit, read back with delta-rs's Python package
//! (`deltalake`, PyPI) as every other reader does: the rows equal the Parquet output of the same
//! job, a rebuild replaces exactly its day in one commit, readers never see a day twice or not at
//! all (during rebuilds and after kill -9 at random points), reruns skip from the Delta log alone,
//! two backfills at once, and the same on a real S3-compatible server (moto_server on 127.0.0.1).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::daily::{FROM, TO, WINDOW, day, walk, write_inputs};
use common::moto::start_moto;
use common::*;
use q2q_prior::reference::FeatureRow;

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    stderr(out)
}

fn backfill_cmd(cmd: Command, data: &str, out: &str, extra: &[&str]) -> Command {
    backfill_days_cmd(cmd, data, out, (FROM, TO), extra)
}

fn backfill_days_cmd(
    mut cmd: Command,
    data: &str,
    out: &str,
    (from, to): (&str, &str),
    extra: &[&str],
) -> Command {
    cmd.args([
        "backfill",
        "--engagement",
        &format!("{data}/eng"),
        "--neighbours",
        &format!("{data}/nb"),
        "--output",
        out,
        "--from",
        from,
        "--to",
        to,
        "--window-days",
        WINDOW,
    ]);
    cmd.args(extra);
    cmd
}

fn backfill(data: &Path, out: &Path, extra: &[&str]) -> Output {
    backfill_cmd(bin(), data.to_str().unwrap(), out.to_str().unwrap(), extra)
        .output()
        .unwrap()
}

fn days() -> Vec<String> {
    (1..=8).map(day).collect() // 01-02 .. 01-09
}

/// How many partitions a backfill log says it built.
fn built(log: &str) -> usize {
    log.lines()
        .find_map(|l| l.strip_prefix("q2q-prior backfill: "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

/// Python: `table(version=None)`, the Delta table of sys.argv[1] (a path, or an s3:// URL with
/// the moto endpoint in sys.argv[2]) opened by the `deltalake` package.
const OPEN_PY: &str = r#"
import sys, json
from deltalake import DeltaTable
def table(version=None):
    options = None
    if sys.argv[1].startswith('s3://'):
        options = {'AWS_ENDPOINT_URL': sys.argv[2], 'AWS_ALLOW_HTTP': 'true',
                   'AWS_ACCESS_KEY_ID': 'test', 'AWS_SECRET_ACCESS_KEY': 'test',
                   'AWS_REGION': 'us-east-1'}
    return DeltaTable(sys.argv[1], version=version, storage_options=options)
"#;

/// Reads the Delta table `uri` with `deltalake` and writes each day's rows (without `dt`) to
/// `<into>/<day>.parquet`, or all rows to `<into>/all.parquet` when it has no `dt`; returns the
/// days and the table's schema as pyarrow prints it.
fn export_days(
    uri: &str,
    endpoint: &str,
    into: &Path,
) -> (BTreeMap<String, Vec<FeatureRow>>, String) {
    std::fs::create_dir_all(into).unwrap();
    let code = format!(
        "{OPEN_PY}
import pyarrow.parquet as pq, pyarrow.compute as pc
t = table().to_pyarrow_table()
print(t.schema.to_string(show_schema_metadata=False).replace(chr(10), '; '))
if 'dt' in t.column_names:
    for d in sorted(set(t['dt'].to_pylist())):
        pq.write_table(t.filter(pc.equal(t['dt'], d)).drop_columns(['dt']), f'{{sys.argv[3]}}/{{d}}.parquet')
else:
    pq.write_table(t, f'{{sys.argv[3]}}/all.parquet')"
    );
    let schema = python(
        &format!("{code}{EXIT_PY}"),
        &[uri, endpoint, into.to_str().unwrap()],
    );
    let mut rows = BTreeMap::new();
    for entry in std::fs::read_dir(into).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        rows.insert(name, read_features(&path));
    }
    (rows, schema.trim().to_string())
}

/// Python over every version of the table: no version holds a (dt, query, product_id) twice,
/// and every version's days hold one build's rows (`counts`: the row counts a day may have).
/// Returns the number of versions checked.
const CHECK_VERSIONS_PY: &str = r#"
import collections
counts = json.loads(sys.argv[3])
latest = table().version()
for v in range(latest + 1):
    t = table(v).to_pyarrow_table()
    if t.num_rows == 0:
        continue
    keys = list(zip(t['dt'].to_pylist(), t['query'].to_pylist(), t['product_id'].to_pylist()))
    dups = [k for k, n in collections.Counter(keys).items() if n > 1]
    assert not dups, f'version {v}: {len(dups)} keys twice, e.g. {dups[0]}'
    per_day = collections.Counter(str(k[0]) for k in keys)
    for d, n in per_day.items():
        assert n in counts[d], f'version {v}: {d} has {n} rows, a build has one of {counts[d]}'
print(latest + 1)
"#;

fn check_versions(uri: &str, endpoint: &str, counts: &BTreeMap<String, Vec<usize>>) -> usize {
    let counts = serde_json::to_string(counts).unwrap();
    python(
        &format!("{OPEN_PY}{CHECK_VERSIONS_PY}{EXIT_PY}"),
        &[uri, endpoint, &counts],
    )
    .trim()
    .parse()
    .unwrap()
}

/// The table's commits as (operation, the day its backfill record names or "").
fn history(uri: &str, endpoint: &str) -> Vec<(String, String)> {
    let out = python(
        &format!(
            "{OPEN_PY}
for h in reversed(table().history()):
    print(h['operation'], (h.get('q2qPrior') or {{}}).get('date', ''))
{EXIT_PY}"
        ),
        &[uri, endpoint],
    );
    out.lines()
        .map(|l| {
            let (op, d) = l.split_once(' ').unwrap_or((l, ""));
            (op.to_string(), d.to_string())
        })
        .collect()
}

/// The Parquet backfill of the same inputs, per day.
fn parquet_backfill(data: &Path, extra: &[&str]) -> BTreeMap<String, Vec<FeatureRow>> {
    let out = data.join(format!("parquet{}", extra.join("")));
    ok(&backfill(data, &out, extra));
    days()
        .into_iter()
        .map(|d| {
            let folder = out.join(format!("dt={d}"));
            let file = std::fs::read_dir(&folder)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == "parquet"))
                .unwrap();
            (d, read_features(&file))
        })
        .collect()
}

fn assert_days_equal(
    actual: &BTreeMap<String, Vec<FeatureRow>>,
    expected: &BTreeMap<String, Vec<FeatureRow>>,
) {
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (d, rows) in expected {
        assert!(!rows.is_empty(), "{d}");
        assert_same_features(&actual[d], rows);
    }
}

/// The data files below `table` (not the log), as names.
fn data_files(table: &Path) -> Vec<String> {
    let mut files: Vec<String> = walk(table)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| p.strip_prefix(table).unwrap().to_str().unwrap().to_string())
        .collect();
    files.sort();
    files
}

#[test]
fn run_commits_the_parquet_output_as_a_delta_table_and_overwrites_it_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let e = root().join("fixtures/demo/engagement.csv");
    let n = root().join("fixtures/demo/neighbours.csv");
    let (e, n) = (e.to_str().unwrap(), n.to_str().unwrap());
    let table = dir.path().join("out/features");
    let uri = table.to_str().unwrap();
    for min_score in ["0.0", "0.5"] {
        let parquet = dir.path().join(format!("features-{min_score}.parquet"));
        ok(&run_job(
            e,
            n,
            parquet.to_str().unwrap(),
            &["--min-score", min_score],
        ));
        let log = ok(&run_job(
            e,
            n,
            uri,
            &["--min-score", min_score, "--format", "delta"],
        ));
        assert!(log.contains("(Delta table, version"), "{log}");
        let (rows, schema) = export_days(uri, "", &dir.path().join(format!("read-{min_score}")));
        // the same rows as the Parquet file: an overwrite, not an append
        assert_same_features(&rows["all"], &read_features(&parquet));
        assert!(schema.contains("impressions: int64 not null"), "{schema}");
    }
    assert_eq!(
        history(uri, ""),
        vec![
            ("WRITE".into(), String::new()),
            ("WRITE".into(), String::new())
        ],
        "one commit per run"
    );
    // the first build's file stays for readers of version 0 until the retention has passed
    assert_eq!(data_files(&table).len(), 2);
    let log = ok(&run_job(
        e,
        n,
        uri,
        &["--format", "delta", "--delta-retention-hours", "0"],
    ));
    assert!(log.contains("vacuum: deleted 2 file(s)"), "{log}");
    assert_eq!(data_files(&table).len(), 1);

    // the SQL shell reads the folder as the table (not as every file in it), and names its version
    let shell = run(&[
        "sql",
        "--format",
        "csv",
        "-c",
        &format!("SELECT count(*) AS n FROM '{uri}/'"),
        "-c",
        &format!("CREATE EXTERNAL TABLE f STORED AS DELTA LOCATION '{uri}'"),
        "-c",
        "\\d",
    ]);
    let log = ok(&shell);
    let printed = String::from_utf8_lossy(&shell.stdout).into_owned();
    let rows = read_features(&dir.path().join("features-0.0.parquet")).len();
    assert!(
        printed.contains(&format!("n\n{rows}\n")),
        "{printed}\n{log}"
    );
    assert!(
        printed.contains("f,delta table,") && printed.contains("version 4"),
        "{printed}"
    );

    // a folder that holds other files is not made a table: exit 2, nothing touched
    let other = dir.path().join("other");
    let keep = write(&other, "notes.txt", "mine");
    let refused = run_job(e, n, other.to_str().unwrap(), &["--format", "delta"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("not a Delta table"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(walk(&other), vec![keep]);
    // a file name with the delta format: a clear error
    let named = run_job(
        e,
        n,
        dir.path().join("f.parquet").to_str().unwrap(),
        &["--format", "delta"],
    );
    assert_eq!(named.status.code(), Some(2), "{}", stderr(&named));
}

#[test]
fn backfill_days_equal_the_parquet_backfill_and_a_rebuild_replaces_exactly_its_day() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let parquet = parquet_backfill(data, &[]);
    let table = data.join("features");
    let uri = table.to_str().unwrap();
    let log = ok(&backfill(
        data,
        &table,
        &["--format", "delta", "--parallel", "2"],
    ));
    assert_eq!(built(&log), 8, "{log}");
    let (rows, schema) = export_days(uri, "", &data.join("read-1"));
    assert_days_equal(&rows, &parquet);
    for column in [
        "dt: date32[day] not null",
        "event_timestamp: timestamp[us, tz=UTC] not null",
        "created_timestamp: timestamp[us, tz=UTC] not null",
    ] {
        assert!(schema.contains(column), "{column} in {schema}");
    }
    // one commit creating the table, then one per day, each carrying the day's record
    let commits = history(uri, "");
    assert_eq!(
        commits[0],
        ("WRITE".to_string(), String::new()),
        "{commits:?}"
    );
    let mut written: Vec<String> = commits[1..].iter().map(|(_, d)| d.clone()).collect();
    written.sort();
    assert_eq!(written, days(), "{commits:?}");

    // rerun: everything is current, from the log alone (no file of our own beside the table)
    let again = ok(&backfill(data, &table, &["--format", "delta"]));
    assert!(again.contains("8 skipped"), "{again}");
    assert_eq!(history(uri, "").len(), 9, "a skip commits nothing");
    let dry = backfill(
        data,
        &table,
        &["--format", "delta", "--dry-run", "--min-score", "0.85"],
    );
    let plan = String::from_utf8_lossy(&ok_output(&dry).stdout).into_owned();
    assert_eq!(plan.matches("stale (config changed)").count(), 8, "{plan}");
    assert_eq!(history(uri, "").len(), 9, "a dry run commits nothing");

    // one day rebuilt with another min_score: that day equals the Parquet backfill's with it,
    // the other days keep their files
    let before = data_files(&table);
    let d = day(4);
    let rebuilt = backfill_days_cmd(
        bin(),
        data.to_str().unwrap(),
        uri,
        (&d, &d),
        &["--format", "delta", "--min-score", "0.85"],
    )
    .output()
    .unwrap();
    assert_eq!(built(&ok(&rebuilt)), 1);
    let strict = parquet_backfill(data, &["--min-score", "0.85"]);
    assert!(
        strict[&d]
            .iter()
            .zip(&parquet[&d])
            .any(|(a, b)| a.n_neighbours != b.n_neighbours),
        "min_score changes the day"
    );
    let (rows, _) = export_days(uri, "", &data.join("read-2"));
    let mut expected = parquet.clone();
    expected.insert(d.clone(), strict[&d].clone());
    assert_days_equal(&rows, &expected);
    let after = data_files(&table);
    let kept: Vec<&String> = before.iter().filter(|f| after.contains(f)).collect();
    assert_eq!(
        kept.len(),
        before.len(),
        "the old build's file stays for older versions"
    );
    assert_eq!(
        after
            .iter()
            .filter(|f| f.starts_with(&format!("dt={d}/")))
            .count(),
        2
    );
    let commits = history(uri, "");
    assert_eq!(commits.last().unwrap().1, d, "{commits:?}");
    assert_eq!(commits.len(), 10);
    // every version a reader could open (before the vacuum below removes the old files)
    let counts = days()
        .iter()
        .map(|d| (d.clone(), vec![parquet[d].len(), strict[d].len()]))
        .collect();
    assert!(check_versions(uri, "", &counts) == 10);

    // --force rebuilds every day from the defaults; the vacuum with no retention leaves only
    // the files of the current version
    let forced = ok(&backfill(
        data,
        &table,
        &[
            "--format",
            "delta",
            "--force",
            "--delta-retention-hours",
            "0",
        ],
    ));
    assert_eq!(built(&forced), 8, "{forced}");
    assert!(forced.contains("vacuum: deleted"), "{forced}");
    assert_eq!(data_files(&table).len(), 8, "{:?}", data_files(&table));
    let (rows, _) = export_days(uri, "", &data.join("read-3"));
    assert_days_equal(&rows, &parquet);
}

fn ok_output(out: &Output) -> &Output {
    assert!(out.status.success(), "{}", stderr(out));
    out
}

#[test]
fn readers_see_each_day_once_during_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let parquet = parquet_backfill(data, &[]);
    let strict = parquet_backfill(data, &["--min-score", "0.85"]);
    let table = data.join("features");
    let uri = table.to_str().unwrap().to_string();
    ok(&backfill(data, &table, &["--format", "delta"]));
    let counts: BTreeMap<String, Vec<usize>> = days()
        .iter()
        .map(|d| (d.clone(), vec![parquet[d].len(), strict[d].len()]))
        .collect();
    // a reader opening the latest snapshot in a loop while the days are rebuilt, alternately
    // with two min_scores: every snapshot has every day, once, with one build's rows
    let stop = data.join("stop");
    let reader = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(format!(
            "{OPEN_PY}
import os, collections
counts = json.loads(sys.argv[3])
seen, versions = 0, set()
while True:
    last = os.path.exists(sys.argv[4])
    t = table()
    versions.add(t.version())
    a = t.to_pyarrow_table()
    keys = list(zip(a['dt'].to_pylist(), a['query'].to_pylist(), a['product_id'].to_pylist()))
    dups = [k for k, n in collections.Counter(keys).items() if n > 1]
    assert not dups, f'version {{t.version()}}: {{len(dups)}} keys twice'
    per_day = collections.Counter(str(k[0]) for k in keys)
    assert sorted(per_day) == sorted(counts), f'version {{t.version()}}: days {{sorted(per_day)}}'
    for d, n in per_day.items():
        assert n in counts[d], f'version {{t.version()}}: {{d}} has {{n}} rows'
    seen += 1
    if last:
        break
print(seen, len(versions))
{EXIT_PY}"
        ))
        .args([
            &uri,
            "",
            &serde_json::to_string(&counts).unwrap(),
            stop.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for round in 0..4 {
        let min_score = if round % 2 == 0 { "0.85" } else { "0.1" };
        let log = ok(&backfill(
            data,
            &table,
            &[
                "--format",
                "delta",
                "--min-score",
                min_score,
                "--parallel",
                "2",
            ],
        ));
        assert_eq!(built(&log), 8, "{log}");
    }
    std::fs::write(&stop, "").unwrap();
    let out = reader.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "reader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (snapshots, versions) = text.trim().split_once(' ').unwrap();
    let (snapshots, versions): (usize, usize) =
        (snapshots.parse().unwrap(), versions.parse().unwrap());
    assert!(
        versions >= 2,
        "the reader saw {versions} versions in {snapshots} snapshots"
    );
}

#[test]
fn killed_at_random_points_no_version_shows_a_partial_or_doubled_day_and_the_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let parquet = parquet_backfill(data, &[]);
    let table = data.join("features");
    let uri = table.to_str().unwrap().to_string();
    let started = Instant::now();
    ok(&backfill(data, &data.join("timed"), &["--format", "delta"]));
    let clean_time = started.elapsed();

    let mut seed: u64 = 0x2545f4914f6cdd1d;
    let (mut kills, mut round) = (0, 0);
    while kills < 12 {
        assert!(
            round < 60,
            "only {kills} of {round} runs were still going when killed"
        );
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = Duration::from_micros(seed % (clean_time.as_micros() as u64 + 1));
        let mut args = vec![
            "--format",
            "delta",
            "--parallel",
            if round % 2 == 0 { "1" } else { "2" },
        ];
        if round % 3 != 2 {
            args.push("--force");
        }
        let mut child = backfill_cmd(bin(), data.to_str().unwrap(), &uri, &args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        round += 1;
    }
    let log = ok(&backfill(data, &table, &["--format", "delta"]));
    let (rows, _) = export_days(&uri, "", &data.join("read"));
    assert_days_equal(&rows, &parquet);
    let counts = days()
        .iter()
        .map(|d| (d.clone(), vec![parquet[d].len()]))
        .collect();
    let versions = check_versions(&uri, "", &counts);
    assert!(versions > 1, "{log}");
    // a rerun after that has nothing to do
    assert!(ok(&backfill(data, &table, &["--format", "delta"])).contains("8 skipped"));
}

#[test]
fn two_backfills_at_once_commit_each_day_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let parquet = parquet_backfill(data, &[]);
    let table = data.join("features");
    let uri = table.to_str().unwrap().to_string();
    let spawn = |parallel: &str| {
        backfill_cmd(
            bin(),
            data.to_str().unwrap(),
            &uri,
            &["--format", "delta", "--parallel", parallel],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (spawn("2"), spawn("1"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        built(&ok(&a)) + built(&ok(&b)),
        8,
        "every day built exactly once"
    );
    let commits = history(&uri, "");
    let days_committed = commits.iter().filter(|(_, d)| !d.is_empty()).count();
    assert_eq!(days_committed, 8, "{commits:?}");
    let (rows, _) = export_days(&uri, "", &data.join("read"));
    assert_days_equal(&rows, &parquet);
}

#[test]
fn two_backfills_at_once_on_s3_equal_the_local_one_and_rerun_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let parquet = parquet_backfill(data, &[]);
    let moto = start_moto();
    moto.upload_daily_inputs(data);
    let uri = "s3://q2q/features/";
    let secret = "sekrit-delta-51c2";
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // stderr goes to files: a debug log fills a pipe that nobody reads while the other process is
    // waited for, and the writer then blocks holding a partition lock the other one waits on
    let spawn = |name: &str, parallel: &str, extra: &[&str]| {
        let mut cmd = moto.q2q();
        cmd.env("AWS_SECRET_ACCESS_KEY", secret)
            .env("RUST_LOG", "debug");
        let mut args = vec!["--format", "delta", "--parallel", parallel];
        args.extend_from_slice(extra);
        let log = logs.join(format!("{name}.log"));
        let child = backfill_cmd(cmd, "s3://q2q/in", uri, &args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    };
    let finish = |(mut child, log): (std::process::Child, std::path::PathBuf)| {
        let status = child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "{text}");
        assert!(!text.contains(secret), "credentials in the logs");
        text
    };
    // two backfills at once: each day is committed once (a put-if-absent of the log entry,
    // If-None-Match on S3), and the rows are the Parquet backfill's
    let (a, b) = (spawn("a", "2", &[]), spawn("b", "1", &[]));
    let (a, b) = (finish(a), finish(b));
    assert_eq!(built(&a) + built(&b), 8, "every day built exactly once");
    let commits = history(uri, &moto.endpoint);
    let days_committed = commits.iter().filter(|(_, d)| !d.is_empty()).count();
    assert_eq!(days_committed, 8, "{commits:?}");
    let (rows, _) = export_days(uri, &moto.endpoint, &data.join("read-1"));
    assert_days_equal(&rows, &parquet);
    assert!(finish(spawn("again", "2", &[])).contains("8 skipped"));
    assert_eq!(built(&finish(spawn("forced", "2", &["--force"]))), 8);
    let (rows, _) = export_days(uri, &moto.endpoint, &data.join("read-2"));
    assert_days_equal(&rows, &parquet);
    let counts = days()
        .iter()
        .map(|d| (d.clone(), vec![parquet[d].len()]))
        .collect();
    check_versions(uri, &moto.endpoint, &counts);
    let log_keys = moto.keys("features/_delta_log/");
    assert!(
        log_keys.iter().any(|k| k.ends_with(".json")),
        "{log_keys:?}"
    );
}
