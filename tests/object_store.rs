//! The job against a real S3-compatible server (moto_server, installed into `.venv` by `.ci/test`),
//! started by this test on 127.0.0.1: inputs and output as s3:// URLs, globs, the atomic write, and
//! bad input leaving nothing in the bucket.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Moto {
    child: Child,
    endpoint: String,
    python: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(venv_bin("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        child,
        endpoint,
        python: venv_bin("python"),
    }
}

impl Moto {
    /// Runs a boto3 snippet against the server; `s3` is a client bound to it.
    fn boto(&self, code: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{code}\n",
            self.endpoint
        );
        let out = Command::new(&self.python)
            .args(["-c", &script])
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn put(&self, key: &str, file: &std::path::Path) {
        self.boto(&format!(
            "s3.upload_file({:?}, 'q2q', {key:?})",
            file.to_str().unwrap()
        ));
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.boto(&format!(
            "for o in s3.list_objects_v2(Bucket='q2q', Prefix={prefix:?}).get('Contents', []): print(o['Key'])"
        ));
        out.lines().map(str::to_string).collect()
    }

    fn q2q(&self) -> Command {
        let mut cmd = bin();
        cmd.env("AWS_ENDPOINT", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE");
        cmd
    }
}

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
