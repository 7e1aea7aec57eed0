//! `q2q-prior sql` driven as a user drives it: one-shot (-c, -f) with exact output per format,
//! a script on piped stdin, and the interactive REPL through a pseudo-terminal.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;

fn tiny_config() -> String {
    root()
        .join("fixtures/tiny/job.toml")
        .to_string_lossy()
        .into_owned()
}

/// `sql --config tiny` with extra arguments.
fn sql(extra: &[&str]) -> Output {
    let config = tiny_config();
    let mut args = vec!["sql", "--config", config.as_str()];
    args.extend(extra);
    run(&args)
}

/// `sql --config tiny` reading `script` from a pipe.
fn sql_piped(script: &str, extra: &[&str]) -> Output {
    let config = tiny_config();
    let mut child = bin()
        .args(["sql", "--config", config.as_str()])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two history rows of the hand-worked fixture (H from fixtures/README.md) and a NULL.
const QUERY: &str = "SELECT query, product_id, h, NULLIF(impressions, 500) AS imp \
    FROM history WHERE query = 'red shoes' ORDER BY product_id";

#[test]
fn one_shot_output_in_every_format() {
    let expected = [
        (
            "csv",
            "query,product_id,h,imp\n\
             red shoes,P1,0.08992506244796003,12000\n\
             red shoes,P2,0.14901960784313725,\n",
        ),
        (
            "tsv",
            "query\tproduct_id\th\timp\n\
             red shoes\tP1\t0.08992506244796003\t12000\n\
             red shoes\tP2\t0.14901960784313725\t\n",
        ),
        (
            "json",
            "[{\"query\":\"red shoes\",\"product_id\":\"P1\",\"h\":0.08992506244796003,\"imp\":12000},\
             {\"query\":\"red shoes\",\"product_id\":\"P2\",\"h\":0.14901960784313725,\"imp\":null}]\n",
        ),
        (
            "ndjson",
            "{\"query\":\"red shoes\",\"product_id\":\"P1\",\"h\":0.08992506244796003,\"imp\":12000}\n\
             {\"query\":\"red shoes\",\"product_id\":\"P2\",\"h\":0.14901960784313725,\"imp\":null}\n",
        ),
        (
            "table",
            "+-----------+------------+---------------------+-------+\n\
             | query     | product_id | h                   | imp   |\n\
             +-----------+------------+---------------------+-------+\n\
             | red shoes | P1         | 0.08992506244796003 | 12000 |\n\
             | red shoes | P2         | 0.14901960784313725 |       |\n\
             +-----------+------------+---------------------+-------+\n",
        ),
    ];
    for (format, want) in expected {
        let out = sql(&["--format", format, "-c", QUERY]);
        assert!(out.status.success(), "{format}: {}", stderr(&out));
        assert_eq!(stdout(&out), want, "format {format}");
        assert_eq!(stderr(&out), "", "status lines only on a terminal");
    }
    // not a terminal: CSV by default
    assert_eq!(stdout(&sql(&["-c", QUERY])), expected[0].1);
    // empty results keep their header / shape
    let none = "SELECT query, h FROM history WHERE false";
    assert_eq!(stdout(&sql(&["--format", "csv", "-c", none])), "query,h\n");
    assert_eq!(stdout(&sql(&["--format", "json", "-c", none])), "[]\n");
    assert_eq!(stdout(&sql(&["--format", "ndjson", "-c", none])), "");
}

#[test]
fn maxrows_limits_what_is_printed_and_says_so() {
    let out = sql(&[
        "--maxrows",
        "1",
        "-c",
        "SELECT product_id FROM history ORDER BY query, product_id",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "product_id\nP1\n");
    assert!(
        stderr(&out).contains("8 row(s), 1 shown"),
        "{}",
        stderr(&out)
    );
    // -q silences it
    let out = sql(&[
        "-q",
        "--maxrows",
        "1",
        "-c",
        "SELECT 1 AS a UNION ALL SELECT 2",
    ]);
    assert_eq!(stderr(&out), "");
}

#[test]
fn recomputing_f_from_history_prior_and_the_udfs_matches_the_features_view() {
    // gamma and beta as fixtures/tiny/job.toml leaves them (defaults 10000 and 1)
    let recompute = "
        WITH pairs AS (
            SELECT COALESCE(h.query, p.query) AS query,
                   COALESCE(h.product_id, p.product_id) AS product_id,
                   COALESCE(h.h, 0.0) AS h, COALESCE(p.prior, 0.0) AS prior,
                   COALESCE(h.impressions, 0) AS impressions
            FROM history h FULL JOIN prior p
              ON h.query = p.query AND h.product_id = p.product_id),
        max_impressions AS (SELECT query, MAX(impressions) AS m FROM history GROUP BY query),
        recomputed AS (
            SELECT pairs.query, pairs.product_id,
                   q2q_blend(pairs.h, pairs.prior,
                             q2q_alpha(pairs.impressions, COALESCE(mi.m, 0), 10000), 1.0) AS f
            FROM pairs LEFT JOIN max_impressions mi ON mi.query = pairs.query)
        SELECT COUNT(*) AS pairs,
               SUM(CASE WHEN abs(r.f - x.f) <= 1e-12 * abs(x.f) THEN 1 ELSE 0 END) AS identical,
               (SELECT COUNT(*) FROM features) AS features
        FROM recomputed r FULL JOIN features x
          ON r.query = x.query AND r.product_id = x.product_id";
    for config in ["fixtures/tiny/job.toml", "fixtures/demo/job.toml"] {
        let config = root().join(config);
        let out = run(&["sql", "--config", config.to_str().unwrap(), "-c", recompute]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        let row: Vec<u64> = text
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(row[0] > 0, "{text}");
        // identical to 1e-12 relative: the merge plan sums a prior in another order than AVG
        assert_eq!(row[0], row[1], "every recomputed f is identical: {text}");
        assert_eq!(row[0], row[2], "and covers the features view: {text}");
    }
    // the features view is what `run` writes
    let out = sql(&["-c", "SELECT * FROM features ORDER BY query, product_id"]);
    let dir = tempfile::tempdir().unwrap();
    let shown = dir.path().join("shown.csv");
    std::fs::write(&shown, &out.stdout).unwrap();
    assert_same_features(
        &read_features(&shown),
        &read_features(&root().join("fixtures/tiny/expected.csv")),
    );
}

#[test]
fn meta_commands_list_describe_and_show_stage_sql() {
    let out = sql(&["-c", "\\d"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<String> = stdout(&out)
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
        .collect();
    assert_eq!(
        names,
        [
            "engagement,input",
            "features,stage",
            "history,stage",
            "neighbour_sets,stage",
            "neighbours,input",
            "prior,stage"
        ]
    );

    let out = sql(&["-c", "\\d prior"]);
    assert_eq!(
        stdout(&out),
        "column,type,nullable\nquery,Utf8,YES\nproduct_id,Utf8,YES\nprior,Float64,YES\nn_contributing,Int64,NO\n"
    );

    let out = sql(&["-c", "\\sql features"]);
    let text = stdout(&out);
    let file = std::fs::read_to_string(root().join("sql/features.sql")).unwrap();
    assert!(
        text.starts_with(
            "-- sql/features.sql, view `features`\n-- parameters: $blend = paper, $gamma = 10000, \
             $smoothing = 10, $pseudo_impressions = 30, $beta = 1\n"
        ),
        "{text}"
    );
    assert!(text.ends_with(&file), "prints the file the job runs");

    // views made in the session are listed too, and help is there
    let out = sql(&[
        "-c",
        "CREATE VIEW tail AS SELECT * FROM features WHERE impressions < 20; \\d",
    ]);
    assert!(
        stdout(&out).contains("tail,view,created in this session"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&sql(&["-c", "\\?"])).contains("\\sql NAME"));

    for (bad, message) in [
        ("\\d nope", "no table or view named 'nope'"),
        ("\\sql engagement", "'engagement' is an input"),
        ("\\x", "unknown command"),
    ] {
        let out = sql(&["-c", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(stderr(&out).contains(message), "{bad}: {}", stderr(&out));
    }
}

#[test]
fn nested_values_print_in_every_format() {
    let query = "SELECT make_array(1, 2) AS a, named_struct('x', 1) AS s";
    assert_eq!(
        stdout(&sql(&["--format", "csv", "-c", query])),
        "a,s\n\"[1, 2]\",{x: 1}\n"
    );
    assert_eq!(
        stdout(&sql(&["--format", "ndjson", "-c", query])),
        "{\"a\":[1,2],\"s\":{\"x\":1}}\n"
    );
    // SHOW FUNCTIONS (whose parameter lists are lists) finds the project's UDFs
    let out = sql(&["-c", "SHOW FUNCTIONS LIKE 'q2q%'"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("q2q_alpha") && stdout(&out).contains("q2q_blend"));
    // with their documentation: arguments and syntax
    assert!(
        stdout(&out).contains("\"[impressions, max_impressions, gamma]\"")
            && stdout(&out).contains("q2q_blend(h, prior, alpha, beta)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn explain_and_explain_analyze() {
    let out = sql(&["-c", "EXPLAIN SELECT * FROM prior"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("logical_plan"));
    assert!(stdout(&out).contains("AggregateExec"));
    let out = sql(&["-c", "EXPLAIN ANALYZE SELECT COUNT(*) FROM features"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("output_rows"), "{}", stdout(&out));
}

#[test]
fn one_shot_errors_exit_non_zero_and_stop() {
    for (statement, message) in [
        ("SELEC 1", "SQL error"),
        (
            "SELECT * FROM nope",
            "table 'datafusion.public.nope' not found",
        ),
        ("SELECT q2q_alpha('x', 1, 2, 3)", "q2q_alpha"),
        ("SELECT 1/0", "Divide by zero"),
        ("SELECT CAST('a' AS INT)", "Cannot cast"),
    ] {
        let out = sql(&["-c", statement, "-c", "SELECT 'not reached' AS x"]);
        assert_eq!(out.status.code(), Some(2), "{statement}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(message),
            "{statement}: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), "", "stops at the first error");
    }
    // -f: same rules, and a missing file is named
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("s.sql");
    std::fs::write(&script, "SELECT 1 AS a;\n-- comment\nSELECT 2 AS b\n").unwrap();
    let out = sql(&["-f", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "a\n1\nb\n2\n");
    let out = sql(&["-f", "/no/such.sql"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/no/such.sql"));
}

#[test]
fn out_of_memory_is_reported_with_a_hint() {
    // a hash join's build side (2M rows of 64-byte strings) cannot spill
    let join = "SELECT COUNT(*) AS n \
        FROM (SELECT value AS v, repeat('x', 64) AS s FROM generate_series(1, 2000000)) a \
        JOIN (SELECT value AS v, repeat('y', 64) AS s FROM generate_series(1, 2000000)) b \
          ON a.v = b.v AND a.s <> b.s";
    let out = sql(&[
        "--memory-limit",
        "64MiB",
        "--target-partitions",
        "1",
        "--join",
        "hash",
        "-c",
        join,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--memory-limit"), "{}", stderr(&out));
    // the default sort-merge join spills to disk instead and finishes within the same limit (with
    // more than one partition: with one, DataFusion hashes one side whatever the setting)
    let out = sql(&[
        "--memory-limit",
        "64MiB",
        "--target-partitions",
        "2",
        "-c",
        join,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "n\n2000000\n");
    // in a piped session the next statement still runs
    let out = sql_piped(
        &format!("{join};\nSELECT 'still here' AS s;\n"),
        &[
            "--memory-limit",
            "64MiB",
            "--target-partitions",
            "1",
            "--join",
            "hash",
        ],
    );
    assert_eq!(stdout(&out), "s\nstill here\n");
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
}

#[test]
fn output_file_by_extension_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let query = "SELECT * FROM features ORDER BY query, product_id";
    for name in ["f.parquet", "f.csv", "f.json"] {
        let path = dir.path().join("out").join(name);
        let out = sql(&["-c", query, "-o", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "", "the result goes to the file");
        assert!(stderr(&out).contains("wrote 16 row(s)"), "{}", stderr(&out));
        // read it back through the shell itself
        let back = run(&[
            "sql",
            "-c",
            &format!(
                "SELECT COUNT(*) AS n, SUM(f) AS f FROM '{}'",
                path.display()
            ),
        ]);
        assert!(back.status.success(), "{name}: {}", stderr(&back));
        assert!(
            stdout(&back).starts_with("n,f\n16,"),
            "{name}: {}",
            stdout(&back)
        );
    }
    let names: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "no staging files left: {names:?}");
    // a failing query leaves nothing
    let failed = dir.path().join("none/f.parquet");
    let out = sql(&["-c", "SELECT 1/0 AS x", "-o", failed.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!failed.parent().unwrap().exists());
    // -o takes its format from a known extension and needs a query last
    let out = sql(&[
        "-c",
        query,
        "-o",
        dir.path().join("f.txt").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(".parquet, .csv"), "{}", stderr(&out));
    let out = sql(&[
        "-c",
        "CREATE VIEW v AS SELECT 1 AS x",
        "-o",
        dir.path().join("v.csv").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("returns no rows"), "{}", stderr(&out));
    assert!(!dir.path().join("v.csv").exists() && !dir.path().join("f.txt").exists());
    // COPY TO writes where it says
    let copied = dir.path().join("copy.parquet");
    let out = sql(&[
        "-c",
        &format!("COPY (SELECT * FROM prior) TO '{}'", copied.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(copied.exists());
}

#[test]
fn piped_stdin_runs_every_statement_and_reports_failures() {
    let script = "-- a script's header comment\n\\format csv\n\
                  SELECT 1 AS a;\n\
                  \\format ndjson\n\
                  SELECT query\n  FROM neighbour_sets\n  WHERE rank = 1\n  ORDER BY query;\n\
                  SELECT * FROM missing_table;\n\
                  CREATE VIEW short AS SELECT query FROM history WHERE impressions < 50;\n\
                  SELECT COUNT(*) AS n FROM short; \\q\n\
                  SELECT 'after quit' AS x;\n";
    let out = sql_piped(script, &[]);
    assert_eq!(out.status.code(), Some(2), "one statement failed");
    assert_eq!(
        stdout(&out),
        "a\n1\n{\"query\":\"crimson shoes\"}\n{\"query\":\"red shoes\"}\n{\"query\":\"red shoez\"}\n{\"query\":\"ruby shoes\"}\n{\"n\":3}\n"
    );
    assert!(stderr(&out).contains("missing_table"), "{}", stderr(&out));
    // without failures: exit 0; without a config: the UDFs alone
    let out = bin()
        .args(["sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(
                b"SELECT q2q_alpha(5, 10, 10000) AS a, normalize_query('Red Shoes') AS k;",
            )?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("a,k\n{},red shoe\n", (0.5f64).tanh()));
}

/// The REPL in a pseudo-terminal: `term` is what the line editor sees (xterm: raw mode, Ctrl-C
/// is a key; dumb: cooked mode, Ctrl-C is a signal).
fn interactive_repl(term: &str) {
    use rexpect::session::{Options, spawn_with_options};
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    let mut cmd = bin();
    cmd.args(["sql", "--config", &tiny_config()])
        .env("Q2Q_HISTORY", &history)
        .env("TERM", term);
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(true);
    let mut p = spawn_with_options(cmd, options).unwrap();
    p.exp_string("\\? for help").unwrap();
    p.exp_string("q2q> ").unwrap();
    // Ctrl-C at the prompt drops a half-typed statement and keeps the shell
    p.send_line("SELECT 'dropped'").unwrap();
    p.exp_string("  -> ").unwrap();
    p.send_control('c').unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // a statement over two lines
    p.send_line("SELECT 40 + 2").unwrap();
    p.exp_string("  -> ").unwrap();
    p.send_line("  AS answer;").unwrap();
    p.exp_string("| 42 ").unwrap();
    p.exp_string("1 row(s) in").unwrap();
    p.exp_string("q2q> ").unwrap();
    // an error does not end the session
    p.send_line("SELECT * FROM nope;").unwrap();
    p.exp_string("not found").unwrap();
    p.exp_string("q2q> ").unwrap();
    // Ctrl-C cancels a long query, not the shell
    p.send_line("SELECT COUNT(*) FROM generate_series(1, 1000000000000);")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    p.send_control('c').unwrap();
    p.exp_string("cancelled").unwrap();
    p.exp_string("q2q> ").unwrap();
    p.send_line("\\d features").unwrap();
    p.exp_string("n_contributing").unwrap();
    p.exp_string("q2q> ").unwrap();
    // Ctrl-D leaves with exit code 0 and saves the history
    p.send_control('d').unwrap();
    let rest = p.exp_eof().unwrap();
    assert!(
        !rest.contains("dropped"),
        "the dropped statement never ran: {rest}"
    );
    match p.process_mut().wait().unwrap() {
        rexpect::process::WaitStatus::Exited(_, code) => assert_eq!(code, 0),
        other => panic!("unexpected end: {other:?}"),
    }
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("SELECT 40 + 2"), "{saved}");
    assert!(saved.contains("\\d features"), "{saved}");
    assert!(!saved.contains("dropped"), "{saved}");
}

#[test]
fn interactive_repl_in_a_terminal() {
    interactive_repl("xterm");
}

#[test]
fn interactive_repl_in_a_dumb_terminal() {
    interactive_repl("dumb");
}

#[test]
fn opening_the_shell_computes_nothing() {
    // rows that would fail the job's checks, and past the rows schema inference samples, a value
    // that cannot be parsed: the shell opens and answers anything that does not read those rows
    let dir = tempfile::tempdir().unwrap();
    let mut engagement =
        String::from("query,product_id,impressions,clicks,adds,purchases\na,P1,1,5,0,0\n");
    for i in 0..1500 {
        engagement.push_str(&format!("q{i},P1,10,1,0,0\n"));
    }
    engagement.push_str("late,P1,oops,0,0,0\n");
    let e = write(dir.path(), "engagement.csv", &engagement);
    let n = write(
        dir.path(),
        "neighbours.csv",
        "query,neighbour,score\na,b,NaN\n",
    );
    let args = |statement: &str| {
        run(&[
            "sql",
            "--engagement",
            e.to_str().unwrap(),
            "--neighbours",
            n.to_str().unwrap(),
            "-c",
            statement,
        ])
    };
    let out = args("SELECT q2q_blend(0.5, 0.25, 0.5, 1.0) AS f; \\d features");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("f\n0.375\ncolumn,type,nullable\nquery,"),
        "{}",
        stdout(&out)
    );
    // reading the rows is what fails, naming the value
    let out = args("SELECT SUM(f) FROM features");
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("oops"), "{}", stderr(&out));
}

/// The backfill's output folder, one partition folder and a glob are tables in quoted names, as a
/// file is; `_SUCCESS` and `_manifest.json` beside the data are skipped; `dt` is a column.
#[test]
fn folders_partition_folders_and_globs_are_tables() {
    let dir = tempfile::tempdir().unwrap();
    let daily = root().join("fixtures/daily");
    let out = dir.path().join("daily");
    let backfill = run(&[
        "backfill",
        "--engagement",
        daily.join("engagement").to_str().unwrap(),
        "--neighbours",
        daily.join("neighbours").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--window-days",
        "3",
        "--from",
        "2026-01-02",
        "--to",
        "2026-01-04",
    ]);
    assert!(backfill.status.success(), "{}", stderr(&backfill));
    assert!(out.join("dt=2026-01-03/_SUCCESS").exists());
    let query = |sql: &str| {
        let result = run(&["sql", "--format", "csv", "-c", sql]);
        assert!(result.status.success(), "{sql}: {}", stderr(&result));
        String::from_utf8_lossy(&result.stdout).into_owned()
    };
    let o = out.display();
    let per_day = query(&format!(
        "SELECT dt, count(*) AS n FROM '{o}/' GROUP BY dt ORDER BY dt"
    ));
    assert_eq!(
        per_day,
        "dt,n\n2026-01-02,16\n2026-01-03,16\n2026-01-04,16\n"
    );
    assert_eq!(
        query(&format!("SELECT count(*) AS n FROM '{o}'")),
        "n\n48\n"
    );
    assert_eq!(
        query(&format!("SELECT count(*) AS n FROM '{o}/dt=2026-01-03/'")),
        "n\n16\n"
    );
    assert_eq!(
        query(&format!("SELECT count(*) AS n FROM '{o}/*.parquet'")),
        "n\n48\n"
    );
    // the same rows as the partition's file read directly
    let file = std::fs::read_dir(out.join("dt=2026-01-03"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let columns = "query, product_id, h, prior, alpha, f";
    assert_eq!(
        query(&format!(
            "SELECT {columns} FROM '{o}/dt=2026-01-03/' ORDER BY query, product_id"
        )),
        query(&format!(
            "SELECT {columns} FROM '{}' ORDER BY query, product_id",
            file.display()
        ))
    );
    // a glob naming the key=value level matches nothing in DataFusion: the error says what does
    let result = run(&["sql", "-c", &format!("SELECT * FROM '{o}/*/*.parquet'")]);
    assert_eq!(result.status.code(), Some(2));
    assert!(
        stderr(&result).contains("not out/*/*.parquet"),
        "{}",
        stderr(&result)
    );
    // a bare unknown name is still an unknown table
    let result = run(&["sql", "-c", "SELECT * FROM nope"]);
    assert!(stderr(&result).contains("not found"), "{}", stderr(&result));
}
