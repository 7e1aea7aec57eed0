#!/usr/bin/env bash
# `mine pairs` at scale (issue 9, docs/BENCHMARKS.md): synth data with a bestseller product bought
# from --bestseller distinct queries (the hot product that makes co-purchase enumeration quadratic),
# mined with each --hot-caps value in alternating rounds.
#
#   benches/mine.sh [--queries 1000000] [--bestseller 50000] [--runs 3] [--hot-caps 1000,10000] [--bin PATH]
#
# Prints per cap the medians of wall time, CPU and peak RSS, and from the run's report the pairs
# counted and dropped by sampling in the bucket of the hottest products, and the positives kept.
set -euo pipefail
cd "$(dirname "$0")/.."

queries=1000000
bestseller=50000
runs=3
caps=1000,10000
bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --queries) queries="$2"; shift 2 ;;
        --bestseller) bestseller="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --hot-caps) caps="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --bench) shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

data="${Q2Q_BENCH_DATA:-$HOME/.cache/q2q-prior/bench-data}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/q2q-prior/target}"
if [ -z "$bin" ]; then
    echo "building the release binary..." >&2
    cargo build --release --locked --bin q2q-prior >&2
    bin="$CARGO_TARGET_DIR/release/q2q-prior"
fi

dir="$data/mine-q$queries-b$bestseller"
if [ ! -f "$dir/engagement.parquet" ]; then
    echo "synth: $queries queries, a bestseller bought from $bestseller of them -> $dir" >&2
    "$bin" synth --queries "$queries" --bestseller-queries "$bestseller" --seed 42 --out "$dir" >&2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# the data as mined: purchases and the most-bought product (with pyarrow, from the test venv if any)
py=python3
if [ -x "${Q2Q_BENCH_VENV:-$PWD/.venv}/bin/python" ]; then py="${Q2Q_BENCH_VENV:-$PWD/.venv}/bin/python"; fi
"$py" - "$dir/engagement.parquet" >&2 <<'EOF' || true
import sys
try:
    import pyarrow.parquet as pq, pyarrow.compute as pc
except ImportError:
    sys.exit(0)
t = pq.read_table(sys.argv[1], columns=["query", "product_id", "purchases"])
t = t.filter(pc.greater(t["purchases"], 0))
g = t.group_by("product_id").aggregate([("query", "count_distinct")]).sort_by([("query_count_distinct", "descending")])
print(f"data: {t.num_rows} (query, product) purchases; most-bought products (distinct queries): "
      + ", ".join(f"{p} {n}" for p, n in zip(g["product_id"][:3].to_pylist(), g["query_count_distinct"][:3].to_pylist())))
EOF

results="$work/results.tsv"
IFS=',' read -r -a cap_list <<< "$caps"
for round in $(seq 1 "$runs"); do
    for cap in "${cap_list[@]}"; do
        echo "round $round/$runs, --hot-cap $cap" >&2
        t="$work/time"
        if ! /usr/bin/time -f '%e %U %S %M' -o "$t" "$bin" mine pairs --engagement "$dir/engagement.parquet" \
            --hot-cap "$cap" -o "$work/pairs-$cap.parquet" > /dev/null 2> "$work/report-$cap.txt"; then
            echo "mine pairs --hot-cap $cap failed:" >&2
            tail -20 "$work/report-$cap.txt" >&2
            exit 1
        fi
        read -r wall user sys rss < <(tail -1 "$t")
        echo "$cap $wall $(python3 -c "print($user + $sys)") $rss" >> "$results"
    done
done
echo "report of the last run with --hot-cap ${cap_list[0]}:" >&2
cat "$work/report-${cap_list[0]}.txt" >&2

python3 - "$results" "$work" "$queries" "$bestseller" "$runs" <<'EOF'
import re, statistics, sys
results, work, queries, bestseller, runs = sys.argv[1:6]
rows = {}
for line in open(results):
    cap, wall, cpu, rss = line.split()
    rows.setdefault(cap, []).append((float(wall), float(cpu), int(rss)))
print(f"{int(queries):,} queries, a bestseller bought from {int(bestseller):,} of them; medians of {runs} runs")
print(f"{'--hot-cap':>10} {'wall s':>8} {'cpu s':>8} {'peak RSS MiB':>13} {'hot pairs counted':>18} {'pairs dropped':>14} {'positives kept':>15}")
for cap, r in rows.items():
    report = open(f"{work}/report-{cap}.txt").read()
    counted = dropped = 0
    for line in report.splitlines():
        f = line.split()
        # the buckets of products bought from 1000+ queries
        if f and f[0] in ("1000-9999", "10000+"):
            counted += int(f[3]); dropped += int(f[6])
    kept = re.search(r"kept as positives: (\d+)", report)
    print(f"{cap:>10} {statistics.median(x[0] for x in r):>8.2f} {statistics.median(x[1] for x in r):>8.2f} "
          f"{statistics.median(x[2] for x in r) / 1024:>13.0f} {counted:>18,} {dropped:>14,} {int(kept.group(1)) if kept else -1:>15,}")
EOF
