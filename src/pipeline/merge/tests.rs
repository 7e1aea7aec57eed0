//! The merge operator under memory limits: spilled runs equal in-memory ones.
use super::*;
use crate::config::{Blend, PriorWeighting};
use datafusion::arrow::array::{AsArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;

/// `queries` queries with 20 history rows each and 30 neighbour rows, from a fixed
/// generator (some neighbours repeat, some have no history, some score below 0.2).
fn inputs(queries: usize) -> (RecordBatch, RecordBatch) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut hq, mut hp, mut hi, mut hh) = (vec![], vec![], vec![], vec![]);
    for q in 0..queries {
        for j in 0..20u64 {
            hq.push(format!("query {q:05}"));
            hp.push(format!("p{}", (q as u64 * 7 + j * 13 + next() % 5) % 2000));
            hi.push((next() % 1000) as i64);
            hh.push((next() % 10_000) as f64 / 997.0);
        }
    }
    let (mut nq, mut nn, mut ns) = (vec![], vec![], vec![]);
    for q in 0..queries {
        for _ in 0..30 {
            nq.push(format!("query {q:05}"));
            // a tenth of the neighbours are queries without history
            nn.push(format!("query {:05}", next() % (queries as u64 * 11 / 10)));
            ns.push((next() % 1000) as f64 / 1000.0);
        }
    }
    let history = RecordBatch::try_from_iter(vec![
        ("query", Arc::new(StringArray::from(hq)) as _),
        ("product_id", Arc::new(StringArray::from(hp)) as _),
        ("impressions", Arc::new(Int64Array::from(hi)) as _),
        ("h", Arc::new(Float64Array::from(hh)) as _),
    ])
    .unwrap();
    let neighbours = RecordBatch::try_from_iter(vec![
        ("query", Arc::new(StringArray::from(nq)) as _),
        ("neighbour", Arc::new(StringArray::from(nn)) as _),
        ("score", Arc::new(Float64Array::from(ns)) as _),
    ])
    .unwrap();
    (history, neighbours)
}

fn params() -> MergeParams {
    MergeParams {
        top_k: 10,
        min_score: 0.2,
        prior_weighting: PriorWeighting::Score,
        gamma: 0.5,
        beta: 0.8,
        blend: Blend::Paper,
        smoothing: 0.0,
        pseudo_impressions: 10.0,
    }
}

/// The operator's partitions, each collected whole, in order; `concurrently`: all polled
/// at once (as a folder write does) rather than one after the other. The history rows at the
/// indices `repeat` are added once more at the end.
async fn run(
    limit: Option<usize>,
    partitions: usize,
    split: Split,
    concurrently: bool,
    queries: usize,
    workers: usize,
    repeat: &[usize],
) -> Result<(Vec<Vec<RecordBatch>>, MergeMetrics)> {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(limit) = limit {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    }
    let config = SessionConfig::new()
        .with_target_partitions(workers)
        .with_batch_size(512);
    let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
    let (history, neighbours) = inputs(queries);
    let history = match repeat {
        [] => history,
        // some keys once more
        rows => {
            let again = rows
                .iter()
                .map(|&r| history.slice(r, 1))
                .collect::<Vec<_>>();
            datafusion::arrow::compute::concat_batches(
                &history.schema(),
                std::iter::once(&history).chain(&again),
            )?
        }
    };
    ctx.register_batch("history", history)?;
    ctx.register_batch("neighbours", neighbours)?;
    let history = ctx.table("history").await?.create_physical_plan().await?;
    let neighbours = ctx
        .table("neighbours")
        .await?
        .create_physical_plan()
        .await?;
    let schema = Arc::new(Schema::new(
        OUTPUT_COLUMNS
            .iter()
            .zip(TYPES)
            .map(|(name, t)| Field::new(*name, t, true))
            .collect::<Vec<_>>(),
    ));
    let exec = Arc::new(PriorMergeExec::try_new(
        history,
        neighbours,
        params(),
        partitions,
        split,
        schema,
    )?);
    let task = ctx.task_ctx();
    let collect = |p: usize| {
        let stream = exec.execute(p, Arc::clone(&task));
        async move { stream?.try_collect::<Vec<_>>().await }
    };
    let out = if concurrently {
        futures::future::try_join_all((0..partitions).map(collect)).await?
    } else {
        let mut out = Vec::new();
        for p in 0..partitions {
            out.push(collect(p).await?);
        }
        out
    };
    Ok((out, exec.measured().clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_limit_far_below_its_history_the_merge_spills_and_writes_the_same_batches() {
    let queries = 3000;
    let (unlimited, free) = run(None, 1, Split::Ranges, false, queries, 2, &[])
        .await
        .unwrap();
    assert_eq!(free.spill.spill_file_count.value(), 0);
    let expected: Vec<RecordBatch> = unlimited.into_iter().flatten().collect();
    assert!(expected.iter().map(|b| b.num_rows()).sum::<usize>() > 100_000);
    // 60,000 history rows hold 2.4 MB in memory, 90,000 neighbour rows 1.4 MB
    for (limit, partitions, concurrently) in [
        (3_500_000, 1, false),
        (3_500_000, 3, false),
        (3_500_000, 3, true),
        (3_500_000, 8, true),
        (1_600_000, 1, false),
        (1_600_000, 2, true),
    ] {
        // one worker computes batches as they are asked for, two compute chunks ahead
        let (out, m) = run(
            Some(limit),
            partitions,
            Split::Ranges,
            concurrently,
            queries,
            partitions % 2 + 1,
            &[],
        )
        .await
        .unwrap();
        let got: Vec<RecordBatch> = out.into_iter().flatten().collect();
        assert!(
            got == expected,
            "{partitions} partitions (concurrently: {concurrently}) under {limit} bytes \
             differ from an unlimited run"
        );
        let spilled = m.spill.spilled_rows.value();
        assert!(
            m.spill.spill_file_count.value() >= 2,
            "spilled more than once"
        );
        assert!(spilled >= 60_000, "{spilled} rows spilled");
        if limit < 2_000_000 {
            assert!(
                spilled > 60_000,
                "the candidates spilled too: {spilled} rows"
            );
        }
        assert!(m.spill.spilled_bytes.value() > 60_000 * 24);
        assert!(
            m.history_blocks.value() > partitions,
            "{partitions} partitions read the history back in {} blocks",
            m.history_blocks.value()
        );
        assert!(m.history_rows_loaded.value() >= 60_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_too_small_for_the_strings_and_neighbour_sets_fails_clearly() {
    let e = run(Some(200_000), 2, Split::Ranges, false, 3000, 2, &[])
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("raise --memory-limit"), "{text}");
    assert!(text.contains("neighbour sets"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_history_keys_fail_the_operator_in_memory_and_spilled() {
    let queries = 3000;
    let (history, _) = inputs(queries);
    // query 01234's fourth row twice more, query 00042's first once more: 20 rows a query
    let repeat = [1234 * 20 + 3, 42 * 20, 1234 * 20 + 3];
    let product = history
        .column(1)
        .as_string::<i32>()
        .value(42 * 20)
        .to_string();
    for (limit, partitions, split) in [
        (None, 1, Split::Ranges),
        (None, 3, Split::Ranges),
        (Some(1_600_000), 2, Split::Ranges),
    ] {
        let e = run(limit, partitions, split, true, queries, 2, &repeat)
            .await
            .unwrap_err();
        let found = repeats::RepeatedKeys::of(&e).unwrap_or_else(|| panic!("{e}"));
        assert_eq!(
            found,
            &repeats::RepeatedKeys {
                keys: 2,
                example: format!("query=\"query 00042\", product_id=\"{product}\", n=2"),
            },
            "under {limit:?} bytes, {partitions} partitions ({split:?})"
        );
    }
    // a share finds the keys its rows repeat
    let e = run(None, 2, Split::Shares, true, queries, 2, &repeat)
        .await
        .unwrap_err();
    assert!(repeats::RepeatedKeys::of(&e).is_some(), "{e}");
    // every key once: no error, whatever the memory
    run(Some(1_600_000), 2, Split::Ranges, true, queries, 2, &[])
        .await
        .unwrap();
}

/// `batches` as one batch sorted by (query, product_id).
fn sorted(schema: &SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    use datafusion::arrow::compute::{
        SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
    };
    let all = concat_batches(schema, batches).unwrap();
    let keys: Vec<SortColumn> = (0..2)
        .map(|i| SortColumn {
            values: Arc::clone(all.column(i)),
            options: None,
        })
        .collect();
    let order = lexsort_to_indices(&keys, None).unwrap();
    take_record_batch(&all, &order).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_hold_their_queries_only_and_together_equal_the_ranges() {
    for (queries, limit, shares) in [
        (3000, None, 1),
        (3000, None, 2),
        (3000, None, 3),
        (3000, None, 7),
        // more shares than queries: some are empty
        (40, None, 64),
        // the history spills (the neighbour rows of the shares stay in memory)
        (3000, Some(6_000_000), 3),
    ] {
        let (ranges, whole) = run(None, 1, Split::Ranges, false, queries, 2, &[])
            .await
            .unwrap();
        let expected: Vec<RecordBatch> = ranges.into_iter().flatten().collect();
        let schema = expected[0].schema();
        let history_rows = whole.history_rows.value();
        // all partitions polled at once: under the limit they read the spilled blocks together
        let (out, m) = run(limit, shares, Split::Shares, true, queries, 2, &[])
            .await
            .unwrap();
        assert_eq!(out.len(), shares);
        for (i, part) in out.iter().enumerate() {
            let keys: Vec<(String, String)> = part
                .iter()
                .flat_map(|b| {
                    let (q, p) = (
                        b.column(0).as_string::<i32>(),
                        b.column(1).as_string::<i32>(),
                    );
                    (0..b.num_rows())
                        .map(|r| (q.value(r).to_string(), p.value(r).to_string()))
                        .collect::<Vec<_>>()
                })
                .collect();
            assert!(keys.is_sorted(), "share {i} of {shares} is sorted");
            assert!(
                keys.iter().all(|(q, _)| share::share_of(q, shares) == i),
                "share {i} of {shares} holds only its queries"
            );
        }
        let got: Vec<RecordBatch> = out.into_iter().flatten().collect();
        assert_eq!(
            sorted(&schema, &got),
            sorted(&schema, &expected),
            "{shares} shares (limit {limit:?}) give the rows of one index"
        );
        // each share holds its queries' history and its neighbours': at least the history once
        let held = m.history_rows.value();
        assert!(held >= history_rows, "{held} < {history_rows}");
        assert!(m.history_rows_needed.value() <= held);
        if shares == 1 {
            assert_eq!(held, history_rows);
        } else {
            // at most every share of a query's 30 neighbour rows
            assert!(
                held <= history_rows * 31,
                "{held} rows held by {shares} shares"
            );
        }
        if limit.is_some() {
            assert!(
                m.spill.spill_file_count.value() >= shares,
                "every share spilled"
            );
        }
    }
}

/// A share's task reads both inputs whole: over a scan of several file ranges, the plan must
/// read them as one partition in the merge stage (no `CoalescePartitionsExec`, where Ballista
/// would end a stage and ship the scan's output to every task through the shuffle); the local
/// plan keeps its parallel scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shares_plan_reads_its_input_files_in_the_merge_stage() -> Result<()> {
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    let dir = tempfile::tempdir()?;
    // more rows than a batch: DataFusion splits such a scan into ranges
    let (history, neighbours) = inputs(500);
    let config = SessionConfig::new()
        .with_target_partitions(3)
        // small files split into ranges as large ones are
        .set_usize("datafusion.optimizer.repartition_file_min_size", 1);
    // the rule every session of the project gets (`session::with_physical_rules`)
    let state = datafusion::execution::session_state::SessionStateBuilder::new()
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(share::ReadInputsInMergeStage))
        .with_config(config)
        .build();
    let ctx = SessionContext::new_with_state(state);
    let mut plans = Vec::new();
    for (name, batch) in [("history", history), ("neighbours", neighbours)] {
        let path = dir.path().join(format!("{name}.parquet"));
        ctx.read_batch(batch)?
            .write_parquet(path.to_str().unwrap(), Default::default(), None)
            .await?;
        let frame = ctx
            .read_parquet(path.to_str().unwrap(), ParquetReadOptions::default())
            .await?;
        plans.push(frame.into_unoptimized_plan());
    }
    let schema = Arc::new(Schema::new(
        OUTPUT_COLUMNS
            .iter()
            .zip(&TYPES)
            .map(|(name, t)| Field::new(*name, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let neighbours = plans.pop().unwrap();
    let history = plans.pop().unwrap();
    for (split, whole) in [(Split::Shares, true), (Split::Ranges, false)] {
        let table = MergedFeatures::from_parts(
            Arc::clone(&schema),
            history.clone(),
            neighbours.clone(),
            params(),
            2,
            split,
        )?;
        let plan = ctx
            .read_table(Arc::new(table))?
            .create_physical_plan()
            .await?;
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        let merge = find_merges(&plan);
        let [merge] = merge.as_slice() else {
            panic!("one merge operator in {text}");
        };
        for child in [&merge.history, &merge.neighbours] {
            let scans = child.is::<DataSourceExec>();
            assert_eq!(scans, whole, "{split:?}: {text}");
            assert_eq!(
                child.is::<CoalescePartitionsExec>(),
                !whole,
                "{split:?}: {text}"
            );
        }
    }
    Ok(())
}
