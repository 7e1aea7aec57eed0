//! The job on a real Ballista cluster: `q2q-prior scheduler` and two `q2q-prior executor`
//! processes on 127.0.0.1, started here. A job, a backfill and a SQL statement through the
//! cluster give what the local run gives; killing an executor mid-job is covered too, and so is
//! a job that cannot run (no executors) ending with `--timeout-secs`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Cluster {
    url: String,
    port: u16,
    scheduler: Child,
    executors: Vec<Child>,
    /// Executors started so far (killed ones included): names their logs and folders.
    started: usize,
    logs: PathBuf,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.executors.iter_mut().chain([&mut self.scheduler]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// What a process wrote on stderr so far (its log).
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited with {status} before listening on {port}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scheduler and `executors` executors with `slots` task slots each, logging at info into `dir`.
fn start_cluster(dir: &Path, executors: usize, slots: usize) -> Cluster {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log =
        |name: &str| Stdio::from(std::fs::File::create(logs.join(format!("{name}.log"))).unwrap());
    let port = free_port();
    let mut scheduler = bin()
        .args([
            "scheduler",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--executor-timeout-secs",
            "8",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log("scheduler"))
        .spawn()
        .unwrap();
    wait_for_port(port, &mut scheduler, "the scheduler");
    let mut cluster = Cluster {
        url: format!("df://127.0.0.1:{port}"),
        port,
        scheduler,
        executors: Vec::new(),
        started: 0,
        logs,
        dir: dir.to_path_buf(),
    };
    for _ in 0..executors {
        cluster.add_executor(slots);
    }
    cluster
}

impl Cluster {
    /// Starts one more executor (`executor-N`, N counting every executor started so far) and
    /// waits for it to register.
    fn add_executor(&mut self, slots: usize) {
        let name = format!("executor-{}", self.started);
        self.started += 1;
        let (flight, grpc) = (free_port(), free_port());
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).unwrap();
        let mut executor = bin()
            .args([
                "executor",
                "--scheduler",
                &format!("127.0.0.1:{}", self.port),
                "--port",
                &flight.to_string(),
                "--grpc-port",
                &grpc.to_string(),
                "--concurrency",
                &slots.to_string(),
                "--heartbeat-secs",
                "1",
                "--work-dir",
                self.dir.join(&name).to_str().unwrap(),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_for_port(flight, &mut executor, "an executor");
        self.executors.push(executor);
        // executors register with their first heartbeat
        std::thread::sleep(Duration::from_secs(2));
    }

    /// Tasks `name`'s log shows started so far.
    fn tasks(&self, name: &str) -> usize {
        self.log(name).matches("Execute task").count()
    }

    /// Waits until `name`'s log shows more than `after` started tasks.
    fn wait_for_task(&self, name: &str, after: usize) {
        self.wait_for_any_task(&[(name, after)]);
    }

    /// Waits until one of the executors shows more started tasks than its count; returns which.
    fn wait_for_any_task(&self, executors: &[(&str, usize)]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(i) = executors
                .iter()
                .position(|(name, after)| self.tasks(name) > *after)
            {
                return i;
            }
            assert!(Instant::now() < deadline, "{executors:?} got no task");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    stderr(out)
}

fn synth(dir: &Path, queries: &str) -> (String, String) {
    let data = dir.join(format!("synth-{queries}"));
    ok(&run(&[
        "synth",
        "--queries",
        queries,
        "--seed",
        "11",
        "--out",
        data.to_str().unwrap(),
    ]));
    (
        data.join("engagement.parquet")
            .to_str()
            .unwrap()
            .to_string(),
        data.join("neighbours.parquet")
            .to_str()
            .unwrap()
            .to_string(),
    )
}

#[test]
fn the_job_backfill_and_sql_on_two_executors_equal_the_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (engagement, neighbours) = synth(dir, "3000");
    // one slot each: both executors must take part
    let cluster = start_cluster(dir, 2, 1);

    let local = dir.join("local.parquet");
    ok(&run_job(
        &engagement,
        &neighbours,
        local.to_str().unwrap(),
        &["--top-k", "10"],
    ));
    let remote = dir.join("cluster.parquet");
    let log = ok(&run_job(
        &engagement,
        &neighbours,
        remote.to_str().unwrap(),
        &["--top-k", "10", "--cluster", &cluster.url],
    ));
    let expected = read_features(&local);
    assert!(expected.len() > 10_000, "{}", expected.len());
    // the default plan: the merge operator, carried to the executors by the project's codecs
    assert_same_features(&read_features(&remote), &expected);
    assert!(log.contains("merge (cluster)"), "{log}");
    // the SQL stages give the same rows on the cluster too
    let remote_sql = dir.join("cluster-sql.parquet");
    let log = ok(&run_job(
        &engagement,
        &neighbours,
        remote_sql.to_str().unwrap(),
        &["--top-k", "10", "--cluster", &cluster.url, "--plan", "sql"],
    ));
    assert_same_features(&read_features(&remote_sql), &expected);
    assert!(log.contains("sql (cluster)"), "{log}");
    // the bayes blend travels too: in the merge operator's parameters and as the SQL plan's UDF
    let bayes = [
        "--top-k",
        "10",
        "--blend",
        "bayes",
        "--prior-weighting",
        "score",
    ];
    let local_bayes = dir.join("local-bayes.parquet");
    ok(&run_job(
        &engagement,
        &neighbours,
        local_bayes.to_str().unwrap(),
        &bayes,
    ));
    let expected_bayes = read_features(&local_bayes);
    for plan in ["merge", "sql"] {
        let remote = dir.join(format!("cluster-bayes-{plan}.parquet"));
        let mut args = bayes.to_vec();
        args.extend(["--cluster", &cluster.url, "--plan", plan]);
        ok(&run_job(
            &engagement,
            &neighbours,
            remote.to_str().unwrap(),
            &args,
        ));
        assert_same_features(&read_features(&remote), &expected_bayes);
    }
    // both executors ran tasks of it
    for i in 0..2 {
        let executor = cluster.log(&format!("executor-{i}"));
        assert!(
            executor.contains("task") || executor.contains("Task"),
            "executor-{i} ran nothing:\n{executor}"
        );
    }

    // the SQL shell: a query over the job's views, on the cluster, with a project UDF
    let query = "SELECT count(*) AS n, round(sum(f), 6) AS f, max(normalize_query(query)) AS q \
                 FROM features";
    let sql = |extra: &[&str]| {
        let out = bin()
            .args([
                "sql",
                "--engagement",
                &engagement,
                "--neighbours",
                &neighbours,
                "--top-k",
                "10",
                "--format",
                "csv",
                "-q",
                "-c",
                query,
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let here = sql(&["--plan", "sql"]);
    assert_eq!(sql(&["--cluster", &cluster.url]), here);
    assert!(
        here.lines()
            .nth(1)
            .unwrap()
            .starts_with(&expected.len().to_string())
    );

    // backfill through the cluster: the same partitions as a local backfill
    let config = root().join("fixtures/daily/job.toml");
    // a backfill of the four days; its summary must say how many it built
    let backfill_built = |out: &Path, extra: &[&str], built: &str| {
        let o = bin()
            .args([
                "backfill",
                "--config",
                config.to_str().unwrap(),
                "--from",
                "2026-01-02",
                "--to",
                "2026-01-05",
                "--output",
                out.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(ok(&o).contains(built), "{}", stderr(&o));
    };
    let backfill = |out: &Path, extra: &[&str]| backfill_built(out, extra, "4 built");
    let (here, there) = (dir.join("daily-local"), dir.join("daily-cluster"));
    backfill(&here, &[]);
    backfill(&there, &["--cluster", &cluster.url]);
    // a day's rows, from the files its manifest lists (each with the size and SHA-256 it has)
    let day_files = |root: &Path, day: &str| {
        let partition = root.join(format!("dt={day}"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(partition.join("_manifest.json")).unwrap())
                .unwrap();
        let files: Vec<PathBuf> = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let path = partition.join(f["path"].as_str().unwrap());
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap(), "{f}");
                assert_eq!(sha256_hex(&bytes), f["sha256"].as_str().unwrap(), "{f}");
                path
            })
            .collect();
        // what the day's folder holds: its files, the manifest and _SUCCESS (no staging left)
        let mut held: Vec<String> = std::fs::read_dir(&partition)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        held.sort();
        let mut listed: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
            .chain(["_SUCCESS".into(), "_manifest.json".into()])
            .collect();
        listed.sort();
        assert_eq!(held, listed, "{}", partition.display());
        files
    };
    let day_rows = |files: &[PathBuf]| {
        let mut rows: Vec<_> = files.iter().flat_map(|f| read_features(f)).collect();
        rows.sort_by(|a, b| (&a.query, &a.product_id).cmp(&(&b.query, &b.product_id)));
        rows
    };
    for day in ["2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"] {
        let (local, remote) = (day_files(&here, day), day_files(&there, day));
        assert_eq!(local.len(), 1, "{local:?}");
        // on the cluster the executors wrote the day as parts, one per task of the writing stage
        assert!(remote.len() > 1, "{remote:?}");
        assert_same_features(&day_rows(&remote), &day_rows(&local));
    }
    // a rerun finds every day current from the manifests
    backfill_built(&there, &["--cluster", &cluster.url], "0 built");

    // a Delta backfill through the cluster: the executors write each day's data files, the client
    // commits each day; delta-rs's reader sees the local days, and a rerun finds every day
    // current from the table's log alone
    let delta = dir.join("daily-delta");
    backfill(&delta, &["--cluster", &cluster.url, "--format", "delta"]);
    backfill_built(
        &delta,
        &["--cluster", &cluster.url, "--format", "delta"],
        "0 built",
    );
    let read = dir.join("daily-delta.parquet");
    python(
        &format!(
            "import sys\nfrom deltalake import DeltaTable\nimport pyarrow as pa, pyarrow.parquet as pq\n\
             t = DeltaTable(sys.argv[1]).to_pyarrow_table()\n\
             t = t.set_column(t.column_names.index('dt'), 'dt', t['dt'].cast(pa.string()))\n\
             pq.write_table(t, sys.argv[2]){EXIT_PY}"
        ),
        &[delta.to_str().unwrap(), read.to_str().unwrap()],
    );
    let days = common::read_features_by(&read, Some("dt"));
    assert_eq!(days.len(), 4, "{:?}", days.keys().collect::<Vec<_>>());
    for (day, rows) in &days {
        let partition = here.join(format!("dt={day}"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(partition.join("_manifest.json")).unwrap())
                .unwrap();
        let local = partition.join(manifest["files"][0]["path"].as_str().unwrap());
        assert_same_features(rows, &read_features(&local));
    }
}

/// The pids of the writers `_SUCCESS` lists for a parts folder, part by part.
fn part_writers(folder: &Path) -> Vec<u32> {
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("_SUCCESS")).unwrap()).unwrap();
    listing["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let writer = p["writer"].as_str().unwrap();
            writer.rsplit_once(':').unwrap().1.parse().unwrap()
        })
        .collect()
}

#[test]
fn the_merge_stage_runs_as_tasks_on_both_executors_which_write_the_parts() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (engagement, neighbours) = synth(dir, "3000");
    let local = dir.join("local.parquet");
    let local_log = ok(&run_job(
        &engagement,
        &neighbours,
        local.to_str().unwrap(),
        &["--top-k", "10"],
    ));
    let expected = read_features(&local);
    // one slot each: the four shares must spread over both
    let cluster = start_cluster(dir, 2, 1);
    let folder = dir.join("parts");
    let uri = format!("{}/", folder.to_str().unwrap());
    let log = ok(&run_job(
        &engagement,
        &neighbours,
        &uri,
        &[
            "--top-k",
            "10",
            "--partitions",
            "4",
            "--cluster",
            &cluster.url,
        ],
    ));
    // the replication the split by query cost, from the tasks' own counters: every task read
    // the whole history (the local run's) and held its queries' rows and their neighbours'
    let figure = |log: &str, after: &str| -> u64 {
        let at = log
            .find(after)
            .unwrap_or_else(|| panic!("no {after:?} in {log}"))
            + after.len();
        let digits: String = log[at..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let history = figure(&local_log, "read history + H, intern");
    let line = log
        .lines()
        .find(|l| l.contains("history the tasks held"))
        .unwrap();
    let held = figure(line, "x the history (");
    assert_eq!(figure(line, " rows of "), history, "{line}");
    assert!(
        history < held && held < 4 * history,
        "{line}: {history} history rows"
    );
    // the neighbour sets, counted by the tasks (no job of their own): the local run's
    let sets = figure(&local_log, "index + neighbour sets");
    let line = log.lines().find(|l| l.contains("neighbour_sets")).unwrap();
    assert!(line.contains("(in the merge stage)"), "{line}");
    // "neighbour_sets <rows in> <sets' rows> (in the merge stage)"
    let rows_out: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(rows_out, sets, "{line}");
    assert_eq!(
        figure(&log, "queries with a prior:"),
        figure(&local_log, "queries with a prior:"),
        "{log}"
    );
    // each share was computed and written by an executor, and both took part: the client got
    // four report rows, never the features
    let executors: Vec<u32> = cluster.executors.iter().map(|e| e.id()).collect();
    let writers = part_writers(&folder);
    assert_eq!(writers.len(), 4, "{writers:?}");
    assert!(
        writers.iter().all(|w| executors.contains(w)),
        "{writers:?} vs {executors:?}"
    );
    for e in &executors {
        assert!(
            writers.contains(e),
            "executor {e} wrote no part: {writers:?}"
        );
    }
    // read together the parts are the local output; each is sorted
    assert_same_features(&read_features(&folder), &expected);
    for i in 0..4 {
        let part =
            common::read_features_in_file_order(&folder.join(format!("part-{i:05}.parquet")));
        assert!(
            part.windows(2)
                .all(|w| (&w[0].query, &w[0].product_id) < (&w[1].query, &w[1].product_id)),
            "part {i} is sorted"
        );
    }
    // a file through the client from three shares: every row once (Ballista 55 ran every
    // partition of a stage in each of its tasks when the operator's partitions did not come from
    // a leaf, and the rows came back doubled)
    let file = dir.join("three-shares.parquet");
    ok(&run_job(
        &engagement,
        &neighbours,
        file.to_str().unwrap(),
        &[
            "--top-k",
            "10",
            "--partitions",
            "3",
            "--cluster",
            &cluster.url,
        ],
    ));
    assert_same_features(&read_features(&file), &expected);

    // a Delta table from four shares, twice: the executors write the data files (delta-rs's
    // writer), the client commits them, replacing the first build in one commit; delta-rs's
    // Python reader sees the local output's rows once
    let table = dir.join("delta");
    for _ in 0..2 {
        ok(&run_job(
            &engagement,
            &neighbours,
            table.to_str().unwrap(),
            &[
                "--top-k",
                "10",
                "--partitions",
                "4",
                "--format",
                "delta",
                "--cluster",
                &cluster.url,
            ],
        ));
    }
    let read = dir.join("delta-read.parquet");
    let version = python(
        &format!(
            "import sys\nfrom deltalake import DeltaTable\nimport pyarrow.parquet as pq\n\
             t = DeltaTable(sys.argv[1])\npq.write_table(t.to_pyarrow_table(), sys.argv[2])\n\
             print(t.version(), len(t.file_uris())){EXIT_PY}"
        ),
        &[table.to_str().unwrap(), read.to_str().unwrap()],
    );
    assert_same_features(&read_features(&read), &expected);
    // version 0 created the table empty, 1 and 2 are the builds; each build's files are one per
    // share, and its commit names the executors that wrote them
    assert_eq!(version.trim(), "2 4", "{version}");
    let log = std::fs::read_to_string(table.join("_delta_log/00000000000000000002.json")).unwrap();
    let info: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find_map(|a| a.get("commitInfo").cloned())
        .unwrap();
    let writers: Vec<u32> = info["q2qPriorWriters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w.as_str()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .1
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(writers.len(), 2, "{info}");
    assert!(
        writers.iter().all(|w| executors.contains(w)),
        "{writers:?} vs {executors:?}"
    );
    assert_eq!(log.matches("\"remove\"").count(), 4, "{log}");
    assert_eq!(
        info["operationMetrics"]["num_added_rows"].as_u64(),
        Some(expected.len() as u64)
    );
}

#[test]
fn bad_cluster_urls_and_an_unreachable_scheduler_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.parquet");
    let tiny = root().join("fixtures/tiny");
    let (e, n) = (tiny.join("engagement.csv"), tiny.join("neighbours.csv"));
    let job = |cluster: &str| {
        run_job(
            e.to_str().unwrap(),
            n.to_str().unwrap(),
            out.to_str().unwrap(),
            &["--cluster", cluster],
        )
    };
    let bad = job("http://127.0.0.1:1");
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("df://HOST:PORT"), "{}", stderr(&bad));

    let nobody = job(&format!("df://127.0.0.1:{}", free_port()));
    assert_eq!(nobody.status.code(), Some(1), "{}", stderr(&nobody));
    assert!(stderr(&nobody).contains("127.0.0.1"), "{}", stderr(&nobody));
    assert!(!out.exists(), "nothing written");

    // a scheduler without executors never runs the job: --timeout-secs ends the wait
    let dir = tempfile::tempdir().unwrap();
    let idle = start_cluster(dir.path(), 0, 1);
    let stalled = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--cluster", &idle.url, "--timeout-secs", "3"],
    );
    assert_eq!(stalled.status.code(), Some(1), "{}", stderr(&stalled));
    let message = stderr(&stalled);
    assert!(
        message.contains("did not finish within 3 s") && message.contains("scheduler's log"),
        "{message}"
    );
    // (the message is the timeout's own: it, not a failure or the test harness, ended the wait)
    assert!(!out.exists(), "nothing written");
    assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 0);
}

/// Kills one of two executors while the job runs: the scheduler notices at once (its next task
/// launch there fails) and Ballista reruns the lost tasks on the other executor; the job
/// finishes with the local run's output. Then kills the last one during a second job: a clear
/// error, nothing written, and a clean rerun once an executor is back. Two slots per executor: Ballista 55 loses the slot of
/// a task whose stage it rolls back, and with one slot the survivor would have none left
/// (docs/DISTRIBUTED.md).
#[test]
fn the_job_survives_losing_an_executor() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (engagement, neighbours) = synth(dir, "3000");
    let local = dir.join("local.parquet");
    ok(&run_job(
        &engagement,
        &neighbours,
        local.to_str().unwrap(),
        &["--top-k", "10"],
    ));

    let mut cluster = start_cluster(dir, 2, 2);
    // a folder of four parts, which the executors write
    let url = cluster.url.clone();
    let spawn_job = |output: &str, options: &[&str]| {
        bin()
            .args([
                "run",
                "--engagement",
                &engagement,
                "--neighbours",
                &neighbours,
                "--output",
                output,
                "--top-k",
                "10",
                "--cluster",
                &url,
            ])
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let parts_job = |remote: &Path| {
        spawn_job(
            &format!("{}/", remote.to_str().unwrap()),
            &["--partitions", "4", "--timeout-secs", "600"],
        )
    };
    let executors = ["executor-0", "executor-1"];
    let tasks = |cluster: &Cluster| executors.map(|name| cluster.tasks(name));
    // the tasks the job takes when nothing fails, to count the reruns against
    let before = tasks(&cluster);
    ok(&parts_job(&dir.join("clean")).wait_with_output().unwrap());
    let clean: usize = (0..2).map(|i| tasks(&cluster)[i] - before[i]).sum();

    let before = tasks(&cluster);
    let remote = dir.join("cluster");
    let job = parts_job(&remote);
    // the victim has started a task of the job (a fixed sleep could land after the job); which
    // executor the scheduler picks first is up to it
    let victim = cluster.wait_for_any_task(&[(executors[0], before[0]), (executors[1], before[1])]);
    let survivor = format!("executor-{}", 1 - victim);
    let mut victim_process = cluster.executors.remove(victim);
    victim_process.kill().unwrap();
    victim_process.wait().unwrap();

    let out = job.wait_with_output().unwrap();
    ok(&out);
    // Ballista reran the lost executor's tasks and no others: the job took more tasks than a
    // clean run by at most the tasks the victim had started
    let after = tasks(&cluster);
    let by_victim = after[victim] - before[victim];
    let by_survivor = after[1 - victim] - before[1 - victim];
    let reruns = (by_victim + by_survivor).saturating_sub(clean);
    assert!(
        (1..=by_victim).contains(&reruns),
        "a clean run takes {clean} tasks; with the loss the victim started {by_victim} and the \
         survivor {by_survivor}: {reruns} reruns"
    );
    let scheduler = cluster.log("scheduler");
    assert!(
        scheduler.contains("Removing executor"),
        "the scheduler did not notice the loss:\n{scheduler}"
    );
    assert_same_features(&read_features(&remote), &read_features(&local));
    // the survivor wrote what the lost one did not finish; nothing staged is left
    let survivor_pid = cluster.executors[0].id();
    let writers = part_writers(&remote);
    assert_eq!(writers.len(), 4, "{writers:?}");
    assert!(writers.contains(&survivor_pid), "{writers:?}");
    assert_only_parts(&remote);

    // losing the last executor fails the job clearly (after the scheduler's executor timeout,
    // its grace period for one to come back), writes nothing, and a rerun then succeeds
    let again = dir.join("again.parquet");
    let job = || spawn_job(again.to_str().unwrap(), &[]);
    let tasks_so_far = cluster.tasks(&survivor);
    let doomed = job();
    cluster.wait_for_task(&survivor, tasks_so_far);
    let mut last = cluster.executors.remove(0);
    last.kill().unwrap();
    last.wait().unwrap();
    let failed = doomed.wait_with_output().unwrap();
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("all executors were lost"),
        "{}",
        stderr(&failed)
    );
    assert!(!again.exists(), "nothing written");
    let staging: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");

    cluster.add_executor(2);
    ok(&job().wait_with_output().unwrap());
    assert_same_features(&read_features(&again), &read_features(&local));
}

/// `q2q-prior standalone`: scheduler and executors in one process on 127.0.0.1, for trials.
#[test]
fn a_standalone_cluster_runs_the_job_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let work = dir.path().join("work");
    let mut standalone = bin()
        .args([
            "standalone",
            "--port",
            &port.to_string(),
            "--executors",
            "2",
            "--work-dir",
            work.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut standalone, "the standalone cluster");
    std::thread::sleep(Duration::from_secs(2));

    let tiny = root().join("fixtures/tiny");
    let (e, n) = (tiny.join("engagement.csv"), tiny.join("neighbours.csv"));
    let job = |out: &Path, extra: &[&str]| {
        ok(&run_job(
            e.to_str().unwrap(),
            n.to_str().unwrap(),
            out.to_str().unwrap(),
            extra,
        ))
    };
    let (here, there) = (
        dir.path().join("here.parquet"),
        dir.path().join("there.parquet"),
    );
    job(&here, &[]);
    let url = format!("df://127.0.0.1:{port}");
    assert!(job(&there, &["--cluster", &url]).contains("merge (cluster)"));
    assert_same_features(&read_features(&there), &read_features(&here));
    assert!(work.join("executor-0").is_dir() && work.join("executor-1").is_dir());

    let stopped = std::process::Command::new("kill")
        .args(["-INT", &standalone.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let out = standalone.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("standalone cluster: {url} (2 executor(s)")),
        "{}",
        stderr(&out)
    );
}

/// Inputs and output on S3 (moto on 127.0.0.1): the executors read the inputs with stores built
/// from their own environment; the client writes the output there.
#[test]
fn a_cluster_job_reads_and_writes_s3() {
    let moto = common::moto::start_moto();
    moto.boto("s3.create_bucket(Bucket='q2q')");
    let dir = tempfile::tempdir().unwrap();
    let tiny = root().join("fixtures/tiny");
    moto.put("in/engagement.csv", &tiny.join("engagement.csv"));
    moto.put("in/neighbours.csv", &tiny.join("neighbours.csv"));

    let port = free_port();
    let mut standalone = moto
        .q2q()
        .args([
            "standalone",
            "--port",
            &port.to_string(),
            "--executors",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut standalone, "the standalone cluster");
    std::thread::sleep(Duration::from_secs(2));
    let stop = KillOnDrop(standalone);

    let out = moto
        .q2q()
        .args([
            "run",
            "--engagement",
            "s3://q2q/in/engagement.csv",
            "--neighbours",
            "s3://q2q/in/neighbours.csv",
            "--output",
            "s3://q2q/out/features.parquet",
            "--cluster",
            &format!("df://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(ok(&out).contains("merge (cluster)"));
    // a folder of parts on S3: the executors write three shares, the client commits them
    let parts = moto
        .q2q()
        .args([
            "run",
            "--engagement",
            "s3://q2q/in/engagement.csv",
            "--neighbours",
            "s3://q2q/in/neighbours.csv",
            "--output",
            "s3://q2q/out/parts/",
            "--partitions",
            "3",
            "--cluster",
            &format!("df://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    ok(&parts);
    drop(stop);
    assert_eq!(
        moto.keys("out/"),
        [
            "out/features.parquet",
            "out/parts/_SUCCESS",
            "out/parts/part-00000.parquet",
            "out/parts/part-00001.parquet",
            "out/parts/part-00002.parquet",
        ],
        "the parts and their marker, nothing staged"
    );

    let local = dir.path().join("local.parquet");
    ok(&run_job(
        tiny.join("engagement.csv").to_str().unwrap(),
        tiny.join("neighbours.csv").to_str().unwrap(),
        local.to_str().unwrap(),
        &[],
    ));
    let fetched = dir.path().join("fetched.parquet");
    moto.boto(&format!(
        "s3.download_file('q2q', 'out/features.parquet', {:?})",
        fetched.to_str().unwrap()
    ));
    assert_same_features(&read_features(&fetched), &read_features(&local));
    let folder = dir.path().join("parts");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..3 {
        let name = format!("part-{i:05}.parquet");
        moto.boto(&format!(
            "s3.download_file('q2q', 'out/parts/{name}', {:?})",
            folder.join(&name).to_str().unwrap()
        ));
    }
    assert_same_features(&read_features(&folder), &read_features(&local));
}

/// Kills the child when dropped (also when an assertion fails first).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
