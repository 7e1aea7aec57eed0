//! Property test: on random small inputs (with ties, duplicates, self-pairs, neighbours without
//! history, zero impressions) the engine's feature table equals the plain in-memory reference
//! implementation of the semantics (`q2q_prior::reference`), for random parameters, with either
//! plan (merge and sql), either blend (paper, bayes with m = 3 or 30), with string product ids
//! (CSV) or integer ones (Parquet, `INT`).

mod common;

use std::fmt::Write as _;

use proptest::prelude::*;
use q2q_prior::config::{
    Blend, DuplicatePolicy, ExecutionConfig, FeatureParams, InputSpec, JobConfig, PlanKind,
    PriorWeighting,
};
use q2q_prior::reference::{self, EngagementRow, NeighbourRow};

// Includes an uppercase and a spaced query so ties are broken in byte order, not locale order.
const QUERIES: [&str; 9] = ["a", "b", "c", "d", "e", "ab", "ba", "B", "a b"];
const PRODUCTS: [&str; 4] = ["P1", "P2", "P3", "P4"];
// Integer ids whose numeric order (-5, 9, 20, 100) is not their text order.
const INTEGER_PRODUCTS: [i32; 4] = [100, 9, -5, 20];
const SCORES: [f64; 7] = [0.0, 0.2, 0.5, 0.5, 0.7, 0.9, 1.0];

#[derive(Debug, Clone)]
struct Case {
    engagement: Vec<EngagementRow>,
    neighbours: Vec<NeighbourRow>,
    params: FeatureParams,
    /// product ids are [`INTEGER_PRODUCTS`] in an `INT` Parquet column
    integer_ids: bool,
    /// output partitions of the merge plan (`execution.partitions`)
    partitions: usize,
}

fn counts() -> impl Strategy<Value = [i64; 4]> {
    (0i64..40).prop_flat_map(|i| {
        (0..=i).prop_flat_map(move |c| (0..=c, 0..=c).prop_map(move |(a, p)| [i, c, a, p]))
    })
}

fn case() -> impl Strategy<Value = Case> {
    let engagement =
        prop::collection::btree_map((0..QUERIES.len(), 0..PRODUCTS.len()), counts(), 1..14);
    let neighbours =
        prop::collection::vec((0..QUERIES.len(), 0..QUERIES.len(), 0..SCORES.len()), 1..24);
    let duplicates = prop::collection::vec((any::<prop::sample::Index>(), counts()), 0..3);
    let params = (
        1u32..5,
        prop::bool::ANY,
        prop::bool::ANY,
        prop::bool::ANY,
        prop::bool::ANY,
        prop::bool::ANY,
        prop::bool::ANY,
        prop::sample::select(vec![None, Some(3.0), Some(30.0)]),
    );
    let partitions = prop::sample::select(vec![1usize, 2, 3, 7, 64]);
    (engagement, neighbours, duplicates, params, partitions).prop_map(
        |(engagement, neighbours, duplicates, p, partitions)| {
            let (top_k, high_min, low_gamma, half_beta, no_smoothing, by_score, integer_ids, bayes) =
                p;
            let row = |q: usize, p: usize, c: [i64; 4]| {
                let mut r = row(q, p, c);
                if integer_ids {
                    r.product_id = INTEGER_PRODUCTS[p].to_string();
                }
                r
            };
            let mut rows: Vec<EngagementRow> = engagement
                .iter()
                .map(|(&(q, p), c)| row(q, p, *c))
                .collect();
            // extra rows for existing keys: summed by the engine under on_duplicate = "sum"
            let keys: Vec<_> = engagement.keys().copied().collect();
            for (index, c) in &duplicates {
                let (q, p) = keys[index.index(keys.len())];
                rows.push(row(q, p, *c));
            }
            Case {
                engagement: rows,
                neighbours: neighbours
                    .into_iter()
                    .map(|(q, n, s)| NeighbourRow {
                        query: QUERIES[q].into(),
                        neighbour: QUERIES[n].into(),
                        score: SCORES[s],
                    })
                    .collect(),
                params: FeatureParams {
                    top_k,
                    min_score: if high_min { 0.3 } else { 0.0 },
                    gamma: if low_gamma { 3.0 } else { 10_000.0 },
                    beta: if half_beta { 0.5 } else { 1.0 },
                    smoothing: if no_smoothing { 0.0 } else { 10.0 },
                    prior_weighting: if by_score {
                        PriorWeighting::Score
                    } else {
                        PriorWeighting::Mean
                    },
                    blend: if bayes.is_some() { Blend::Bayes } else { Blend::Paper },
                    pseudo_impressions: bayes.unwrap_or(30.0),
                    on_duplicate: if duplicates.is_empty() {
                        DuplicatePolicy::Error
                    } else {
                        DuplicatePolicy::Sum
                    },
                    ..FeatureParams::default()
                },
                integer_ids,
                partitions,
            }
        },
    )
}

/// Engagement as Parquet with an `INT` product_id column.
fn parquet_of_engagement(path: &std::path::Path, rows: &[EngagementRow]) {
    use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let counts = |f: fn(&EngagementRow) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
    };
    let batch = RecordBatch::try_from_iter([
        (
            "query",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.query.as_str()),
            )) as ArrayRef,
        ),
        (
            "product_id",
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.product_id.parse::<i32>().unwrap()),
            )),
        ),
        ("impressions", counts(|r| r.impressions)),
        ("clicks", counts(|r| r.clicks)),
        ("adds", counts(|r| r.adds)),
        ("purchases", counts(|r| r.purchases)),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn row(q: usize, p: usize, c: [i64; 4]) -> EngagementRow {
    EngagementRow {
        query: QUERIES[q].into(),
        product_id: PRODUCTS[p].into(),
        impressions: c[0],
        clicks: c[1],
        adds: c[2],
        purchases: c[3],
    }
}

fn csv_of_engagement(rows: &[EngagementRow]) -> String {
    let mut out = String::from("query,product_id,impressions,clicks,adds,purchases\n");
    for r in rows {
        writeln!(
            out,
            "{},{},{},{},{},{}",
            r.query, r.product_id, r.impressions, r.clicks, r.adds, r.purchases
        )
        .unwrap();
    }
    out
}

fn csv_of_neighbours(rows: &[NeighbourRow]) -> String {
    let mut out = String::from("query,neighbour,score\n");
    for r in rows {
        writeln!(out, "{},{},{:?}", r.query, r.neighbour, r.score).unwrap();
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_equals_reference(case in case()) {
        let dir = tempfile::tempdir().unwrap();
        let e = if case.integer_ids {
            let path = dir.path().join("engagement.parquet");
            parquet_of_engagement(&path, &case.engagement);
            path
        } else {
            common::write(dir.path(), "engagement.csv", &csv_of_engagement(&case.engagement))
        };
        let n = common::write(dir.path(), "neighbours.csv", &csv_of_neighbours(&case.neighbours));
        let mut expected = reference::features(&case.engagement, &case.neighbours, &case.params);
        if case.integer_ids {
            // integer ids sort numerically (the reference keys them as text)
            expected.sort_by_key(|r| (r.query.clone(), r.product_id.parse::<i32>().unwrap()));
        }
        for plan in [PlanKind::Merge, PlanKind::Sql] {
            let out = dir.path().join(format!("features.{plan:?}.parquet"));
            let config = JobConfig {
                engagement: Some(InputSpec::new(e.to_string_lossy())),
                neighbours: Some(InputSpec::new(n.to_string_lossy())),
                output: Some(out.to_string_lossy().into_owned()),
                features: case.params.clone(),
                execution: ExecutionConfig { plan, partitions: Some(case.partitions), ..ExecutionConfig::default() },
                ..JobConfig::default()
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(q2q_prior::job::run(&config, &tokio_util::sync::CancellationToken::new())).expect("engine run");
            drop(runtime);
            // the file's own order is (query, product_id): the merge plan has no sort to rely on
            let actual = common::read_features_in_file_order(&out);
            common::assert_same_features(&actual, &expected);
        }
    }
}

#[test]
fn reference_agrees_with_the_hand_worked_fixture() {
    // The oracle itself is checked against the values derived by hand in fixtures/README.md.
    let read = |name: &str| {
        std::fs::read_to_string(common::root().join("fixtures/tiny").join(name)).unwrap()
    };
    let engagement = common::parse_engagement(&read("engagement.csv"));
    let neighbours = common::parse_neighbours(&read("neighbours.csv"));
    let params = FeatureParams {
        min_score: 0.1,
        ..FeatureParams::default()
    };
    let got = reference::features(&engagement, &neighbours, &params);
    let expected = common::read_features(&common::root().join("fixtures/tiny/expected.csv"));
    common::assert_same_features(&got, &expected);
}
