//! Query normalization end to end: variants merge their engagement (summed, H recomputed from the
//! sums), neighbour keys are normalized too, self-pairs created by normalization are dropped, and
//! the `normalize_query` UDF is callable from SQL with and without a language.

mod common;

use common::*;
use q2q_prior::formula::{self, HistoryWeights};

/// Both inputs normalized, as the job requires.
const NORMALIZE_BOTH: &[&str] = &[
    "--engagement-normalize",
    "true",
    "--neighbours-normalize",
    "true",
];

const WEIGHTS: HistoryWeights = HistoryWeights {
    click: 1.0,
    add: 2.0,
    purchase: 4.0,
    smoothing: 10.0,
};

#[test]
fn variant_queries_merge_their_engagement() {
    let dir = tempfile::tempdir().unwrap();
    let e = write(
        dir.path(),
        "e.csv",
        "query,product_id,impressions,clicks,adds,purchases\n\
         Women's Trendy Sunglasses,P1,100,10,2,1\n\
         trendy woman sunglass,P1,50,5,1,0\n\
         sunglasses trendy,P2,20,2,0,0\n",
    );
    let n = write(
        dir.path(),
        "n.csv",
        "query,neighbour,score\n\
         womans sunglasses trendy,sunglasses trendy,0.9\n\
         trendy woman sunglass,women trendy sunglasses,1.0\n",
    );
    let out = dir.path().join("f.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        NORMALIZE_BOTH,
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let rows = read_features(&out);
    let keys: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.query.as_str(), r.product_id.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("sunglass trendi", "P2"),
            ("sunglass trendi woman", "P1"),
            ("sunglass trendi woman", "P2")
        ]
    );
    let merged = &rows[1];
    assert_eq!(
        merged.impressions, 150,
        "100 + 50 impressions of the two variants"
    );
    assert_eq!(
        merged.h,
        formula::history(&WEIGHTS, 150.0, 15.0, 3.0, 1.0),
        "H of the summed counts"
    );
    // the pair that became a self-pair is gone: only 'sunglass trendi' is a neighbour
    assert_eq!(merged.n_neighbours, 1);
    let p2 = &rows[2];
    assert_eq!(p2.prior, formula::history(&WEIGHTS, 20.0, 2.0, 0.0, 0.0));
    assert_eq!(p2.impressions, 0);
}

#[test]
fn a_lang_column_chooses_the_rules_per_row() {
    let dir = tempfile::tempdir().unwrap();
    // the same Latin text is stemmed in the English store and kept in the Japanese one
    let e = write(
        dir.path(),
        "e.csv",
        "query,product_id,impressions,clicks,adds,purchases,lang\n\
         running shoes,P1,10,1,0,0,en\n\
         running shoes,P2,10,1,0,0,ja\n",
    );
    let n = write(
        dir.path(),
        "n.csv",
        "query,neighbour,score,lang\nx,y,0.5,en\n",
    );
    let out = dir.path().join("f.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        NORMALIZE_BOTH,
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let keys: Vec<(String, String)> = read_features(&out)
        .into_iter()
        .map(|r| (r.query, r.product_id))
        .collect();
    assert_eq!(
        keys,
        [
            ("run shoe".to_string(), "P1".to_string()),
            ("running shoes".to_string(), "P2".to_string())
        ]
    );
}

#[test]
fn normalize_query_is_a_sql_function() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = q2q_prior::session::new_context(&Default::default()).unwrap();
        let batches = ctx
            .sql(
                "SELECT normalize_query('Women''s Trendy Sunglasses') AS a, \
                        normalize_query('running shoes', 'ja') AS b, \
                        normalize_query('ｽﾆｰｶｰ　ナイキ') AS c, \
                        normalize_query(NULL) AS d",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(
            text.contains("| sunglass trendi woman | running shoes | スニーカー ナイキ |   |"),
            "{text}"
        );
    });
}

#[test]
fn bad_precomputed_h_cannot_be_normalized() {
    let dir = tempfile::tempdir().unwrap();
    let e = write(
        dir.path(),
        "e.csv",
        "query,product_id,impressions,h\na,P1,10,0.5\n",
    );
    let n = write(dir.path(), "n.csv", "query,neighbour,score\nb,a,0.5\n");
    let out = dir.path().join("f.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        NORMALIZE_BOTH,
    );
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    assert!(
        stderr(&result).contains("column 'h'"),
        "{}",
        stderr(&result)
    );
}

#[test]
fn bad_normalizing_one_input_only_or_with_different_language_columns() {
    let dir = tempfile::tempdir().unwrap();
    let e = write(
        dir.path(),
        "e.csv",
        "query,product_id,impressions,clicks,adds,purchases,lang\nrunning shoes,P1,10,1,0,0,ja\n",
    );
    let n = write(
        dir.path(),
        "n.csv",
        "query,neighbour,score\nrunning shoe,running shoes,0.5\n",
    );
    let out = dir.path().join("o").join("f.parquet");
    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--engagement-normalize", "true"],
    );
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    assert!(
        stderr(&result).contains("normalize is set on one input only"),
        "{}",
        stderr(&result)
    );

    let result = run_job(
        e.to_str().unwrap(),
        n.to_str().unwrap(),
        out.to_str().unwrap(),
        NORMALIZE_BOTH,
    );
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'neighbours'")
            && err.contains("column 'lang'")
            && err.contains("from column 'lang'"),
        "{err}"
    );
    assert!(!out.parent().unwrap().exists());
}
