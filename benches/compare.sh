#!/usr/bin/env bash
# The feature job against its peers, side by side on this machine: `q2q-prior run` (release build),
# the same semantics as one DuckDB statement (benches/compare/duckdb_feature_job.sql, DuckDB from
# PyPI), and the I/O floor (benches/io_floor.rs: decode both inputs, write the output's rows).
#
#   benches/compare.sh [--queries "100000 1000000"] [--runs 3] [--top-k 10] [--memory-limit SIZE]
#                      [--duckdb-set name=value ...] [--peers "engine duckdb floor"]
#                      [--shape synth|zipf] [--engine-set --flag=value ...] [--baseline BIN]
#
# Peers: engine, duckdb, floor, and engine1 / duckdb1: the same pinned to one core (taskset -c 0),
# for the speed-up a second core gives each. --baseline BIN adds the peer "baseline": another build of
# q2q-prior (e.g. the commit before a change) run with the same arguments, its output checked
# against the engine's; the summary gives engine/baseline ("no slower" claims).
# Shapes: synth (`q2q-prior synth`, one marketplace) or zipf (benches/compare/zipf_shape.py: Zipf
# query popularity, 20-byte SKUs, head queries that are everyone's neighbour).
#
# For each scale: the data (cached under $Q2Q_BENCH_DATA, default ~/.cache/q2q-prior/bench-data),
# then --runs rounds of engine, DuckDB and floor in turn; every engine output is checked against
# DuckDB's (benches/compare/agree.py: same keys, floats to 1e-12 relative). Prints wall, CPU and
# peak RSS medians and the ratios the performance targets are stated in; raw lines go to
# $Q2Q_BENCH_DATA/results.tsv. Figures belong in docs/BENCHMARKS.md with date, machine, command.
set -euo pipefail
cd "$(dirname "$0")/.."

queries="100000 1000000"
runs=3
top_k=10
memory_limit=""
duckdb_settings=()
peers="engine duckdb floor"
shape=synth
engine_settings=()
baseline=""
while [ $# -gt 0 ]; do
    case "$1" in
        --queries) queries="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --top-k) top_k="$2"; shift 2 ;;
        --memory-limit) memory_limit="$2"; shift 2 ;;
        --duckdb-set) duckdb_settings+=("$2"); shift 2 ;;
        --peers) peers="$2"; shift 2 ;;
        --shape) shape="$2"; shift 2 ;;
        --engine-set) engine_settings+=("$2"); shift 2 ;;
        --baseline) baseline="$2"; shift 2 ;;
        --bench) shift ;;  # cargo bench passes it
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if [ -n "$baseline" ]; then
    [ -x "$baseline" ] || { echo "--baseline $baseline: not an executable" >&2; exit 2; }
    peers="$peers baseline"
fi

data="${Q2Q_BENCH_DATA:-$HOME/.cache/q2q-prior/bench-data}"
mkdir -p "$data"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/q2q-prior/target}"

venv="${Q2Q_BENCH_VENV:-$PWD/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r benches/compare/requirements.txt
python="$venv/bin/python"

echo "building release binaries..." >&2
cargo build --release --locked --bin q2q-prior >&2
floor_bin=$(cargo bench --locked --bench io_floor --no-run --message-format=json 2>/dev/null |
    "$python" -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "io_floor" and m.get("executable"):
        print(m["executable"])')
engine="$CARGO_TARGET_DIR/release/q2q-prior"

results="$data/results.tsv"
: > "$results"
limit_args=()
if [ -n "$memory_limit" ]; then
    limit_args=(--memory-limit "$memory_limit")
fi

# measure SCALE LABEL CMD...: one timed run; appends "scale label wall user sys rss_kib" (peak RSS
# of the process tree's largest process, from GNU time)
measure() {
    local scale="$1" label="$2"
    shift 2
    local t
    t=$(mktemp)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$t" "$@" > "$data/last-$label.out" 2> "$data/last-$label.err"; then
        echo "$label failed at $scale queries:" >&2
        tail -20 "$data/last-$label.err" >&2
        rm -f "$t"
        exit 1
    fi
    echo "$scale $label $(tail -1 "$t")" >> "$results"
    rm -f "$t"
}

for n in $queries; do
    case "$shape" in
        synth) dir="$data/q$n" ;;
        zipf) dir="$data/zipf$n" ;;
        *) echo "unknown shape: $shape" >&2; exit 2 ;;
    esac
    if [ ! -f "$dir/neighbours.parquet" ]; then
        echo "$shape: $n queries -> $dir" >&2
        if [ "$shape" = synth ]; then
            "$engine" synth --queries "$n" --seed 42 --out "$dir" >&2
        else
            "$python" benches/compare/zipf_shape.py "$n" "$dir" >&2
        fi
    fi
    for run in $(seq 1 "$runs"); do
        echo "scale $n, round $run/$runs" >&2
        out="$dir/features.engine.parquet"
        for pin in "" 1; do
            pinned=()
            if [ -n "$pin" ]; then
                pinned=(taskset -c 0)
            fi
            if [[ " $peers " == *" engine$pin "* ]]; then
                measure "$n" "engine$pin" "${pinned[@]}" "$engine" run \
                    --engagement "$dir/engagement.parquet" --neighbours "$dir/neighbours.parquet" \
                    -o "$out" --top-k "$top_k" "${limit_args[@]}" "${engine_settings[@]}"
            fi
            if [[ " $peers " == *" duckdb$pin "* ]]; then
                measure "$n" "duckdb$pin" "${pinned[@]}" "$python" benches/compare/duckdb_run.py \
                    benches/compare/duckdb_feature_job.sql "$dir/engagement.parquet" \
                    "$dir/neighbours.parquet" "$dir/features.duckdb.parquet" "$top_k" "${duckdb_settings[@]}"
                if [ -f "$out" ]; then
                    "$python" benches/compare/agree.py "$out" "$dir/features.duckdb.parquet" >&2
                fi
            fi
        done
        if [ -n "$baseline" ]; then
            measure "$n" baseline "$baseline" run \
                --engagement "$dir/engagement.parquet" --neighbours "$dir/neighbours.parquet" \
                -o "$dir/features.baseline.parquet" --top-k "$top_k" "${limit_args[@]}" "${engine_settings[@]}"
            if [ -f "$out" ]; then
                "$python" benches/compare/agree.py "$out" "$dir/features.baseline.parquet" >&2
            fi
        fi
        if [[ " $peers " == *" floor "* ]]; then
            measure "$n" floor "$floor_bin" --engagement "$dir/engagement.parquet" \
                --neighbours "$dir/neighbours.parquet" --like "$out" --out "$dir/floor.parquet"
            # the floor's own clock: reading the inputs plus writing the output's rows (not decoding them)
            wall=$(sed -n 's/.*wall_s=\([0-9.]*\).*/\1/p' "$data/last-floor.out")
            sed -i "\$s/^\([0-9]* floor\) [0-9.]*/\1 $wall/" "$results"
        fi
    done
    if [ -f "$data/last-engine.err" ]; then
        grep -vE 'warning' "$data/last-engine.err" >&2 || true
    fi
done

"$python" - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for scale, label, wall, user, sys_, rss in rows:
    by.setdefault((int(scale), label), []).append((float(wall), float(user) + float(sys_), int(rss)))
med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in by.items()}
print(f"{'queries':>9} {'peer':<7} {'wall s':>8} {'cpu s':>8} {'peak RSS MiB':>13}  (medians of {len(next(iter(by.values())))} runs)")
for (scale, label), (wall, cpu, rss) in sorted(med.items()):
    rss_text = f"{rss / 1024:13.0f}" if label != "floor" else f"{'-':>13}"
    print(f"{scale:>9} {label:<7} {wall:8.2f} {cpu:8.2f} {rss_text}")
print()
scales = sorted({s for s, _ in med})
for s in scales:
    e, d, f = med.get((s, "engine")), med.get((s, "duckdb")), med.get((s, "floor"))
    if e and d:
        print(f"{s:>9} queries: engine/duckdb wall {e[0] / d[0]:.2f} (target <= 0.35), "
              f"engine/duckdb peak RSS {e[2] / d[2]:.2f} (target <= 1)")
    if e and f:
        print(f"{s:>9} queries: engine/floor wall {e[0] / f[0]:.2f} (target <= 1.3)")
    b = med.get((s, "baseline"))
    if e and b:
        print(f"{s:>9} queries: engine/baseline wall {e[0] / b[0]:.2f}, CPU {e[1] / b[1]:.2f}, "
              f"peak RSS {e[2] / b[2]:.2f}")
    for peer in ("engine", "duckdb"):
        one, two = med.get((s, peer + "1")), med.get((s, peer))
        if one and two:
            print(f"{s:>9} queries: {peer} 1 core / 2 cores wall {one[0] / two[0]:.2f} "
                  f"(engine target >= 1.8)")
if len(scales) >= 2 and all((s, "engine") in med for s in scales):
    lo, hi = scales[0], scales[-1]
    print(f"scaling: engine time({hi})/time({lo}) = {med[(hi, 'engine')][0] / med[(lo, 'engine')][0]:.2f} "
          f"for {hi / lo:.0f}x the queries (target <= {1.1 * hi / lo:.0f})")
EOF
