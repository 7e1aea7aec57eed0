#!/usr/bin/env bash
# The feature job locally and on a Ballista cluster on this machine, side by side (docs/DISTRIBUTED.md):
#   local          q2q-prior run (default merge plan)
#   local-sql      q2q-prior run --plan sql
#   cluster-1      --cluster: a scheduler and 1 executor with 2 task slots (merge plan, one task:
#                  --partitions 1)
#   cluster-2      --cluster: a scheduler and 2 executors with 1 task slot each (merge plan,
#                  default partitions: the client's cores; the client writes the file)
#   cluster-2-sql  --cluster --plan sql on another such cluster of 2 x 1 slot
#   cluster-2-parts --cluster --partitions 2 -o folder/: the merge stage as two shares, the
#                  executors writing the parts (a fourth cluster of 2 x 1 slot); also prints
#                  each executor's CPU, the client's CPU against theirs, and each executor's peak
# The clusters are separate processes on 127.0.0.1 started once; the rounds alternate between the
# six. Every cluster output is checked against the local one (benches/compare/agree.py).
#
#   benches/cluster.sh [--queries 100000] [--runs 3] [--top-k 10] [--bin PATH]
#
# Wall time and peak RSS are the client's; CPU adds the executors' and the scheduler's (from
# /proc, during the run); executor peak RSS is the largest executor's high-water mark over all runs.
set -euo pipefail
cd "$(dirname "$0")/.."

queries=100000
runs=3
top_k=10
bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --queries) queries="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --top-k) top_k="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --bench) shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

data="${Q2Q_BENCH_DATA:-$HOME/.cache/q2q-prior/bench-data}"
mkdir -p "$data"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/q2q-prior/target}"
venv="${Q2Q_BENCH_VENV:-$PWD/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r benches/compare/requirements.txt
python="$venv/bin/python"

if [ -z "$bin" ]; then
    echo "building the release binary..." >&2
    cargo build --release --locked --bin q2q-prior >&2
    bin="$CARGO_TARGET_DIR/release/q2q-prior"
fi

dir="$data/q$queries"
if [ ! -f "$dir/neighbours.parquet" ]; then
    echo "synth: $queries queries -> $dir" >&2
    "$bin" synth --queries "$queries" --seed 42 --out "$dir" >&2
fi
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    exit 1
}

# start_cluster NAME EXECUTORS SLOTS: sets cluster_url_NAME and cluster_pids_NAME
start_cluster() {
    local name="$1" n="$2" slots="$3" port
    port=$(free_port)
    "$bin" scheduler --bind "127.0.0.1:$port" 2> "$work/$name-scheduler.log" &
    pids+=($!)
    local members="$!"
    wait_port "$port"
    for i in $(seq 1 "$n"); do
        local flight grpc
        flight=$(free_port)
        grpc=$(free_port)
        "$bin" executor --scheduler "127.0.0.1:$port" --port "$flight" --grpc-port "$grpc" \
            --concurrency "$slots" --work-dir "$work/$name-executor-$i" 2> "$work/$name-executor-$i.log" &
        pids+=($!)
        members="$members $!"
        wait_port "$flight"
    done
    sleep 2  # executors register with their first heartbeat
    printf -v "cluster_url_$name" '%s' "df://127.0.0.1:$port"
    printf -v "cluster_pids_$name" '%s' "$members"
}
start_cluster one 1 2
start_cluster two 2 1
start_cluster three 2 1
start_cluster four 2 1
start_cluster five 2 1

# CPU seconds (user + system) of the given processes so far
cpu_of() {
    local total=0 p
    for p in "$@"; do
        total=$("$python" -c 'import os,sys
f=open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")",1)[1].split()
print(float(sys.argv[2]) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"))' "$p" "$total")
    done
    echo "$total"
}

results="$data/cluster-results.tsv"
: > "$results"
# measure LABEL PIDS CMD...: appends "label wall cpu rss_kib"
measure() {
    local label="$1" members="$2"
    shift 2
    local t before after
    t=$(mktemp)
    # shellcheck disable=SC2086
    before=$(cpu_of $members)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$t" "$@" > /dev/null 2> "$work/last-$label.err"; then
        echo "$label failed:" >&2
        tail -20 "$work/last-$label.err" >&2
        exit 1
    fi
    # shellcheck disable=SC2086
    after=$(cpu_of $members)
    read -r wall user sys rss < <(tail -1 "$t")
    "$python" -c "print($user + $sys)" > "$work/time-client"
    echo "$label $wall $("$python" -c "print($user + $sys + $after - $before)") $rss" >> "$results"
    rm -f "$t"
}

job=(run --engagement "$dir/engagement.parquet" --neighbours "$dir/neighbours.parquet" --top-k "$top_k")
for round in $(seq 1 "$runs"); do
    echo "round $round/$runs" >&2
    measure local "" "$bin" "${job[@]}" -o "$work/local.parquet"
    measure local-sql "" "$bin" "${job[@]}" -o "$work/local-sql.parquet" --plan sql
    # shellcheck disable=SC2154
    measure cluster-1 "$cluster_pids_one" "$bin" "${job[@]}" -o "$work/cluster-1.parquet" --partitions 1 --cluster "$cluster_url_one"
    # shellcheck disable=SC2154
    measure cluster-2 "$cluster_pids_two" "$bin" "${job[@]}" -o "$work/cluster-2.parquet" --cluster "$cluster_url_two"
    # shellcheck disable=SC2154
    measure cluster-2-sql "$cluster_pids_three" "$bin" "${job[@]}" -o "$work/cluster-2-sql.parquet" --cluster "$cluster_url_three" --plan sql
    # each executor's CPU during the parts run, and the client's own
    # shellcheck disable=SC2154
    read -r -a four <<< "${cluster_pids_four#* }"
    e1=$(cpu_of "${four[0]}"); e2=$(cpu_of "${four[1]}")
    rm -rf "$work/cluster-2-parts"
    # shellcheck disable=SC2154
    measure cluster-2-parts "$cluster_pids_four" "$bin" "${job[@]}" -o "$work/cluster-2-parts/" --partitions 2 --cluster "$cluster_url_four"
    echo "split $(cpu_of "${four[0]}") $e1 $(cpu_of "${four[1]}") $e2 $(tail -1 "$work/time-client")" >> "$results"
    rm -rf "$work/cluster-1-parts"
    # shellcheck disable=SC2154
    measure cluster-1-parts "$cluster_pids_five" "$bin" "${job[@]}" -o "$work/cluster-1-parts/" --partitions 1 --cluster "$cluster_url_five"
    # the shares are each sorted, not one order: sorted into one file to compare
    for parts in cluster-2-parts cluster-1-parts; do
        "$bin" sql -q -c "COPY (SELECT * FROM '$work/$parts/' ORDER BY query, product_id) TO '$work/$parts.parquet'" > /dev/null
    done
    for other in local-sql cluster-1 cluster-2 cluster-2-sql cluster-2-parts cluster-1-parts; do
        "$python" benches/compare/agree.py "$work/$other.parquet" "$work/local.parquet" >&2
    done
done
executor_rss() {
    local max=0 p kib
    for p in "$@"; do
        kib=$(awk '/VmHWM/ {print $2}' "/proc/$p/status")
        [ "$kib" -gt "$max" ] && max=$kib
    done
    echo "$max"
}
# shellcheck disable=SC2086
echo "executor-peak cluster-1 $(executor_rss ${cluster_pids_one#* })" >> "$results"
# shellcheck disable=SC2086
echo "executor-peak cluster-2 $(executor_rss ${cluster_pids_two#* })" >> "$results"
# shellcheck disable=SC2086
echo "executor-peak cluster-2-sql $(executor_rss ${cluster_pids_three#* })" >> "$results"
# shellcheck disable=SC2086
echo "executor-peak cluster-2-parts $(executor_rss ${cluster_pids_four#* })" >> "$results"
# shellcheck disable=SC2086
echo "executor-peak cluster-1-parts $(executor_rss ${cluster_pids_five#* })" >> "$results"
for p in ${cluster_pids_four#* }; do
    echo "executor-each cluster-2-parts $(awk '/VmHWM/ {print $2}' "/proc/$p/status")" >> "$results"
done
for p in ${cluster_pids_five#* }; do
    echo "executor-each cluster-1-parts $(awk '/VmHWM/ {print $2}' "/proc/$p/status")" >> "$results"
done
rows=$("$python" -c 'import pyarrow.parquet as pq, sys; print(pq.ParquetFile(sys.argv[1]).metadata.num_rows)' "$work/local.parquet")

"$python" - "$results" "$queries" "$rows" "$runs" <<'EOF'
import statistics, sys
path, queries, rows, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
by, peak, splits, each = {}, {}, [], {}
for line in open(path):
    f = line.split()
    if f[0] == "executor-peak":
        peak[f[1]] = int(f[2])
    elif f[0] == "executor-each":
        each.setdefault(f[1], []).append(int(f[2]))
    elif f[0] == "split":
        a, a0, b, b0, client = map(float, f[1:])
        splits.append((a - a0, b - b0, client))
    else:
        by.setdefault(f[0], []).append((float(f[1]), float(f[2]), int(f[3])))
med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in by.items()}
print(f"{queries} queries, {rows:,} output rows; medians of {runs} runs")
print(f"{'':<14} {'wall s':>8} {'cpu s':>8} {'client RSS MiB':>15} {'executor RSS MiB':>17} {'wall / local':>13} {'wall / local-sql':>17}")
for k in ["local", "local-sql", "cluster-1", "cluster-2", "cluster-2-sql", "cluster-2-parts", "cluster-1-parts"]:
    w, c, r = med[k]
    e = f"{peak[k] / 1024:17.0f}" if k in peak else f"{'-':>17}"
    print(f"{k:<14} {w:8.2f} {c:8.2f} {r / 1024:15.0f} {e} {w / med['local'][0]:13.2f} {w / med['local-sql'][0]:17.2f}")
a, b, client = (statistics.median(x[i] for x in splits) for i in range(3))
print(f"cluster-2-parts: executor CPU {a:.2f} s and {b:.2f} s (split {max(a, b) / max(min(a, b), 1e-9):.2f}:1); "
      f"client CPU {client:.2f} s = {100 * client / (a + b):.1f}% of the executors'; "
      f"executor peaks {', '.join(f'{k / 1024:.0f}' for k in each['cluster-2-parts'])} MiB (over all runs)")
single = max(each["cluster-1-parts"])
print(f"cluster-1-parts: executor peaks {', '.join(f'{k / 1024:.0f}' for k in each['cluster-1-parts'])} MiB; "
      f"each cluster-2-parts executor's peak against the single task's executor: "
      f"{', '.join(f'{100 * k / single:.0f}%' for k in each['cluster-2-parts'])}")
EOF
