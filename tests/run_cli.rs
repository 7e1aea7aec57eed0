//! The `run` command through the real binary: the hand-worked fixture, formats, flags, the atomic
//! write, and one test per kind of bad input (exit code 2, a message naming the input, column and an
//! example row, nothing at the destination).

mod common;

use std::path::Path;

use common::*;

const ENGAGEMENT: &str = "query,product_id,impressions,clicks,adds,purchases\n\
    a,P1,100,10,2,1\n\
    b,P1,50,5,1,0\n\
    b,P2,20,2,0,0\n";
const NEIGHBOURS: &str = "query,neighbour,score\na,b,0.9\nc,a,0.8\n";

fn tiny_args(out: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--config".into(),
        root()
            .join("fixtures/tiny/job.toml")
            .to_string_lossy()
            .into_owned(),
        "--output".into(),
        out.to_string_lossy().into_owned(),
    ]
}

#[test]
fn tiny_fixture_matches_the_hand_worked_values() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["features.parquet", "features.csv"] {
        let out = dir.path().join(name);
        let args = tiny_args(&out);
        let format = if name.ends_with("csv") {
            "csv"
        } else {
            "parquet"
        };
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--format", format]);
        let result = run(&args);
        assert!(result.status.success(), "{}", stderr(&result));
        assert!(
            result.stdout.is_empty(),
            "stdout carries data only; run writes none"
        );
        let expected = read_features(&root().join("fixtures/tiny/expected.csv"));
        assert_eq!(expected.len(), 16);
        assert_same_features(&read_features(&out), &expected);
    }
}

#[test]
fn summary_reports_stages_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.parquet");
    let args = tiny_args(&out);
    let result = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = stderr(&result);
    assert!(err.contains("wrote 16 rows"), "{err}");
    assert!(err.contains("queries with a prior: 4"), "{err}");
    assert!(
        err.contains("(q,p) pairs only through the prior: 8"),
        "{err}"
    );
    assert!(
        err.contains("self_pairs"),
        "the self-pair is reported as a warning: {err}"
    );
}

#[test]
fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.csv");
    let mut args = tiny_args(&out);
    args.extend(["--format", "csv", "--top-k", "1", "--beta", "0.5"].map(String::from));
    let result = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(result.status.success(), "{}", stderr(&result));
    let rows = read_features(&out);
    // with k = 1 'red shoez' keeps only 'red shoes' (0.95): its prior is red shoes' H
    let shoez: Vec<_> = rows.iter().filter(|r| r.query == "red shoez").collect();
    assert_eq!(shoez.len(), 2);
    assert!(shoez.iter().all(|r| r.n_neighbours == 1));
    assert!(close(shoez[0].prior, 1080.0 / 12010.0));
    assert!(
        close(shoez[0].f, 0.5 * 1080.0 / 12010.0),
        "beta = 0.5 halves a prior-only F"
    );
}

#[test]
fn environment_overrides_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.csv");
    let result = bin()
        .args([
            "run",
            "--config",
            root().join("fixtures/tiny/job.toml").to_str().unwrap(),
            "--format",
            "csv",
        ])
        .env("Q2Q_OUTPUT", &out)
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(read_features(&out).len(), 16);
}

#[test]
fn parquet_and_ndjson_inputs_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir_all(data.join("e")).unwrap();
    write(
        &data.join("e"),
        "part-0.csv",
        "query,product_id,impressions,clicks,adds,purchases\na,P1,100,10,2,1\n",
    );
    write(
        &data.join("e"),
        "part-1.csv",
        "query,product_id,impressions,clicks,adds,purchases\nb,P1,50,5,1,0\nb,P2,20,2,0,0\n",
    );
    let n = write(
        &data,
        "n.ndjson",
        "{\"query\":\"a\",\"neighbour\":\"b\",\"score\":0.9}\n{\"query\":\"c\",\"neighbour\":\"a\",\"score\":0.8}\n",
    );
    let out_dir = dir.path().join("out1.csv");
    let result = run_job(
        &format!("{}/", data.join("e").display()),
        n.to_str().unwrap(),
        out_dir.to_str().unwrap(),
        &["--format", "csv"],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let from_folder = read_features(&out_dir);

    // the same data as one CSV file, and through a glob, gives the same table
    let e = write(&data, "e.csv", ENGAGEMENT);
    let nc = write(&data, "n.csv", NEIGHBOURS);
    let out_file = dir.path().join("out2.csv");
    let result = run_job(
        e.to_str().unwrap(),
        nc.to_str().unwrap(),
        out_file.to_str().unwrap(),
        &["--format", "csv"],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert_same_features(&from_folder, &read_features(&out_file));
    let out_glob = dir.path().join("out3.csv");
    let glob = format!("{}/part-*.csv", data.join("e").display());
    let result = run_job(
        &glob,
        n.to_str().unwrap(),
        out_glob.to_str().unwrap(),
        &["--format", "csv"],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert_same_features(&from_folder, &read_features(&out_glob));
    // c has no engagement: its pairs come from a's history only
    assert!(
        from_folder
            .iter()
            .any(|r| r.query == "c" && r.product_id == "P1" && r.n_contributing == 1)
    );
}

#[test]
fn precomputed_h_is_used_instead_of_counts() {
    let dir = tempfile::tempdir().unwrap();
    let e = write(
        dir.path(),
        "e.csv",
        "query,product_id,impressions,h\na,P1,100,0.5\nb,P1,10,0.25\n",
    );
    let n = write(dir.path(), "n.csv", "query,neighbour,score\na,b,1.0\n");
    let out = dir.path().join("o.csv");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--format", "csv"],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let rows = read_features(&out);
    assert_eq!(rows[0].h, 0.5);
    assert_eq!(rows[0].prior, 0.25);
}

#[test]
fn duplicate_engagement_rows_can_be_summed() {
    let dir = tempfile::tempdir().unwrap();
    let e = write(
        dir.path(),
        "e.csv",
        "query,product_id,impressions,clicks,adds,purchases\na,P1,60,6,1,0\na,P1,40,4,1,1\n",
    );
    let n = write(dir.path(), "n.csv", NEIGHBOURS);
    let out = dir.path().join("o.csv");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--format", "csv", "--on-duplicate", "sum"],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let rows = read_features(&out);
    let a = rows.iter().find(|r| r.query == "a").unwrap();
    assert_eq!(a.impressions, 100);
    assert!(close(a.h, (10.0 + 2.0 * 2.0 + 4.0) / 110.0));
}

#[test]
fn a_rerun_replaces_the_output_and_leaves_no_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.parquet");
    std::fs::write(&out, b"old").unwrap();
    let args = tiny_args(&out);
    let result = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(read_features(&out).len(), 16);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f.parquet")]);
}

// ---------------------------------------------------------------------------------------------
// Bad input: exit code 2, a message that names the input, the column and an example row, and
// nothing written at the destination (an existing file there is left untouched).

struct BadCase<'a> {
    engagement: &'a str,
    neighbours: &'a str,
    extra: &'a [&'a str],
    /// Fragments the error message must contain.
    expect: &'a [&'a str],
}

fn assert_rejected(case: &BadCase<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let e = write(dir.path(), "engagement.csv", case.engagement);
    let n = write(dir.path(), "neighbours.csv", case.neighbours);
    let out = dir.path().join("out").join("features.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        case.extra,
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "exit code; stderr: {err}");
    for fragment in case.expect {
        assert!(err.contains(fragment), "message lacks {fragment:?}:\n{err}");
    }
    assert!(!out.exists(), "nothing may be written at the destination");
    assert!(
        !out.parent().unwrap().exists(),
        "not even the output folder is created"
    );
    assert_validate_fails_alike(case, &e, &n);
}

/// `validate` runs the checks `run` runs: on the same input it exits 2 with FAIL lines that carry
/// the same check, column, expectation and example.
fn assert_validate_fails_alike(case: &BadCase<'_>, e: &Path, n: &Path) {
    let mut args = vec![
        "validate",
        "--engagement",
        e.to_str().unwrap(),
        "--neighbours",
        n.to_str().unwrap(),
    ];
    args.extend(case.extra);
    let result = run(&args);
    let report = String::from_utf8_lossy(&result.stdout).into_owned();
    assert_eq!(
        result.status.code(),
        Some(2),
        "validate exit code:\n{report}"
    );
    if report.is_empty() {
        // refused before any check, like run, for the same reason (flags about the output
        // file are not validate's)
        let err = stderr(&result);
        if !case.extra.contains(&"--format") {
            for fragment in case.expect {
                assert!(
                    err.contains(fragment),
                    "validate lacks {fragment:?}:\n{err}"
                );
            }
        }
        return;
    }
    let failed: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
    for fragment in case.expect {
        // the run's error sentence around a fact vs the report's columns
        let fact = fragment
            .strip_prefix("example row: ")
            .unwrap_or(fragment)
            .trim_matches('\'');
        let fact = match fact.split_once(" fail check '") {
            Some((_, id)) => id.trim_end_matches('\''),
            None => fact,
        };
        let fact = fact
            .strip_suffix(" key(s) have more than one row")
            .map_or(fact, |n| n.split_once(' ').map_or(n, |(_, rest)| rest));
        assert!(
            failed.iter().any(|l| l.contains(fact)),
            "no FAIL line of validate contains {fact:?}:\n{report}"
        );
    }
}

#[test]
fn bad_missing_column() {
    assert_rejected(&BadCase {
        engagement: "query,product_id,clicks,adds,purchases\na,P1,1,0,0\n",
        neighbours: NEIGHBOURS,
        extra: &[],
        expect: &[
            "'engagement'",
            "column 'impressions'",
            "missing column",
            "the input has [query, product_id, clicks, adds, purchases]",
        ],
    });
    assert_rejected(&BadCase {
        engagement: ENGAGEMENT,
        neighbours: "query,neighbour\na,b\n",
        extra: &[],
        expect: &["'neighbours'", "column 'score'", "missing column"],
    });
}

#[test]
fn bad_wrong_type() {
    assert_rejected(&BadCase {
        engagement: "query,product_id,impressions,clicks,adds,purchases\na,P1,ten,1,0,0\n",
        neighbours: NEIGHBOURS,
        extra: &[],
        expect: &[
            "'engagement'",
            "column 'impressions'",
            "type Utf8",
            "integer count",
        ],
    });
    assert_rejected(&BadCase {
        engagement: ENGAGEMENT,
        neighbours: "query,neighbour,score\na,b,high\n",
        extra: &[],
        expect: &["'neighbours'", "column 'score'", "type Utf8", "numeric"],
    });
}

#[test]
fn bad_negative_counts() {
    assert_rejected(&BadCase {
        engagement: "query,product_id,impressions,clicks,adds,purchases\na,P1,10,1,-1,0\n",
        neighbours: NEIGHBOURS,
        extra: &[],
        expect: &[
            "'engagement'",
            "column 'adds'",
            "adds_null_or_negative",
            "example row: query=\"a\", product_id=\"P1\", impressions=10, clicks=1, adds=-1, purchases=0",
            "count >= 0",
        ],
    });
}

#[test]
fn bad_clicks_above_impressions() {
    assert_rejected(&BadCase {
        engagement: "query,product_id,impressions,clicks,adds,purchases\na,P1,10,1,0,0\na,P2,3,5,0,0\n",
        neighbours: NEIGHBOURS,
        extra: &[],
        expect: &[
            "'engagement'",
            "column 'clicks'",
            "1 row(s) fail check 'clicks_above_impressions'",
            "product_id=\"P2\"",
            "clicks <= impressions",
        ],
    });
}

#[test]
fn bad_scores_nan_inf_negative() {
    for (score, shown) in [("NaN", "NaN"), ("inf", "inf"), ("-0.5", "-0.5")] {
        let neighbours = format!("query,neighbour,score\na,b,0.9\nc,a,{score}\n");
        assert_rejected(&BadCase {
            engagement: ENGAGEMENT,
            neighbours: &neighbours,
            extra: &[],
            expect: &[
                "'neighbours'",
                "column 'score'",
                "score_null_nan_inf_or_negative",
                "query=\"c\"",
                shown,
                "finite similarity score >= 0",
            ],
        });
    }
}

#[test]
fn bad_null_or_empty_keys() {
    assert_rejected(&BadCase {
        engagement: "query,product_id,impressions,clicks,adds,purchases\n,P1,10,1,0,0\n",
        neighbours: NEIGHBOURS,
        extra: &[],
        expect: &[
            "'engagement'",
            "column 'query'",
            "query_null_or_empty",
            "example row: query=NULL",
        ],
    });
    assert_rejected(&BadCase {
        engagement: "query,product_id,impressions,clicks,adds,purchases\n\"a\",\"\",10,1,0,0\n",
        neighbours: NEIGHBOURS,
        extra: &[],
        expect: &[
            "'engagement'",
            "column 'product_id'",
            "product_id_null_or_empty",
        ],
    });
    assert_rejected(&BadCase {
        engagement: ENGAGEMENT,
        neighbours: "query,neighbour,score\na,,0.5\n",
        extra: &[],
        expect: &[
            "'neighbours'",
            "column 'neighbour'",
            "neighbour_null_or_empty",
        ],
    });
}

#[test]
fn bad_duplicate_engagement_keys() {
    assert_rejected(&BadCase {
        engagement: "query,product_id,impressions,clicks,adds,purchases\na,P1,10,1,0,0\nb,P1,5,0,0,0\na,P1,20,2,0,0\n",
        neighbours: NEIGHBOURS,
        extra: &[],
        expect: &[
            "'engagement'",
            "column 'query, product_id'",
            "1 (query, product_id) key(s) have more than one row",
            "query=\"a\", product_id=\"P1\", n=2",
            "--on-duplicate sum",
        ],
    });
}

/// The merge plan finds repeated keys where it sorts the history, the SQL plan by an aggregation
/// before the job: the same error either way, for string and integer product ids, to a file or
/// a folder, and nothing at the destination.
fn walkdir(p: &Path) -> Vec<String> {
    let mut found = vec![p.display().to_string()];
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            found.extend(walkdir(&e.path()));
        }
    }
    found
}

#[test]
fn repeated_keys_are_rejected_alike_by_both_plans() {
    let dir = tempfile::tempdir().unwrap();
    let n = write(dir.path(), "neighbours.csv", NEIGHBOURS);
    for (engagement, integers, example) in [
        (
            "query,product_id,impressions,clicks,adds,purchases\nb,P2,5,0,0,0\na,P9,1,0,0,0\nb,P2,6,0,0,0\nc,P1,1,0,0,0\nb,P2,7,0,0,0\na,P3,9,1,0,0\na,P3,8,1,0,0\n",
            false,
            "query=\"a\", product_id=\"P3\", n=2",
        ),
        // as text "20" comes before "3", as integers after it
        (
            "query,product_id,impressions,clicks,adds,purchases\nb,20,5,0,0,0\nb,20,6,0,0,0\nb,3,1,0,0,0\nb,3,2,0,0,0\nb,3,3,0,0,0\na,100,1,0,0,0\n",
            true,
            "query=\"b\", product_id=3, n=3",
        ),
    ] {
        let mut e = write(dir.path(), "engagement.csv", engagement);
        if integers {
            let parquet = dir.path().join("engagement.parquet");
            let copy = format!(
                "COPY (SELECT query, CAST(product_id AS BIGINT) AS product_id, impressions, \
                 clicks, adds, purchases FROM '{}') TO '{}'",
                e.display(),
                parquet.display()
            );
            let out = run(&["sql", "-c", &copy]);
            assert!(out.status.success(), "{}", stderr(&out));
            e = parquet;
        }
        let mut errors = Vec::new();
        for (plan, output) in [
            ("merge", "out/f.parquet"),
            ("sql", "out/f.parquet"),
            ("merge", "folder/"),
        ] {
            let out = dir.path().join(output);
            let result = run_job(
                e.to_str().unwrap(),
                n.to_str().unwrap(),
                out.to_str().unwrap(),
                &["--plan", plan],
            );
            let err = stderr(&result);
            assert_eq!(result.status.code(), Some(2), "{plan}: {err}");
            assert!(err.contains(example), "{plan} lacks {example:?}:\n{err}");
            assert!(
                err.contains("2 (query, product_id) key(s) have more than one row"),
                "{plan}: {err}"
            );
            assert!(
                !out.exists(),
                "{plan} to {output}: nothing at the destination, found {:?}",
                walkdir(&out)
            );
            assert!(
                !out.parent().unwrap().exists() || output == "folder/",
                "{plan}: not even the output folder"
            );
            errors.push(
                err.lines()
                    .filter(|l| l.contains("bad input") || l.trim_start().starts_with("example"))
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(errors[0], errors[1], "the plans' errors");
        assert_eq!(errors[0], errors[2], "a folder's error");
    }
}

#[test]
fn bad_empty_input() {
    assert_rejected(&BadCase {
        engagement: "query,product_id,impressions,clicks,adds,purchases\n",
        neighbours: NEIGHBOURS,
        extra: &[],
        expect: &["'engagement'", "no rows"],
    });
    assert_rejected(&BadCase {
        engagement: ENGAGEMENT,
        neighbours: "query,neighbour,score\n",
        extra: &[],
        expect: &["'neighbours'", "no rows"],
    });
}

#[test]
fn bad_unreadable_path() {
    let dir = tempfile::tempdir().unwrap();
    let n = write(dir.path(), "n.csv", NEIGHBOURS);
    let out = dir.path().join("o.parquet");
    let missing = dir.path().join("nope/engagement.parquet");
    let result = run_job(
        missing.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'engagement'") && err.contains("no files found"),
        "{err}"
    );
    assert!(err.contains("nope/engagement.parquet"), "{err}");
    assert!(!out.exists());
}

#[test]
fn bad_unknown_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "job.toml",
        "engagement = \"e.csv\"\n[features]\ntop_kk = 2\n",
    );
    let result = run(&["run", "--config", config.to_str().unwrap()]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown field `top_kk`") && err.contains("job.toml"),
        "{err}"
    );
}

#[test]
fn bad_parameter_values() {
    let cases: [(&[&str], &str); 6] = [
        (&["--format", "csv"], "format is csv but the output"),
        (&["--top-k", "0"], "--top-k"),
        (&["--gamma", "0"], "gamma"),
        (&["--gamma", "-5"], "gamma"),
        (&["--click-weight", "-1"], "click_weight"),
        (&["--smoothing", "-2"], "smoothing"),
    ];
    for (extra, expect) in cases {
        assert_rejected(&BadCase {
            engagement: ENGAGEMENT,
            neighbours: NEIGHBOURS,
            extra,
            expect: &[expect],
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "job.toml", "[features]\ntop_k = 0\n");
    let result = run(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(2));
    assert!(stderr(&result).contains("top_k"), "{}", stderr(&result));
}

#[test]
fn partition_folders_become_columns_and_are_computed_independently() {
    use q2q_prior::config::FeatureParams;
    use q2q_prior::reference::{self, NeighbourRow};

    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("engagement");
    let us = "query,product_id,impressions,clicks,adds,purchases\na,P1,100,10,2,1\nb,P1,50,5,1,0\nb,P2,20,2,0,0\n";
    // the same (query, product_id) in another partition is not a duplicate
    let de = "query,product_id,impressions,clicks,adds,purchases\na,P1,10,1,0,0\nc,P3,40,8,2,2\n";
    for (market, text) in [("US", us), ("DE", de)] {
        std::fs::create_dir_all(e.join(format!("market={market}"))).unwrap();
        write(&e.join(format!("market={market}")), "part-0.csv", text);
    }
    let n = write(
        dir.path(),
        "n.csv",
        "query,neighbour,score\na,b,0.9\nc,a,0.8\na,c,0.7\n",
    );
    let out = dir.path().join("f.parquet");
    let result = run_job(
        &format!("{}/", e.display()),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    assert!(result.status.success(), "{}", stderr(&result));

    let neighbours = vec![
        NeighbourRow {
            query: "a".into(),
            neighbour: "b".into(),
            score: 0.9,
        },
        NeighbourRow {
            query: "c".into(),
            neighbour: "a".into(),
            score: 0.8,
        },
        NeighbourRow {
            query: "a".into(),
            neighbour: "c".into(),
            score: 0.7,
        },
    ];
    let by_market = read_features_by(&out, Some("market"));
    assert_eq!(by_market.keys().collect::<Vec<_>>(), ["DE", "US"]);
    for (market, text) in [("US", us), ("DE", de)] {
        let expected = reference::features(
            &parse_engagement(text),
            &neighbours,
            &FeatureParams::default(),
        );
        assert_same_features(&by_market[market], &expected);
    }

    // neighbours partitioned by the same column are matched partition by partition
    let nd = dir.path().join("neighbours");
    std::fs::create_dir_all(nd.join("market=US")).unwrap();
    std::fs::create_dir_all(nd.join("market=DE")).unwrap();
    write(
        &nd.join("market=US"),
        "n.csv",
        "query,neighbour,score\na,b,0.9\n",
    );
    write(
        &nd.join("market=DE"),
        "n.csv",
        "query,neighbour,score\na,c,0.9\n",
    );
    let out2 = dir.path().join("f2.parquet");
    let result = run_job(
        &format!("{}/", e.display()),
        &format!("{}/", nd.display()),
        out2.to_str().unwrap(),
        &[],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let by_market = read_features_by(&out2, Some("market"));
    for (market, text, list) in [("US", us, ("a", "b")), ("DE", de, ("a", "c"))] {
        let neighbours = vec![NeighbourRow {
            query: list.0.into(),
            neighbour: list.1.into(),
            score: 0.9,
        }];
        let expected = reference::features(
            &parse_engagement(text),
            &neighbours,
            &FeatureParams::default(),
        );
        assert_same_features(&by_market[market], &expected);
    }
}

#[test]
fn bad_inconsistent_partition_folders() {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("engagement");
    std::fs::create_dir_all(e.join("market=US")).unwrap();
    write(&e.join("market=US"), "a.csv", ENGAGEMENT);
    write(&e, "b.csv", ENGAGEMENT);
    let n = write(dir.path(), "n.csv", NEIGHBOURS);
    let out = dir.path().join("f.parquet");
    let result = run_job(
        &format!("{}/", e.display()),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("differently partitioned folders"), "{err}");
    assert!(!out.exists());
}

#[test]
fn unpartitioned_reading_sums_daily_folders_into_one_window() {
    let dir = tempfile::tempdir().unwrap();
    write_daily_folders(dir.path());
    write(dir.path(), "n.csv", NEIGHBOURS);
    let config = write(
        dir.path(),
        "job.toml",
        "engagement = { uri = \"engagement/\", partitioned = false }\nneighbours = \"n.csv\"\noutput = \"f.csv\"\n[features]\non_duplicate = \"sum\"\n",
    );
    let result = run(&["run", "--config", config.to_str().unwrap()]);
    assert!(result.status.success(), "{}", stderr(&result));
    let rows = read_features(&dir.path().join("f.csv"));
    let a = rows
        .iter()
        .find(|r| r.query == "a" && r.product_id == "P1")
        .unwrap();
    assert_eq!(a.impressions, 100, "both days summed");
    assert!(close(a.h, (10.0 + 2.0 * 2.0 + 4.0) / 110.0));
}

#[test]
fn sigterm_during_a_run_leaves_nothing_at_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
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
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("features.parquet");
    let mut child = bin()
        .env("RUST_LOG", "q2q_prior=info")
        .args([
            "run",
            "--engagement",
            data.join("engagement.parquet").to_str().unwrap(),
            "--neighbours",
            data.join("neighbours.parquet").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait until the job logs that it is computing and writing the features, then stop it
    let mut stderr_lines =
        std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut seen = String::new();
    for line in stderr_lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("computing prior and features") {
            break;
        }
    }
    assert!(
        seen.contains("computing prior and features"),
        "the job never reached the write: {seen}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished before it could be interrupted; use more synth queries"
    );
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    let err: String = stderr_lines.map(|l| l.unwrap() + "\n").collect();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn csv_product_ids_stay_strings() {
    // "00123" and "123" are different products; numeric inference would merge them
    let dir = tempfile::tempdir().unwrap();
    let e = write(
        dir.path(),
        "e.csv",
        "query,product_id,impressions,clicks,adds,purchases\na,00123,10,1,0,0\na,123,10,2,0,0\n",
    );
    let n = write(dir.path(), "n.csv", "query,neighbour,score\nb,a,1\n");
    // Parquet output keeps the type; a CSV reader would infer numbers again
    let out = dir.path().join("o.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let products: Vec<String> = read_features(&out)
        .into_iter()
        .filter(|r| r.query == "a")
        .map(|r| r.product_id)
        .collect();
    assert_eq!(products, ["00123", "123"]);
}

#[test]
fn a_uri_flag_keeps_the_other_input_keys_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("engagement");
    std::fs::create_dir_all(e.join("dt=2026-01-01")).unwrap();
    write(&e.join("dt=2026-01-01"), "part.txt", ENGAGEMENT);
    write(&e.join("dt=2026-01-01"), "_SUCCESS", "");
    write(dir.path(), "n.csv", NEIGHBOURS);
    let config = write(
        dir.path(),
        "job.toml",
        "engagement = { uri = \"elsewhere/\", format = \"csv\", partitioned = false }\nneighbours = \"n.csv\"\noutput = \"o.csv\"\n",
    );
    // the flag moves the input; format = csv (for .txt files) and partitioned = false still hold
    let glob = format!("{}/part.txt", e.join("dt=2026-01-01").display());
    let result = run(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--engagement",
        &glob,
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let rows = read_features_by(&dir.path().join("o.csv"), None);
    assert_eq!(rows[""].len(), 5, "no dt column, the .txt file read as CSV");
}

#[test]
fn an_explicit_format_on_a_folder_reads_only_files_of_that_format() {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("e");
    std::fs::create_dir_all(&e).unwrap();
    write(&e, "part-0.csv", ENGAGEMENT);
    write(&e, "_SUCCESS", "");
    write(&e, "_manifest.json", "{\"rows\": 3}");
    write(&e, "notes.txt", "not data");
    write(dir.path(), "n.csv", NEIGHBOURS);
    let config = write(
        dir.path(),
        "job.toml",
        "engagement = { uri = \"e/\", format = \"csv\" }\nneighbours = \"n.csv\"\noutput = \"o.parquet\"\n",
    );
    let result = run(&["run", "--config", config.to_str().unwrap()]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(read_features(&dir.path().join("o.parquet")).len(), 5);
}

#[test]
fn bad_neighbours_partitioned_by_a_column_engagement_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let e = write(dir.path(), "e.csv", ENGAGEMENT);
    let nd = dir.path().join("n");
    for market in ["US", "DE"] {
        std::fs::create_dir_all(nd.join(format!("market={market}"))).unwrap();
        write(&nd.join(format!("market={market}")), "n.csv", NEIGHBOURS);
    }
    let out = dir.path().join("o").join("f.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        &format!("{}/", nd.display()),
        out.to_str().unwrap(),
        &[],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'neighbours'")
            && err.contains("column 'market'")
            && err.contains("partitioned = false"),
        "{err}"
    );
    assert!(!out.parent().unwrap().exists());
}

#[test]
fn bad_partition_folder_named_like_an_output_column() {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("e");
    std::fs::create_dir_all(e.join("h=1")).unwrap();
    write(&e.join("h=1"), "part.csv", ENGAGEMENT);
    let n = write(dir.path(), "n.csv", NEIGHBOURS);
    let out = dir.path().join("o.parquet");
    let result = run_job(
        &format!("{}/", e.display()),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(
        err.contains("column 'h'") && err.contains("partition folder name"),
        "{err}"
    );
}

#[test]
fn bad_rows_found_while_scanning_name_the_input() {
    // a ragged line after the rows used for schema inference: a scan error, still exit 2
    let mut text = String::from("query,product_id,impressions,clicks,adds,purchases\n");
    for i in 0..1500 {
        text.push_str(&format!("q{i},P1,10,1,0,0\n"));
    }
    text.push_str("broken,P1,10\n");
    let dir = tempfile::tempdir().unwrap();
    let e = write(dir.path(), "e.csv", &text);
    let n = write(dir.path(), "n.csv", NEIGHBOURS);
    let out = dir.path().join("o.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'engagement'") && err.contains("cannot read the rows"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn memory_limit_is_accepted_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.csv");
    let mut args = tiny_args(&out);
    args.extend(["--memory-limit", "256MiB", "--target-partitions", "1"].map(String::from));
    let result = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(result.status.success(), "{}", stderr(&result));
    assert_same_features(
        &read_features(&out),
        &read_features(&root().join("fixtures/tiny/expected.csv")),
    );

    let mut args = tiny_args(&out);
    args.extend(["--memory-limit", "1MiB"].map(String::from));
    let result = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(result.status.code(), Some(2));
    assert!(
        stderr(&result).contains("memory_limit"),
        "{}",
        stderr(&result)
    );
}

#[test]
fn a_memory_limit_too_small_for_the_job_fails_with_a_hint_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let synth = run(&[
        "synth",
        "--queries",
        "20000",
        "--seed",
        "5",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(synth.status.success(), "{}", stderr(&synth));
    let out = dir.path().join("out").join("f.parquet");
    let result = run_job(
        data.join("engagement.parquet").to_str().unwrap(),
        data.join("neighbours.parquet").to_str().unwrap(),
        out.to_str().unwrap(),
        // the SQL plan with hash joins, which cannot spill (the merge plan's own limit is tested
        // in tests/plans.rs; at this size it fits)
        &["--memory-limit", "64MiB", "--plan", "sql", "--join", "hash"],
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(1), "{err}");
    assert!(err.contains("--memory-limit"), "{err}");
    assert!(
        !out.exists() && !out.parent().unwrap().exists(),
        "nothing at the destination"
    );
}

#[test]
fn synth_files_are_identical_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        let result = run(&[
            "synth",
            "--queries",
            "3000",
            "--seed",
            "11",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(result.status.success(), "{}", stderr(&result));
    }
    for name in ["engagement.parquet", "neighbours.parquet"] {
        assert_eq!(
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
            "{name}"
        );
    }
    let c = dir.path().join("c");
    run(&[
        "synth",
        "--queries",
        "3000",
        "--seed",
        "12",
        "--out",
        c.to_str().unwrap(),
    ]);
    assert_ne!(
        std::fs::read(a.join("neighbours.parquet")).unwrap(),
        std::fs::read(c.join("neighbours.parquet")).unwrap()
    );
}

#[test]
fn a_partitioned_csv_job_runs_from_flags_alone() {
    // (that every config key has a flag is checked by cli::tests in the library)
    // the same daily folders as above, configured by flags alone
    let dir = tempfile::tempdir().unwrap();
    let e = write_daily_folders(dir.path());
    let n = write(dir.path(), "n.txt", NEIGHBOURS);
    let out = dir.path().join("f.csv");
    let result = run_job(
        &format!("{}/", e.display()),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &[
            "--engagement-format",
            "csv",
            "--engagement-partitioned",
            "false",
            "--neighbours-format",
            "csv",
            "--on-duplicate",
            "sum",
            "--sort-output",
            "false",
        ],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let a = read_features(&out)
        .into_iter()
        .find(|r| r.query == "a" && r.product_id == "P1")
        .unwrap();
    assert_eq!(a.impressions, 100);
}

/// Two daily engagement folders (`dt=2026-01-01/`, `dt=2026-01-02/`) under `dir/engagement`;
/// (a, P1) appears on both days.
fn write_daily_folders(dir: &Path) -> std::path::PathBuf {
    let e = dir.join("engagement");
    for (day, text) in [
        (
            "2026-01-01",
            "query,product_id,impressions,clicks,adds,purchases\na,P1,60,6,1,0\n",
        ),
        (
            "2026-01-02",
            "query,product_id,impressions,clicks,adds,purchases\na,P1,40,4,1,1\nb,P1,5,1,0,0\n",
        ),
    ] {
        std::fs::create_dir_all(e.join(format!("dt={day}"))).unwrap();
        write(&e.join(format!("dt={day}")), "part-0.csv", text);
    }
    e
}
