//! The job against a real S3-compatible server (moto_server, installed into `.venv` by `.ci/test`),
//! started by this test on 127.0.0.1: inputs and output as s3:// URLs, globs, the atomic write, and
//! bad input leaving nothing in the bucket.

mod common;

use common::moto::start_moto;
use common::*;

#[test]
fn feature_job_on_s3() {
    let moto = start_moto();
    moto.boto("s3.create_bucket(Bucket='q2q')");
    let tiny = root().join("fixtures/tiny");
    moto.put("in/engagement/part-0.csv", &tiny.join("engagement.csv"));
    moto.put("in/neighbours.csv", &tiny.join("neighbours.csv"));
    moto.put("features/keep-me.txt", &tiny.join("job.toml"));

    // a glob in an s3:// URL, output as s3://, written atomically
    let out = moto
        .q2q()
        .args([
            "run",
            "--engagement",
            "s3://q2q/in/engagement/part-*.csv",
            "--neighbours",
            "s3://q2q/in/neighbours.csv",
            "--output",
            "s3://q2q/features/features.parquet",
            "--min-score",
            "0.1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        moto.keys("features/"),
        vec!["features/features.parquet", "features/keep-me.txt"],
        "no staging objects left"
    );

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("features.parquet");
    moto.boto(&format!(
        "s3.download_file('q2q', 'features/features.parquet', {:?})",
        local.to_str().unwrap()
    ));
    assert_same_features(
        &read_features(&local),
        &read_features(&tiny.join("expected.csv")),
    );

    // bad input: exit 2 and the bucket is unchanged
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "query,product_id,impressions,clicks,adds,purchases\na,P1,3,5,0,0\n",
    )
    .unwrap();
    moto.put("in/bad/engagement.csv", &bad);
    let out = moto
        .q2q()
        .args([
            "run",
            "--engagement",
            "s3://q2q/in/bad/",
            "--neighbours",
            "s3://q2q/in/neighbours.csv",
            "--output",
            "s3://q2q/bad-out/features.parquet",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("clicks_above_impressions"),
        "{}",
        stderr(&out)
    );
    assert!(moto.keys("bad-out/").is_empty());

    // an unreachable bucket is a clear input error
    let out = moto
        .q2q()
        .args([
            "run",
            "--engagement",
            "s3://no-such-bucket/e.csv",
            "--neighbours",
            "s3://q2q/in/neighbours.csv",
            "-o",
            "s3://q2q/x.parquet",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("'engagement'"), "{}", stderr(&out));
}

#[test]
fn sql_shell_reads_and_writes_s3() {
    let moto = start_moto();
    moto.boto("s3.create_bucket(Bucket='q2q')");
    let tiny = root().join("fixtures/tiny");
    moto.put("in/engagement.csv", &tiny.join("engagement.csv"));
    moto.put("in/neighbours.csv", &tiny.join("neighbours.csv"));
    let shell = |sql: &str, extra: &[&str]| {
        moto.q2q()
            .args([
                "sql",
                "--engagement",
                "s3://q2q/in/engagement.csv",
                "--neighbours",
                "s3://q2q/in/neighbours.csv",
                "--min-score",
                "0.1",
                "-c",
                sql,
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    // COPY ... TO an s3:// URL, then read that object back as a table by its URL
    let out = shell(
        "COPY (SELECT * FROM features ORDER BY query, product_id) TO 's3://q2q/copy/features.parquet'",
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(moto.keys("copy/"), vec!["copy/features.parquet"]);
    let out = shell(
        "SELECT COUNT(*) AS n FROM 's3://q2q/copy/features.parquet'",
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n16\n");

    // -o to s3: atomic, and the same rows as the run's expected table
    let out = shell(
        "SELECT * FROM features ORDER BY query, product_id",
        &["-o", "s3://q2q/out/features.csv"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(moto.keys("out/"), vec!["out/features.csv"]);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("features.csv");
    moto.boto(&format!(
        "s3.download_file('q2q', 'out/features.csv', {:?})",
        local.to_str().unwrap()
    ));
    assert_same_features(
        &read_features(&local),
        &read_features(&tiny.join("expected.csv")),
    );
}

#[test]
fn synth_writes_to_s3_the_files_it_writes_locally() {
    let moto = start_moto();
    moto.boto("s3.create_bucket(Bucket='q2q')");
    let dir = tempfile::tempdir().unwrap();
    let synth = |out: &str, format: &str| {
        let result = moto
            .q2q()
            .args([
                "synth",
                "--queries",
                "300",
                "--seed",
                "7",
                "--format",
                format,
                "--later-period",
                "--out",
                out,
            ])
            .output()
            .unwrap();
        assert!(result.status.success(), "{}", stderr(&result));
    };
    for format in ["parquet", "csv"] {
        let local = dir.path().join(format);
        synth(local.to_str().unwrap(), format);
        synth(&format!("s3://q2q/synth-{format}/"), format);
        let ext = if format == "csv" { "csv" } else { "parquet" };
        let names: Vec<String> = ["engagement", "neighbours", "engagement_later"]
            .iter()
            .map(|n| format!("{n}.{ext}"))
            .collect();
        let mut expected: Vec<String> = names
            .iter()
            .map(|n| format!("synth-{format}/{n}"))
            .collect();
        expected.sort();
        assert_eq!(
            moto.keys(&format!("synth-{format}/")),
            expected,
            "exactly the three files, nothing staged left"
        );
        for name in &names {
            let fetched = dir.path().join(format!("fetched-{format}-{name}"));
            moto.boto(&format!(
                "s3.download_file('q2q', 'synth-{format}/{name}', {:?})",
                fetched.to_str().unwrap()
            ));
            assert_eq!(
                std::fs::read(&fetched).unwrap(),
                std::fs::read(local.join(name)).unwrap(),
                "{format} {name}: the same bytes as the local file"
            );
        }
    }
    // the job reads them where synth wrote them
    let out = moto
        .q2q()
        .args([
            "run",
            "--engagement",
            "s3://q2q/synth-parquet/engagement.parquet",
            "--neighbours",
            "s3://q2q/synth-parquet/neighbours.parquet",
            "-o",
            "s3://q2q/features/synth.parquet",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
