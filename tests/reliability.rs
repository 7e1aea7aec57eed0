//! Regression tests for defects found by feeding the real binary bad input and faults (issue 17):
//! one test per defect, each failing before its fix. Bad input: exit 2, a message naming the input
//! and column, nothing at the destination, inputs untouched; `validate` agrees with `run`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const NEIGHBOURS: &str = "query,neighbour,score\na,b,0.9\nc,a,0.8\nb,a,0.5\n";

/// Every file below `dir` with its bytes: to show that a command left its inputs untouched.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Writes the rows of `select` (SQL over nothing, or over files named in it) as Parquet.
fn parquet(path: &Path, select: &str) {
    let copy = format!("COPY ({select}) TO '{}'", path.display());
    let out = run(&["sql", "-c", &copy]);
    assert!(out.status.success(), "{copy}: {}", stderr(&out));
}

/// Item 1: an output that equals, contains or lies inside an input is refused before anything
/// is touched (the backfill's cleanup deleted the engagement CSVs of the window).
#[test]
fn outputs_overlapping_an_input_are_refused_and_the_inputs_stay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("D");
    let copy = std::process::Command::new("cp")
        .args(["-r"])
        .arg(root().join("fixtures/daily"))
        .arg(&d)
        .status()
        .unwrap();
    assert!(copy.success());
    let before = snapshot(&d);
    let e = format!("{}/engagement/", d.display());
    let n = format!("{}/neighbours/", d.display());
    let backfill = |output: &str| {
        run(&[
            "backfill",
            "--engagement",
            &e,
            "--neighbours",
            &n,
            "-o",
            output,
            "--window-days",
            "3",
            "--from",
            "2026-01-02",
            "--to",
            "2026-01-05",
        ])
    };
    for (output, relation) in [
        (e.clone(), "is the same place as"),
        (
            format!("{}/engagement/../engagement", d.display()),
            "is the same place as",
        ),
        (
            format!("file://{}/engagement/dt=2026-01-01/", d.display()),
            "lies inside",
        ),
        (d.display().to_string(), "contains"),
    ] {
        let out = backfill(&output);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{output}: {err}");
        assert!(
            err.contains(relation) && err.contains("engagement input"),
            "{err}"
        );
        assert_eq!(snapshot(&d), before, "{output}: the inputs are untouched");
    }
    // through a symlink to the input folder
    std::os::unix::fs::symlink(d.join("engagement"), dir.path().join("link")).unwrap();
    let out = backfill(dir.path().join("link").to_str().unwrap());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(snapshot(&d), before);

    // run: -o equal to an input file, or inside an input folder
    let input = d.join("engagement/dt=2026-01-01/part-0.csv");
    for output in [input.clone(), d.join("engagement/dt=2026-01-01/f.parquet")] {
        let out = run_job(
            input.parent().unwrap().to_str().unwrap(),
            &n,
            output.to_str().unwrap(),
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("engagement input"),
            "{}",
            stderr(&out)
        );
        assert_eq!(snapshot(&d), before, "run replaced an input");
    }
    // beside the inputs is fine
    let out = backfill(dir.path().join("out").to_str().unwrap());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshot(&d), before);
}

/// Item 2: partition values escaped in their folder names (as Spark writes `a:b`) keep their
/// rows, in both plans, in validate's view of the job, and in backfill.
#[test]
fn percent_escaped_partition_values_keep_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (e, n) = (dir.path().join("e"), dir.path().join("n"));
    let engagement = "query,product_id,impressions,clicks,adds,purchases\n\
        a,P1,100,10,2,1\nb,P1,50,5,1,0\nb,P2,20,2,0,0\n";
    for market in ["US", "a%3Ab", "x%2Fy%20z"] {
        write(
            &e.join(format!("market={market}")),
            "part-0.csv",
            engagement,
        );
        write(
            &n.join(format!("market={market}")),
            "part-0.csv",
            NEIGHBOURS,
        );
    }
    for plan in ["merge", "sql"] {
        let out = dir.path().join(format!("{plan}.csv"));
        let result = run_job(
            e.to_str().unwrap(),
            n.to_str().unwrap(),
            out.to_str().unwrap(),
            &["--plan", plan],
        );
        assert!(result.status.success(), "{}", stderr(&result));
        let text = std::fs::read_to_string(&out).unwrap();
        let markets: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.rsplit(',').next().unwrap())
            .collect();
        for market in ["US", "a:b", "x/y z"] {
            assert_eq!(
                markets.iter().filter(|m| **m == market).count(),
                5,
                "{plan}: rows of market {market}:\n{text}"
            );
        }
    }
    // validate counts the usable neighbours per partition the same way
    let report = validate_job(e.to_str().unwrap(), n.to_str().unwrap(), &[]);
    let text = String::from_utf8_lossy(&report.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("neighbours_without_history"))
        .unwrap();
    assert!(line.contains("0 of 9"), "{text}");

    // backfill: a day whose engagement sits in an escaped folder
    let daily = dir.path().join("daily");
    write(
        &daily.join("engagement/dt=2026-01-01/market=US"),
        "part-0.csv",
        engagement,
    );
    write(
        &daily.join("engagement/dt=2026-01-01/market=a%3Ab"),
        "part-0.csv",
        &engagement.replace("a,", "x,").replace("b,", "y,"),
    );
    write(
        &daily.join("neighbours"),
        "part-0.csv",
        &format!("{NEIGHBOURS}x,y,0.9\n"),
    );
    let out = dir.path().join("features");
    let result = run(&[
        "backfill",
        "--engagement",
        daily.join("engagement").to_str().unwrap(),
        "--neighbours",
        daily.join("neighbours/part-0.csv").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--window-days",
        "1",
        "--from",
        "2026-01-02",
        "--to",
        "2026-01-02",
        "--format",
        "csv",
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(
        stderr(&result).contains("1 built (9 rows)"),
        "both folders' rows: {}",
        stderr(&result)
    );
}

/// Item 3: integer product ids (every integer width) run on the default plan as on the SQL
/// plan, sorted numerically, and come out with the input's type.
#[test]
fn integer_product_ids_in_both_plans_keep_their_type() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = root().join("fixtures/tiny");
    let n = tiny.join("neighbours.csv");
    for sql_type in [
        "TINYINT",
        "SMALLINT",
        "INT",
        "BIGINT",
        "TINYINT UNSIGNED",
        "INT UNSIGNED",
        "BIGINT UNSIGNED",
    ] {
        let e = dir.path().join("engagement.parquet");
        // ids whose numeric order is not their text order (-5 < 9 < 20 < 100)
        let id = if sql_type.contains("UNSIGNED") {
            "CAST(CASE product_id WHEN 'P1' THEN 100 WHEN 'P2' THEN 9 WHEN 'P3' THEN 5 ELSE 20 END \
             AS BIGINT UNSIGNED)"
        } else {
            "CASE product_id WHEN 'P1' THEN 100 WHEN 'P2' THEN 9 WHEN 'P3' THEN -5 ELSE 20 END"
        };
        let big = if sql_type == "BIGINT UNSIGNED" {
            format!("{id} + CAST(9223372036854775800 AS BIGINT UNSIGNED)")
        } else {
            id.to_string()
        };
        parquet(
            &e,
            &format!(
                "SELECT query, CAST({big} AS {sql_type}) AS product_id, impressions, clicks, adds, \
                 purchases FROM '{}'",
                tiny.join("engagement.csv").display()
            ),
        );
        let mut outputs = Vec::new();
        for plan in ["merge", "sql"] {
            let out = dir.path().join(format!("{plan}.parquet"));
            let result = run_job(
                e.to_str().unwrap(),
                n.to_str().unwrap(),
                out.to_str().unwrap(),
                &["--plan", plan, "--min-score", "0.1"],
            );
            assert!(
                result.status.success(),
                "{sql_type} {plan}: {}",
                stderr(&result)
            );
            let types = run(&[
                "sql",
                "--format",
                "csv",
                "-c",
                &format!(
                    "SELECT DISTINCT arrow_typeof(product_id) AS t FROM '{}'",
                    out.display()
                ),
            ]);
            let input_type = run(&[
                "sql",
                "--format",
                "csv",
                "-c",
                &format!(
                    "SELECT DISTINCT arrow_typeof(product_id) AS t FROM '{}'",
                    e.display()
                ),
            ]);
            assert_eq!(
                String::from_utf8_lossy(&types.stdout),
                String::from_utf8_lossy(&input_type.stdout),
                "{sql_type} {plan}: typed as the input"
            );
            outputs.push(read_features_in_file_order(&out));
        }
        assert_eq!(outputs[0].len(), 16, "{sql_type}");
        assert_same_features(&outputs[0], &outputs[1]);
        // numeric order within each query
        for pair in outputs[0].windows(2) {
            if pair[0].query == pair[1].query {
                let a: i128 = pair[0].product_id.parse().unwrap();
                let b: i128 = pair[1].product_id.parse().unwrap();
                assert!(a < b, "{sql_type}: {a} before {b}");
            }
        }
    }
}

/// Item 4: counts that overflow when a key's rows are summed are bad input, in run and validate.
#[test]
fn summed_counts_that_overflow_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("engagement.parquet");
    parquet(
        &e,
        "SELECT * FROM (VALUES ('a', 'P1', CAST(5000000000000000000 AS BIGINT), 1, 0, 0), \
         ('a', 'P1', CAST(5000000000000000000 AS BIGINT), 1, 0, 0), \
         ('b', 'P1', CAST(7 AS BIGINT), 1, 0, 0)) \
         AS t(query, product_id, impressions, clicks, adds, purchases)",
    );
    let n = write(dir.path(), "neighbours.csv", NEIGHBOURS);
    let out = dir.path().join("out/f.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--on-duplicate", "sum"],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    for fragment in [
        "'engagement'",
        "column 'impressions'",
        "sum_above_bigint",
        "query=\"a\", product_id=\"P1\", impressions=10000000000000000000",
    ] {
        assert!(err.contains(fragment), "lacks {fragment:?}: {err}");
    }
    assert!(!out.parent().unwrap().exists());
    let report = validate_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        &["--on-duplicate", "sum"],
    );
    assert_eq!(report.status.code(), Some(2));
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("sum_above_bigint")),
        "{text}"
    );
    // sums that fit are fine
    let fits = dir.path().join("fits.parquet");
    parquet(
        &fits,
        "SELECT * FROM (VALUES ('a', 'P1', CAST(4000000000000000000 AS BIGINT), 1, 0, 0), \
         ('a', 'P1', CAST(4000000000000000000 AS BIGINT), 1, 0, 0), \
         ('b', 'P1', CAST(9000000000000000000 AS BIGINT), 1, 0, 0)) \
         AS t(query, product_id, impressions, clicks, adds, purchases)",
    );
    let result = run_job(
        fits.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--on-duplicate", "sum"],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let rows = read_features(&out);
    assert_eq!(rows[0].impressions, 8_000_000_000_000_000_000);
}

/// Item 5: an unsigned count above the largest BIGINT is bad input with the input, column and an
/// example row (it was an internal cast error, and validate said PASS).
#[test]
fn unsigned_counts_above_bigint_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("engagement.parquet");
    parquet(
        &e,
        "SELECT * FROM (VALUES ('a', 'P1', CAST(10 AS BIGINT UNSIGNED), 1, 0, 0), \
         ('b', 'P1', CAST(18000000000000000000 AS BIGINT UNSIGNED), 1, 0, 0)) \
         AS t(query, product_id, impressions, clicks, adds, purchases)",
    );
    let n = write(dir.path(), "neighbours.csv", NEIGHBOURS);
    let out = dir.path().join("f.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    for fragment in [
        "'engagement'",
        "column 'impressions'",
        "impressions_above_bigint",
        "impressions=18000000000000000000",
    ] {
        assert!(err.contains(fragment), "lacks {fragment:?}: {err}");
    }
    assert!(!out.exists());
    let report = validate_job(e.to_str().unwrap(), n.to_str().unwrap(), &[]);
    assert_eq!(report.status.code(), Some(2));
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("impressions_above_bigint")),
        "{text}"
    );
}

/// A synthetic marketplace large enough for a debug-built run to take seconds: (engagement,
/// neighbours).
fn synth_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    let synth = run(&[
        "synth",
        "--queries",
        "30000",
        "--seed",
        "3",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(synth.status.success(), "{}", stderr(&synth));
    (
        data.join("engagement.parquet"),
        data.join("neighbours.parquet"),
    )
}

/// The staging files in `folder`.
fn staged(folder: &Path) -> Vec<String> {
    std::fs::read_dir(folder)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("_q2q_staging."))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `run` writing to `out` and returns once its staging file exists, i.e. while it writes
/// (the staging object appears once 10 MiB are buffered: CSV output gives seconds of writing
/// after that on [`synth_inputs`]).
fn run_until_writing(e: &Path, n: &Path, out: &Path) -> std::process::Child {
    let mut child = bin()
        .args(["run", "--engagement", e.to_str().unwrap(), "--neighbours"])
        .args([n.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while staged(out.parent().unwrap()).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run never started writing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Item 6: a run that fails after creating `x/y/z/` for its output removes all three (it
/// removed only `z/`), and never a folder that existed before.
#[test]
fn a_failed_run_removes_every_folder_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let (e, n) = synth_inputs(dir.path());
    std::fs::create_dir(dir.path().join("x")).unwrap();
    std::fs::write(dir.path().join("x/keep.txt"), "mine").unwrap();
    for (out, created) in [
        (dir.path().join("a/b/c/f.csv"), dir.path().join("a")),
        (dir.path().join("x/y/z/f.csv"), dir.path().join("x/y")),
    ] {
        let mut child = run_until_writing(&e, &n, &out);
        let stop = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(stop.success());
        assert_eq!(child.wait().unwrap().code(), Some(130), "interrupted");
        assert!(
            !created.exists(),
            "{} was created by the run",
            created.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("x/keep.txt")).unwrap(),
        "mine"
    );
}

/// Item 7: a run killed with SIGKILL while writing leaves its staging file; the next run to the
/// same destination removes it, so that readers of the folder never meet it.
#[test]
fn the_next_run_removes_what_a_killed_run_staged() {
    let dir = tempfile::tempdir().unwrap();
    let (e, n) = synth_inputs(dir.path());
    let folder = dir.path().join("out");
    let out = folder.join("f.csv");
    let mut child = run_until_writing(&e, &n, &out);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = staged(&folder);
    assert_eq!(left.len(), 1, "the killed run's staging file: {left:?}");
    // another destination's staging file of a dead run on this machine: not this run's to remove
    // (the next run to that destination removes it)
    let other = format!(
        "_q2q_staging.{}.{}.1.1.other.csv.partial",
        q2q_prior::process::machine_tag(),
        u32::MAX - 1
    );
    std::fs::write(folder.join(&other), "x").unwrap();

    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(
        staged(&folder),
        vec![other],
        "the dead run's staging file is gone"
    );
    assert!(!read_features(&out).is_empty());
}

/// Item 8: `--target-partitions` and `execution.target_partitions` are bounded.
#[test]
fn target_partitions_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = root().join("fixtures/tiny/job.toml");
    let out = dir.path().join("f.parquet");
    let flag = run(&[
        "run",
        "--config",
        tiny.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--target-partitions",
        "5000",
    ]);
    assert_eq!(flag.status.code(), Some(2));
    assert!(stderr(&flag).contains("1..=256"), "{}", stderr(&flag));
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "{}\n[execution]\ntarget_partitions = 5000\n",
            std::fs::read_to_string(&tiny)
                .unwrap()
                .replace(
                    "engagement.csv",
                    tiny.with_file_name("engagement.csv").to_str().unwrap()
                )
                .replace(
                    "neighbours.csv",
                    tiny.with_file_name("neighbours.csv").to_str().unwrap()
                )
        ),
    )
    .unwrap();
    let key = run(&[
        "run",
        "--config",
        job.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(key.status.code(), Some(2), "{}", stderr(&key));
    assert!(
        stderr(&key).contains("between 1 and 256"),
        "{}",
        stderr(&key)
    );
    assert!(!out.exists());
    let help = run(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("1 to 256"));
}

/// Item 9: an output that cannot be written fails before the job reads a row: the input below has
/// a row that the checks would reject, and the error is about the output.
#[test]
fn an_unwritable_output_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let e = write(
        dir.path(),
        "engagement.csv",
        "query,product_id,impressions,clicks,adds,purchases\na,P1,1,5,0,0\n",
    );
    let n = write(dir.path(), "neighbours.csv", NEIGHBOURS);
    std::fs::write(dir.path().join("file"), "not a folder").unwrap();
    std::fs::create_dir(dir.path().join("folder")).unwrap();
    for (output, why) in [
        (
            dir.path().join("file/sub/f.parquet"),
            "is a file, not a folder",
        ),
        (dir.path().join("folder"), "it is an existing folder"),
    ] {
        let result = run_job(
            e.to_str().unwrap(),
            n.to_str().unwrap(),
            output.to_str().unwrap(),
            &[],
        );
        let err = stderr(&result);
        assert_eq!(result.status.code(), Some(2), "{err}");
        assert!(
            err.contains("cannot be written") && err.contains(why),
            "{err}"
        );
        assert!(
            !err.contains("clicks_above_impressions"),
            "checked before the inputs: {err}"
        );
    }
    // a read-only folder, where this user cannot write there (root can)
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let mut permissions = std::fs::metadata(&locked).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o555);
    std::fs::set_permissions(&locked, permissions).unwrap();
    if std::fs::write(locked.join("probe"), "x").is_err() {
        let result = run_job(
            e.to_str().unwrap(),
            n.to_str().unwrap(),
            locked.join("f.parquet").to_str().unwrap(),
            &[],
        );
        assert_eq!(result.status.code(), Some(2));
        assert!(stderr(&result).contains("cannot create files in"));
    }
}

/// Item 10: credentials in URLs and the environment are never printed, at any log level.
#[test]
fn credentials_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let job = write(
        dir.path(),
        "job.toml",
        "[execution]\nobject_store_retries = 1\nobject_store_retry_timeout_secs = 5\n",
    );
    let n = root().join("fixtures/tiny/neighbours.csv");
    let secrets = [
        "endpointpassword",
        "uripassword",
        "signedtokenvalue",
        "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
        "FwoGZXIvYXdzEXAMPLESESSIONTOKEN",
    ];
    let output = bin()
        .args(["run", "--config", job.to_str().unwrap()])
        .args([
            "--engagement",
            "s3://bucket/e/x.csv?X-Amz-Security-Token=signedtokenvalue",
            "--neighbours",
            n.to_str().unwrap(),
            "-o",
            "s3://key:uripassword@bucket/out/f.parquet",
        ])
        .env("AWS_ENDPOINT", "http://user:endpointpassword@127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
        )
        .env("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLESESSIONTOKEN")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("127.0.0.1:9"),
        "the request was made and logged: {err}"
    );
    assert!(err.contains("***"), "{err}");
    for secret in secrets {
        assert!(!err.contains(secret), "{secret} printed:\n{err}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains(secret));
    }
    // clap's own errors quote the argument: redacted too
    let stray = run(&["run", "s3://key:strayp4ssword@bucket/x.parquet"]);
    assert_eq!(stray.status.code(), Some(2));
    assert!(
        stderr(&stray).contains("unexpected argument") && !stderr(&stray).contains("strayp4ssword"),
        "{}",
        stderr(&stray)
    );
    // validate shows the URI redacted too
    let report = bin()
        .args(["validate", "--engagement", "s3://key:uripassword@bucket/e/"])
        .args(["--neighbours", n.to_str().unwrap()])
        .env("AWS_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("Q2Q_CONFIG", job.to_str().unwrap())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&report.stdout),
        stderr(&report)
    );
    assert!(
        !all.contains("uripassword") && all.contains("s3://***@bucket"),
        "{all}"
    );
}

/// Item 11 (smaller): a header naming a column twice is named; long values are cut in messages;
/// keys of only white space are a WARN.
#[test]
fn duplicated_columns_long_values_and_blank_keys() {
    let dir = tempfile::tempdir().unwrap();
    let n = write(dir.path(), "neighbours.csv", NEIGHBOURS);
    let out = dir.path().join("f.parquet");
    let e = write(
        dir.path(),
        "dup.csv",
        "query,product_id,impressions,clicks,clicks,adds,purchases\na,P1,10,1,1,0,0\n",
    );
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(
        err.contains("names column 'clicks' more than once"),
        "{err}"
    );
    let report = validate_job(e.to_str().unwrap(), n.to_str().unwrap(), &[]);
    assert!(
        String::from_utf8_lossy(&report.stdout).contains("names column 'clicks' more than once")
    );

    let key = "k".repeat(1_000_000);
    let e = write(
        dir.path(),
        "long.csv",
        &format!("query,product_id,impressions,clicks,adds,purchases\n{key},P1,1,5,0,0\n"),
    );
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2));
    assert!(err.len() < 2_000, "{} bytes of stderr", err.len());
    assert!(err.contains("… (1000000 bytes)"), "{err}");

    let e = write(
        dir.path(),
        "blank.csv",
        "query,product_id,impressions,clicks,adds,purchases\n\"  \",P1,10,1,0,0\na,\"\t\",10,1,0,0\n",
    );
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let err = stderr(&result);
    assert!(result.status.success(), "{err}");
    assert!(
        err.contains("'query_blank'") && err.contains("'product_id_blank'"),
        "{err}"
    );
    let report = validate_job(e.to_str().unwrap(), n.to_str().unwrap(), &[]);
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("WARN") && l.contains("query_blank")),
        "{text}"
    );
}
