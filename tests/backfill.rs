//! `q2q-prior backfill`: daily partitions equal to the feature job on each day's window, reruns
//! that skip/rebuild for the right reasons, kill -9 at random points, two runs at once, bad input,
//! readers (pyarrow as a Hive-partitioned dataset), and the same backfill on a real S3-compatible
//! server (moto_server on 127.0.0.1).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::moto::start_moto;
use common::*;
use q2q_prior::reference::FeatureRow;
use serde_json::Value;

use common::daily::{DAYS, FROM, TO, WINDOW, day, walk, write_inputs};

fn backfill_cmd(data: &Path, out: &str, extra: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.args([
        "backfill",
        "--engagement",
        data.join("eng").to_str().unwrap(),
        "--neighbours",
        data.join("nb").to_str().unwrap(),
        "--output",
        out,
        "--from",
        FROM,
        "--to",
        TO,
        "--window-days",
        WINDOW,
    ]);
    cmd.args(extra);
    cmd
}

fn backfill(data: &Path, out: &Path, extra: &[&str]) -> Output {
    backfill_cmd(data, out.to_str().unwrap(), extra)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    stderr(out)
}

fn days_built() -> Vec<String> {
    (1..=DAYS).map(day).collect() // 01-02 .. 01-09 (01-09's window ends on the last input day)
}

fn manifest(partition: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(partition.join("_manifest.json")).unwrap()).unwrap()
}

/// The partition's data file, as its manifest names it.
fn data_file(partition: &Path) -> PathBuf {
    let m = manifest(partition);
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{m}");
    let name = files[0]["path"].as_str().unwrap();
    assert!(
        name.starts_with("part-") && name.ends_with(".parquet"),
        "{name}"
    );
    partition.join(name)
}

fn sha256(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// A clean backfill of the whole range, read back per day.
fn clean_run(data: &Path) -> (PathBuf, BTreeMap<String, Vec<FeatureRow>>) {
    let out = data.join("clean");
    ok(&backfill(data, &out, &[]));
    let rows = days_built()
        .into_iter()
        .map(|d| {
            let rows = read_features(&data_file(&out.join(format!("dt={d}"))));
            (d, rows)
        })
        .collect();
    (out, rows)
}

/// Every manifest lists files that are there, with their sizes and checksums, and the clean run's
/// rows (a reader that follows manifests never misses a file); every partition with `_SUCCESS`
/// holds exactly the files its manifest lists (a reader that lists the folder never sees two
/// builds). Returns how many partitions have `_SUCCESS`.
fn check_published(
    out: &Path,
    clean: &BTreeMap<String, Vec<FeatureRow>>,
    verify_rows: bool,
) -> usize {
    let mut complete = 0;
    let Ok(entries) = std::fs::read_dir(out) else {
        return 0;
    };
    for entry in entries {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let Some(d) = name.strip_prefix("dt=") else {
            continue;
        };
        let published = dir.join("_SUCCESS").exists();
        if !dir.join("_manifest.json").exists() {
            assert!(!published, "{name}: _SUCCESS without a manifest");
            continue;
        }
        let m = manifest(&dir);
        let files = m["files"].as_array().unwrap();
        if published {
            complete += 1;
            let visible: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
                .filter(|n| !n.starts_with('_') && !n.starts_with('.'))
                .collect();
            assert_eq!(
                visible.len(),
                files.len(),
                "{name}: {visible:?} vs {files:?}"
            );
        }
        for f in files {
            let path = dir.join(f["path"].as_str().unwrap());
            let meta = std::fs::metadata(&path).unwrap_or_else(|_| {
                panic!(
                    "{name}: the manifest lists {} but it is not there",
                    path.display()
                )
            });
            assert_eq!(meta.len(), f["size"].as_u64().unwrap(), "{name} size");
            assert_eq!(
                sha256(&path),
                f["sha256"].as_str().unwrap(),
                "{name} checksum"
            );
            if verify_rows {
                let rows = read_features(&path);
                assert_eq!(rows.len() as u64, m["row_count"].as_u64().unwrap());
                assert_same_features(&rows, &clean[d]);
            }
        }
    }
    complete
}

#[test]
fn partitions_equal_the_job_on_each_window_and_read_as_a_hive_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let out = data.join("features");
    let log = ok(&backfill(data, &out, &["--parallel", "2"]));
    assert!(log.contains("8 built"), "{log}");

    for (n, d) in days_built().iter().enumerate() {
        let partition = out.join(format!("dt={d}"));
        // the job on the window's days copied into one folder, with the snapshot of the day
        let window = data.join(format!("window-{d}"));
        std::fs::create_dir_all(&window).unwrap();
        let last = n + 1; // index of day d
        let first = last.saturating_sub(3);
        for i in first..last.min(DAYS) {
            std::fs::copy(
                data.join(format!("eng/dt={}/part-0.csv", day(i))),
                window.join(format!("{}.csv", day(i))),
            )
            .unwrap();
        }
        let snapshot = if last >= 4 { day(4) } else { day(0) };
        let expected = data.join(format!("expected-{d}.parquet"));
        ok(&run(&[
            "run",
            "--engagement",
            window.to_str().unwrap(),
            "--neighbours",
            data.join(format!("nb/dt={snapshot}")).to_str().unwrap(),
            "--on-duplicate",
            "sum",
            "--output",
            expected.to_str().unwrap(),
        ]));
        let rows = read_features(&data_file(&partition));
        assert!(!rows.is_empty());
        assert_same_features(&rows, &read_features(&expected));

        let m = manifest(&partition);
        assert_eq!(m["partition"], format!("dt={d}"));
        assert_eq!(m["row_count"].as_u64().unwrap(), rows.len() as u64);
        assert_eq!(
            m["engagement_days"].as_u64().unwrap(),
            (last.min(DAYS) - first) as u64
        );
        assert!(
            m["neighbours"]
                .as_str()
                .unwrap()
                .contains(&format!("dt={snapshot}"))
        );
        let file = &m["files"][0];
        assert_eq!(
            file["sha256"].as_str().unwrap(),
            sha256(&data_file(&partition))
        );
        assert!(partition.join("_SUCCESS").exists());
    }
    // 2026-01-01 has no engagement before it: not asked for here, and no folder was made
    assert!(!out.join("dt=2026-01-01").exists());

    // pyarrow reads the output as a Hive-partitioned dataset: the engine's rows, the timestamps
    let summary = python(
        "import sys, pyarrow.dataset as ds, pyarrow.compute as pc
t = ds.dataset(sys.argv[1], format='parquet', partitioning='hive').to_table()
print(t.num_rows)
print(','.join(sorted(set(t['dt'].to_pylist()))))
bad = [r for r in t.select(['dt','event_timestamp']).to_pylist()
       if r['event_timestamp'].strftime('%Y-%m-%d %H:%M:%S %Z') != r['dt'] + ' 00:00:00 UTC']
print(len(bad))
print(len(set(t['created_timestamp'].to_pylist())))",
        &[out.to_str().unwrap()],
    );
    let lines: Vec<&str> = summary.lines().collect();
    let total: usize = days_built()
        .iter()
        .map(|d| read_features(&data_file(&out.join(format!("dt={d}")))).len())
        .sum();
    assert_eq!(lines[0], total.to_string());
    assert_eq!(lines[1], days_built().join(","));
    assert_eq!(lines[2], "0", "event_timestamp is the day at 00:00 UTC");
    assert_eq!(lines[3], "1", "one created_timestamp per run");
}

#[test]
fn reruns_skip_what_is_current_and_rebuild_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let out = data.join("features");
    ok(&backfill(data, &out, &[]));
    let before = manifest(&out.join("dt=2026-01-05"));

    let log = ok(&backfill(data, &out, &[]));
    assert!(
        log.contains("0 built") && log.contains("8 skipped"),
        "{log}"
    );
    assert_eq!(manifest(&out.join("dt=2026-01-05")), before, "untouched");

    let plan = |extra: &[&str]| -> BTreeMap<String, (String, String)> {
        let mut args = vec!["--dry-run"];
        args.extend(extra);
        let out = backfill(data, &out, &args);
        let text = String::from_utf8(out.stdout.clone()).unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        text.lines()
            .skip(1)
            .map(|l| {
                let cols: Vec<&str> = l.split('\t').collect();
                (
                    cols[0].to_string(),
                    (cols[1].to_string(), cols[2].to_string()),
                )
            })
            .collect()
    };
    let all_skip = plan(&[]);
    assert_eq!(all_skip.len(), 8);
    assert!(
        all_skip
            .values()
            .all(|(a, r)| a == "skip" && r == "up to date")
    );
    assert!(
        plan(&["--force"])
            .values()
            .all(|(a, r)| a == "build" && r == "forced")
    );
    assert!(
        plan(&["--gamma", "50"])
            .values()
            .all(|(a, r)| a == "build" && r == "stale (config changed)")
    );
    // execution settings do not change the rows: still current
    assert!(
        plan(&["--plan", "sql", "--target-partitions", "1"])
            .values()
            .all(|(a, _)| a == "skip")
    );

    // a rewritten input day makes exactly the days whose window holds it stale
    let changed = data.join("eng/dt=2026-01-04/part-0.csv");
    let mut text = std::fs::read_to_string(&changed).unwrap();
    text.push_str("q7,p99,40,3,1,1\n");
    std::fs::write(&changed, text).unwrap();
    let after = plan(&[]);
    for (partition, (action, reason)) in &after {
        let stale =
            ["dt=2026-01-05", "dt=2026-01-06", "dt=2026-01-07"].contains(&partition.as_str());
        if stale {
            assert_eq!(
                (action.as_str(), reason.as_str()),
                ("build", "stale (inputs changed)")
            );
        } else {
            assert_eq!(action, "skip", "{partition}");
        }
    }
    // damage: a data file gone; a half-built partition: no _SUCCESS and a staging leftover
    let gone = data_file(&out.join("dt=2026-01-02"));
    std::fs::remove_file(&gone).unwrap();
    std::fs::remove_file(out.join("dt=2026-01-09/_SUCCESS")).unwrap();
    // what a killed run leaves: a staging object, the store's temp file of an unfinished write,
    // a data file of a build that did not publish
    let leftovers = [
        "_q2q_staging.1.2.part-0.parquet.partial",
        "_q2q_staging.1.3.part-0.parquet.partial#1",
        "part-0123456789abcdef.parquet",
    ]
    .map(|name| out.join("dt=2026-01-09").join(name));
    for leftover in &leftovers {
        std::fs::write(leftover, b"half").unwrap();
    }
    let after = plan(&[]);
    assert_eq!(
        after["dt=2026-01-02"].1,
        format!(
            "damaged ({} is missing)",
            gone.file_name().unwrap().to_str().unwrap()
        )
    );
    assert_eq!(after["dt=2026-01-09"].1, "incomplete (no _SUCCESS)");

    let log = ok(&backfill(data, &out, &[]));
    assert!(
        log.contains("5 built") && log.contains("3 skipped"),
        "{log}"
    );
    for leftover in &leftovers {
        assert!(!leftover.exists(), "{} is cleaned", leftover.display());
    }
    assert!(plan(&[]).values().all(|(a, _)| a == "skip"));
    let rebuilt = manifest(&out.join("dt=2026-01-05"));
    assert_ne!(rebuilt["input_fingerprint"], before["input_fingerprint"]);
    assert!(
        read_features(&data_file(&out.join("dt=2026-01-05")))
            .iter()
            .any(|r| r.product_id == "p99")
    );

    // --force rebuilds everything, to the same rows
    let log = ok(&backfill(data, &out, &["--force"]));
    assert!(log.contains("8 built"), "{log}");
}

#[test]
fn killed_at_random_points_the_next_run_finishes_and_equals_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let started = Instant::now();
    let (_, clean) = clean_run(data);
    let clean_time = started.elapsed();
    let out = data.join("features");

    // deterministic pseudo-random kill times over the length of a run; two runs in three rebuild
    // published partitions (--force), the riskiest moment to die; the others resume
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut kills = 0;
    // until 24 runs were killed while still going (a run that finished first does not count)
    let mut round = 0;
    while kills < 24 {
        assert!(
            round < 120,
            "only {kills} of {round} runs were still going when killed"
        );
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = Duration::from_micros(seed % (clean_time.as_micros() as u64 + 1));
        let mut args = vec!["--parallel", if round % 3 == 0 { "1" } else { "2" }];
        if round % 3 != 2 {
            args.push("--force");
        }
        let mut child = backfill_cmd(data, out.to_str().unwrap(), &args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        // never a partition marked complete that is not
        check_published(&out, &clean, round % 4 == 0);
        round += 1;
    }

    let log = ok(&backfill(data, &out, &[]));
    assert_eq!(check_published(&out, &clean, true), 8, "{log}");
    let leftovers: Vec<_> = walk(&out)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            // staging objects, the local store's temp files (`name#1`) in partitions, locks
            // (the store's temp files of lock puts go once a minute old: not checked here)
            name.starts_with("_q2q_staging.")
                || (name.contains('#') && !p.to_str().unwrap().contains("_q2q/locks"))
                || name.ends_with(".lock")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A run killed after publishing a partition, before releasing its lock, leaves the lock of an
/// up-to-date partition, which no build takes over: the next run removes such locks when their
/// holder is gone, and leaves a live holder's alone.
#[test]
fn a_rerun_removes_locks_that_dead_runs_left_on_published_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let out = data.join("features");
    ok(&backfill(data, &out, &[]));
    let locks = out.join("_q2q/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let read = |path: &str| std::fs::read_to_string(path).unwrap().trim().to_string();
    let owner = |pid: u32, start: u64| {
        serde_json::json!({
            "run_id": format!("run-{pid}"),
            "host": read("/proc/sys/kernel/hostname"),
            "boot_id": read("/proc/sys/kernel/random/boot_id"),
            "pid_ns": std::fs::read_link("/proc/self/ns/pid").unwrap().to_string_lossy(),
            "pid": pid,
            "start_ticks": start,
            "timeout_secs": 600,
            "renewed_at": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        })
        .to_string()
    };
    let days = days_built();
    let (dead, live) = (&days[0], &days[1]);
    let dead_lock = locks.join(format!("dt={dead}.lock"));
    let live_lock = locks.join(format!("dt={live}.lock"));
    std::fs::write(&dead_lock, owner(u32::MAX - 1, 1)).unwrap();
    let me = std::process::id();
    let start = q2q_prior::process::start_ticks(me).unwrap();
    std::fs::write(&live_lock, owner(me, start)).unwrap();
    let log = ok(&backfill(data, &out, &[]));
    assert!(log.contains("0 built"), "everything was up to date: {log}");
    assert!(!dead_lock.exists(), "the dead run's lock is removed");
    assert!(live_lock.exists(), "a live holder's lock stays");
}

#[test]
fn two_backfills_at_once_build_each_partition_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let (_, clean) = clean_run(data);
    let out = data.join("features");
    let spawn = |parallel: &str| {
        backfill_cmd(data, out.to_str().unwrap(), &["--parallel", parallel])
            .env("RUST_LOG", "q2q_prior::backfill=info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("2"), spawn("1"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    // "at once": each run started before the other ended (their own log lines' timestamps)
    let span = |o: &Output| -> (String, String) {
        let log = stderr(o);
        let at = |what: &str| -> String {
            let line = log
                .lines()
                .map(strip_ansi)
                .find(|l| l.contains("backfill: run ") && l.contains(what))
                .unwrap_or_else(|| panic!("no '{what}' line in {log}"));
            line.split_whitespace().next().unwrap().to_string()
        };
        (at("started"), at("ended"))
    };
    let ((a_start, a_end), (b_start, b_end)) = (span(&a), span(&b));
    assert!(
        a_start < b_end && b_start < a_end,
        "the runs did not overlap: {a_start}..{a_end} and {b_start}..{b_end}"
    );
    let built = |o: &Output| -> usize {
        let log = ok(o);
        log.lines()
            .find_map(|l| l.strip_prefix("q2q-prior backfill: "))
            .and_then(|l| l.split(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        built(&a) + built(&b),
        8,
        "every partition built exactly once"
    );
    assert_eq!(check_published(&out, &clean, true), 8);
}

#[test]
fn bad_input_fails_its_partitions_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    write(
        &data.join("eng/dt=2026-01-06"),
        "part-1.csv",
        "query,product_id,impressions,clicks,adds,purchases\nq1,p1,-5,0,0,0\n",
    );
    let out = data.join("features");
    let result = backfill(data, &out, &[]);
    assert_eq!(result.status.code(), Some(1));
    let log = stderr(&result);
    assert!(log.contains("5 built") && log.contains("3 failed"), "{log}");
    for d in ["2026-01-07", "2026-01-08", "2026-01-09"] {
        let line = log
            .lines()
            .find(|l| l.contains("FAILED") && l.contains(d))
            .expect(d);
        assert!(
            line.contains("engagement") && line.contains("impressions"),
            "{line}"
        );
        let partition = out.join(format!("dt={d}"));
        let files: Vec<_> = std::fs::read_dir(&partition)
            .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(files.is_empty(), "{d}: {files:?}");
    }
    assert!(log.contains("error: 3 partition(s) failed"), "{log}");

    // fixed, the days build; broken again, their rebuild fails and the previous build stays
    // published, untouched
    let bad = data.join("eng/dt=2026-01-06/part-1.csv");
    let bad_text = std::fs::read(&bad).unwrap();
    std::fs::remove_file(&bad).unwrap();
    let log = ok(&backfill(data, &out, &[]));
    assert!(
        log.contains("3 built") && log.contains("5 skipped"),
        "{log}"
    );
    let published = |d: &str| {
        let partition = out.join(format!("dt={d}"));
        let file = data_file(&partition);
        (
            std::fs::read(partition.join("_manifest.json")).unwrap(),
            sha256(&file),
            partition.join("_SUCCESS").exists(),
        )
    };
    let before: Vec<_> = ["2026-01-07", "2026-01-08", "2026-01-09"]
        .map(published)
        .into();
    std::fs::write(&bad, bad_text).unwrap();
    let result = backfill(data, &out, &[]);
    assert_eq!(result.status.code(), Some(1));
    let log = stderr(&result);
    assert!(log.contains("0 built") && log.contains("3 failed"), "{log}");
    let after: Vec<_> = ["2026-01-07", "2026-01-08", "2026-01-09"]
        .map(published)
        .into();
    assert_eq!(before, after);
    assert!(after.iter().all(|(_, _, success)| *success));
    assert_eq!(check_published(&out, &BTreeMap::new(), false), 8);

    // mistakes in the request: exit 2, nothing written
    let nowhere = data.join("nowhere");
    let (eng, nb) = (data.join("eng"), data.join("nb"));
    let (eng, nb, out) = (
        eng.to_str().unwrap(),
        nb.to_str().unwrap(),
        nowhere.to_str().unwrap(),
    );
    let file = data.join("eng/dt=2026-01-01/part-0.csv");
    let file_output = format!("{out}/features.parquet");
    for (args, says) in [
        (
            [
                "--engagement",
                eng,
                "--output",
                &file_output,
                "--from",
                FROM,
                "--to",
                TO,
            ],
            "names a file",
        ),
        (
            [
                "--engagement",
                eng,
                "--output",
                out,
                "--from",
                FROM,
                "--to",
                "2026-01-01",
            ],
            "is after --to",
        ),
        (
            [
                "--engagement",
                file.to_str().unwrap(),
                "--output",
                out,
                "--from",
                FROM,
                "--to",
                TO,
            ],
            "=YYYY-MM-DD/",
        ),
    ] {
        let result = bin()
            .args(["backfill", "--neighbours", nb])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            result.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&result)
        );
        assert!(stderr(&result).contains(says), "{}", stderr(&result));
        assert!(!nowhere.exists());
    }
}

#[test]
fn the_same_backfill_on_s3_gives_the_same_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_inputs(data);
    let (_, clean) = clean_run(data);
    let moto = start_moto();
    moto.upload_daily_inputs(data);
    let secret = "sekrit-backfill-7f3a9c";
    let run_s3 = |extra: &[&str]| {
        let mut cmd = moto.q2q();
        cmd.env("AWS_SECRET_ACCESS_KEY", secret)
            .env("RUST_LOG", "debug")
            .args([
                "backfill",
                "--engagement",
                "s3://q2q/in/eng",
                "--neighbours",
                "s3://q2q/in/nb/",
                "--output",
                "s3://q2q/features/",
                "--from",
                FROM,
                "--to",
                TO,
                "--window-days",
                WINDOW,
                "--parallel",
                "2",
            ])
            .args(extra);
        cmd.output().unwrap()
    };
    let first = run_s3(&[]);
    let log = ok(&first);
    assert!(log.contains("8 built"), "{log}");
    let again = run_s3(&[]);
    assert!(ok(&again).contains("8 skipped"));
    // rebuilt: the manifests are switched by conditional updates (If-Match), the previous
    // builds' files deleted
    let forced = run_s3(&["--force"]);
    assert!(ok(&forced).contains("8 built"), "{}", stderr(&forced));
    let files = moto.keys("features/dt=");
    let parquet: Vec<_> = files.iter().filter(|k| k.ends_with(".parquet")).collect();
    assert_eq!(parquet.len(), 8, "{files:?}");
    for o in [&first, &again, &forced] {
        assert!(!String::from_utf8_lossy(&o.stdout).contains(secret));
        assert!(!stderr(o).contains(secret), "credentials in the logs");
    }

    // download the dataset and compare it partition by partition with the local clean run
    let local = data.join("from-s3");
    moto.boto(&format!(
        "import os
for o in s3.list_objects_v2(Bucket='q2q', Prefix='features/').get('Contents', []):
    path = os.path.join({:?}, o['Key'][len('features/'):])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s3.download_file('q2q', o['Key'], path)",
        local.to_str().unwrap()
    ));
    assert_eq!(check_published(&local, &clean, true), 8);
    for d in days_built() {
        let text = std::fs::read_to_string(local.join(format!("dt={d}/_manifest.json"))).unwrap();
        assert!(!text.contains(secret));
    }
    let locks: Vec<String> = moto.keys("features/_q2q/locks/");
    assert!(locks.iter().all(|k| !k.ends_with(".lock")), "{locks:?}");

    // an unreachable store: retried, then a clear error and a non-zero exit
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = write(
        data,
        "retry.toml",
        "[execution]\nobject_store_retries = 2\nobject_store_retry_timeout_secs = 5\n",
    );
    let result = moto
        .q2q()
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .args([
            "backfill",
            "--config",
            config.to_str().unwrap(),
            "--engagement",
            "s3://q2q/in/eng",
            "--neighbours",
            "s3://q2q/in/nb/",
            "--output",
            "s3://q2q/elsewhere/",
            "--from",
            FROM,
            "--to",
            TO,
        ])
        .output()
        .unwrap();
    assert!(!result.status.success());
    let log = stderr(&result);
    assert!(
        log.contains("retries") && log.contains("127.0.0.1"),
        "{log}"
    );
}

#[test]
fn the_daily_fixture_backfills_and_its_first_day_is_the_tiny_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("daily");
    let config = root().join("fixtures/daily/job.toml");
    let log = ok(&run(&[
        "backfill",
        "--config",
        config.to_str().unwrap(),
        "--from",
        "2026-01-02",
        "--to",
        "2026-01-05",
        "--output",
        out.to_str().unwrap(),
    ]));
    assert!(log.contains("4 built"), "{log}");
    // 2026-01-02 reads one day (the tiny fixture's engagement) and the 2026-01-01 snapshot (its
    // neighbour lists), with the same min_score: the hand-worked table
    assert_same_features(
        &read_features(&data_file(&out.join("dt=2026-01-02"))),
        &read_features(&root().join("fixtures/tiny/expected.csv")),
    );
}

/// The partition lock against a real S3 server: create-only puts, renewals by conditional
/// update (If-Match), a holder that notices it was taken over and does not write over the new
/// holder, and a lock left by a dead process taken over.
#[test]
fn partition_locks_on_s3_renew_and_notice_a_takeover() {
    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
    use q2q_prior::backfill::lock::{Owner, acquire};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    let moto = start_moto();
    moto.boto("s3.create_bucket(Bucket='q2q')");
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(&moto.endpoint)
            .with_allow_http(true)
            .with_bucket_name("q2q")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap(),
    );
    let path = ObjectPath::from("features/_q2q/locks/dt=2026-01-02.lock");
    let read = |store: Arc<dyn ObjectStore>, path: ObjectPath| async move {
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        serde_json::from_slice::<Owner>(&bytes).unwrap()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let timeout = Duration::from_secs(2); // renewed every second
        let lock = acquire(
            Arc::clone(&store),
            path.clone(),
            "run-a",
            timeout,
            &cancel,
            |_| {},
        )
        .await
        .unwrap();
        let first = read(Arc::clone(&store), path.clone()).await;
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let renewed = read(Arc::clone(&store), path.clone()).await;
        assert_eq!(renewed.run_id, "run-a");
        assert!(
            renewed.renewed_at >= first.renewed_at + 2,
            "{first:?} {renewed:?}"
        );
        assert!(lock.still_held() && lock.confirm().await.unwrap());

        // a second run waits while it is held
        let waiting = {
            let (store, path, cancel) = (Arc::clone(&store), path.clone(), cancel.clone());
            tokio::spawn(async move {
                acquire(
                    store,
                    path,
                    "run-b",
                    Duration::from_secs(600),
                    &cancel,
                    |_| {},
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!waiting.is_finished());

        // run-a stalled and run-c took the lock over: run-a notices, and neither renews over
        // run-c's lock nor deletes it on release
        let taken = Owner::me("run-c", Duration::from_secs(600));
        store
            .put(&path, PutPayload::from(serde_json::to_vec(&taken).unwrap()))
            .await
            .unwrap();
        assert!(!lock.confirm().await.unwrap());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!lock.still_held());
        lock.release().await;
        assert_eq!(read(Arc::clone(&store), path.clone()).await, taken);

        // run-c's process is gone (a pid that is not running on this machine): run-b takes over
        let dead = Owner {
            pid: u32::MAX - 1,
            ..taken
        };
        store
            .put(&path, PutPayload::from(serde_json::to_vec(&dead).unwrap()))
            .await
            .unwrap();
        let b = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("run-b takes the dead holder's lock over")
            .unwrap()
            .unwrap();
        assert_eq!(read(Arc::clone(&store), path.clone()).await.run_id, "run-b");
        b.release().await;
        assert!(store.head(&path).await.is_err(), "released");
    });
}

/// `line` without terminal colour codes (tracing colours its timestamps and levels).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
