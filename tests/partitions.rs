//! The merge plan cut into N output partitions (`--partitions`): whatever N, `run` writes the
//! same file, byte for byte, on every fixture and on synthetic data with each option that
//! changes what the operator reads (normalized keys, summed duplicates, partition folders, both
//! prior weightings, both blends, integer product ids). Rows are checked against the SQL plan in
//! tests/plans.rs and against the reference in tests/property.rs (which draws N too).

mod common;

use std::path::{Path, PathBuf};

use common::{run, run_job, stderr};

/// 1, 2, 3, 7, and more partitions than any input here has queries.
const PARTITIONS: [&str; 5] = ["1", "2", "3", "7", "4096"];

/// Runs the job once per N in [`PARTITIONS`] and asserts every output equals N = 1's, byte for
/// byte; also that the run used N partitions in each of the input's `slices` (partition
/// folders). Returns the output of N = 1.
fn assert_same_whatever_the_partitions(
    engagement: &str,
    neighbours: &str,
    slices: usize,
    extra: &[&str],
) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut first: Option<Vec<u8>> = None;
    for n in PARTITIONS {
        let out = dir.path().join(format!("features.{n}.parquet"));
        let mut args = vec!["--partitions", n];
        args.extend(extra);
        let result = run_job(engagement, neighbours, out.to_str().unwrap(), &args);
        assert!(
            result.status.success(),
            "N = {n} {extra:?}: {}",
            stderr(&result)
        );
        let summary = stderr(&result);
        let used = n.parse::<usize>().unwrap() * slices;
        assert!(
            summary.contains(&format!("prior + blend ({used:>3} partitions)")),
            "N = {n}: {summary}"
        );
        // one partition needs the history once; more need a neighbour's history in each citing it
        let factor: f64 = summary
            .split("history a partition needs, summed: ")
            .nth(1)
            .and_then(|rest| rest.split('x').next())
            .unwrap_or_else(|| panic!("no replication factor in {summary}"))
            .parse()
            .unwrap();
        if n == "1" {
            assert_eq!(factor, 1.0, "{summary}");
        } else {
            assert!(factor >= 1.0, "{summary}");
        }
        let bytes = std::fs::read(&out).unwrap();
        match &first {
            None => first = Some(bytes),
            Some(expected) => assert!(
                bytes == *expected,
                "N = {n} {extra:?} wrote another file than N = 1 ({} vs {} bytes; rows differ: {})",
                bytes.len(),
                expected.len(),
                common::read_features_in_file_order(&out)
                    != common::read_features_in_file_order(&dir.path().join("features.1.parquet"))
            ),
        }
    }
    first.unwrap()
}

fn synth(dir: &Path, queries: &str, seed: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let mut args = vec![
        "synth",
        "--queries",
        queries,
        "--seed",
        seed,
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend(extra);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let ext = if extra.contains(&"csv") {
        "csv"
    } else {
        "parquet"
    };
    (
        dir.join(format!("engagement.{ext}")),
        dir.join(format!("neighbours.{ext}")),
    )
}

#[test]
fn every_partitioning_writes_the_same_file_on_the_fixtures() {
    for fixture in ["tiny", "demo"] {
        let root = common::root().join("fixtures").join(fixture);
        let (e, n) = (root.join("engagement.csv"), root.join("neighbours.csv"));
        let bytes =
            assert_same_whatever_the_partitions(e.to_str().unwrap(), n.to_str().unwrap(), 1, &[]);
        assert!(!bytes.is_empty());

        // unsorted output: the partitions' rows interleave, the same rows
        let dir = tempfile::tempdir().unwrap();
        let [sorted, unsorted] = ["true", "false"].map(|sort| {
            let out = dir.path().join(format!("features.{sort}.parquet"));
            let result = run_job(
                e.to_str().unwrap(),
                n.to_str().unwrap(),
                out.to_str().unwrap(),
                &["--partitions", "3", "--sort-output", sort],
            );
            assert!(result.status.success(), "{}", stderr(&result));
            common::read_features(&out)
        });
        common::assert_same_features(&unsorted, &sorted);
    }
}

#[test]
fn every_partitioning_writes_the_same_file_on_synthetic_data_with_every_option() {
    let data = tempfile::tempdir().unwrap();
    let (e, n) = synth(data.path(), "2000", "21", &[]);
    let (e, n) = (e.to_str().unwrap(), n.to_str().unwrap());
    let cases: [&[&str]; 4] = [
        &["--top-k", "10"],
        &[
            "--prior-weighting",
            "score",
            "--blend",
            "bayes",
            "--min-score",
            "0.5",
        ],
        // normalized keys: collapsed engagement rows summed, new self-pairs dropped
        &[
            "--engagement-normalize",
            "true",
            "--neighbours-normalize",
            "true",
            "--on-duplicate",
            "sum",
        ],
        // fewer plan partitions than output partitions, and more
        &["--target-partitions", "1", "--top-k", "3"],
    ];
    for extra in cases {
        assert_same_whatever_the_partitions(e, n, 1, extra);
    }
}

#[test]
fn every_partitioning_writes_the_same_file_on_partition_folders_and_integer_ids() {
    let data = tempfile::tempdir().unwrap();
    let (e, n) = synth(data.path(), "600", "8", &["--format", "csv"]);
    // two market folders, read as two independent slices, each cut into N partitions
    let folders = data.path().join("engagement");
    for market in ["DE", "US"] {
        let folder = folders.join(format!("market={market}"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(&e, folder.join("part-0.csv")).unwrap();
    }
    let folders = format!("{}/", folders.display());
    assert_same_whatever_the_partitions(&folders, n.to_str().unwrap(), 2, &["--top-k", "5"]);

    // integer product ids, odd ones negated (numeric order differs from text order)
    let ints = data.path().join("engagement.int.parquet");
    common::with_integer_product_ids(&e, &ints, "BIGINT");
    assert_same_whatever_the_partitions(
        ints.to_str().unwrap(),
        n.to_str().unwrap(),
        1,
        &["--prior-weighting", "score"],
    );
}

#[test]
fn partitions_out_of_range_are_refused() {
    let root = common::root().join("fixtures/tiny");
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "4097", "x"] {
        let out = dir.path().join("f.parquet");
        let result = run_job(
            root.join("engagement.csv").to_str().unwrap(),
            root.join("neighbours.csv").to_str().unwrap(),
            out.to_str().unwrap(),
            &["--partitions", bad],
        );
        assert_eq!(result.status.code(), Some(2), "{bad}: {}", stderr(&result));
        assert!(
            stderr(&result).contains("--partitions"),
            "{}",
            stderr(&result)
        );
        assert!(!out.exists());
    }
    // the same bound in a config file
    let config = common::write(
        dir.path(),
        "job.toml",
        &format!(
            "engagement = {:?}\nneighbours = {:?}\noutput = {:?}\n[execution]\npartitions = 0\n",
            root.join("engagement.csv"),
            root.join("neighbours.csv"),
            dir.path().join("f.parquet")
        ),
    );
    let result = run(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    assert!(
        stderr(&result).contains("execution.partitions"),
        "{}",
        stderr(&result)
    );
}

#[test]
fn explain_shows_the_partitions_read_in_order() {
    let root = common::root().join("fixtures/demo");
    let dir = tempfile::tempdir().unwrap();
    let result = run(&[
        "run",
        "--config",
        root.join("job.toml").to_str().unwrap(),
        "--output",
        dir.path().join("f.parquet").to_str().unwrap(),
        "--partitions",
        "3",
        "--explain",
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let plan = String::from_utf8(result.stdout).unwrap();
    // the three sorted ranges are read one after the other: no k-way merge of rows
    assert!(
        plan.starts_with("ConcatRangesExec: 3 sorted query ranges"),
        "{plan}"
    );
    assert!(plan.contains("PriorMergeExec"), "{plan}");
    assert!(!plan.contains("SortPreservingMergeExec"), "{plan}");
}

/// The parts of a folder output in their order, and what `_SUCCESS` lists.
fn parts_of(folder: &Path) -> (Vec<PathBuf>, serde_json::Value) {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("part-")
        })
        .collect();
    parts.sort();
    let listing = serde_json::from_slice(&std::fs::read(folder.join("_SUCCESS")).unwrap()).unwrap();
    (parts, listing)
}

#[test]
fn a_folder_output_is_one_part_per_partition_whose_concatenation_is_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (e, n) = synth(&dir.path().join("data"), "2000", "5", &[]);
    let (e, n) = (e.to_str().unwrap(), n.to_str().unwrap());
    let file = dir.path().join("features.parquet");
    let out = run_job(e, n, file.to_str().unwrap(), &["--top-k", "10"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = common::read_features_in_file_order(&file);
    let folder = dir.path().join("features");
    let uri = format!("{}/", folder.to_str().unwrap());
    for n_parts in [3usize, 7, 2] {
        let out = run_job(
            e,
            n,
            &uri,
            &["--top-k", "10", "--partitions", &n_parts.to_string()],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let (parts, listing) = parts_of(&folder);
        // a rerun with fewer partitions leaves none of the previous run's extra parts
        assert_eq!(parts.len(), n_parts, "{parts:?}");
        assert_eq!(listing["parts"].as_array().unwrap().len(), n_parts);
        let mut rows = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(
                part.file_name().unwrap().to_str().unwrap(),
                format!("part-{i:05}.parquet")
            );
            let listed = &listing["parts"][i];
            assert_eq!(listed["file"], format!("part-{i:05}.parquet"));
            assert_eq!(
                listed["bytes"].as_u64().unwrap(),
                std::fs::metadata(part).unwrap().len()
            );
            let part_rows = common::read_features_in_file_order(part);
            assert_eq!(listed["rows"].as_u64().unwrap(), part_rows.len() as u64);
            rows.extend(part_rows);
        }
        // the parts are the sorted ranges: read in order, the file's rows
        assert!(rows == expected, "{n_parts} parts differ from the file");
        assert_eq!(listing["rows"].as_u64().unwrap(), expected.len() as u64);
        common::assert_only_parts(&folder);
    }

    // a folder holding anything else is refused, untouched
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let out = run_job(e, n, &format!("{}/", other.to_str().unwrap()), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("notes.txt"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);

    // a run that fails (bad input) leaves the previous parts and nothing staged; a new folder
    // is not created
    let bad = common::write(
        dir.path(),
        "bad.csv",
        "query,neighbour,score\nq,r,not-a-number\n",
    );
    let out = run_job(e, bad.to_str().unwrap(), &uri, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(parts_of(&folder).0.len(), 2);
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 3);
    let new = dir.path().join("new");
    let out = run_job(
        e,
        bad.to_str().unwrap(),
        &format!("{}/", new.to_str().unwrap()),
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!new.exists());
}
