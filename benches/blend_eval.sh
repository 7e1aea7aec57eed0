#!/usr/bin/env bash
# Both blends x both prior weightings against held-out outcomes (issue 21, README "Choosing a
# blend"): synth with a later period, the job four times, one table of every score, and
# `evaluate features` by traffic segment with bootstrap intervals.
#
#   benches/blend_eval.sh [--queries 20000] [--seed 42] [--m 30] [--bin PATH]
#
# Prints the evaluation table (NDCG@10, MRR, Recall@10 per segment and score) and the paired
# comparison of f_bayes_score against f_paper_mean.
set -euo pipefail
cd "$(dirname "$0")/.."

queries=20000
seed=42
m=30
bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --queries) queries="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --m) m="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --bench) shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/q2q-prior/target}"
if [ -z "$bin" ]; then
    echo "building the release binary..." >&2
    cargo build --release --locked --bin q2q-prior >&2
    bin="$CARGO_TARGET_DIR/release/q2q-prior"
fi
dir="${Q2Q_BENCH_DATA:-$HOME/.cache/q2q-prior/bench-data}/blend-q$queries-s$seed"
mkdir -p "$dir"
if [ ! -f "$dir/engagement_later.parquet" ]; then
    "$bin" synth --queries "$queries" --seed "$seed" --later-period --out "$dir" >&2
fi
for weighting in mean score; do
    for blend in paper bayes; do
        "$bin" run --engagement "$dir/engagement.parquet" --neighbours "$dir/neighbours.parquet" \
            --prior-weighting "$weighting" --blend "$blend" --pseudo-impressions "$m" \
            -o "$dir/f_${blend}_${weighting}.parquet" 2>/dev/null
    done
done
# every variant has the same (query, product_id) rows: one table with a column per score
"$bin" sql --format csv -c "COPY (
    SELECT pm.query, pm.product_id, pm.impressions, pm.h, pm.prior AS prior_mean, ps.prior AS prior_score,
           pm.f AS f_paper_mean, ps.f AS f_paper_score, bm.f AS f_bayes_mean, bs.f AS f_bayes_score
    FROM '$dir/f_paper_mean.parquet' pm
    JOIN '$dir/f_paper_score.parquet' ps ON ps.query = pm.query AND ps.product_id = pm.product_id
    JOIN '$dir/f_bayes_mean.parquet' bm ON bm.query = pm.query AND bm.product_id = pm.product_id
    JOIN '$dir/f_bayes_score.parquet' bs ON bs.query = pm.query AND bs.product_id = pm.product_id
) TO '$dir/scores.parquet'" >/dev/null
"$bin" evaluate features --feature-table "$dir/scores.parquet" \
    --outcomes "$dir/engagement_later.parquet" \
    --scores h,prior_mean,prior_score,f_paper_mean,f_paper_score,f_bayes_mean,f_bayes_score \
    --compare f_bayes_score,f_paper_mean
