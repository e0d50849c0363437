#!/usr/bin/env bash
# Two builds of modeld side by side on the MLP (digits_v2): perf_analyzer over gRPC at each
# concurrency, in LOAD_ROUNDS rounds of (A, B) one right after the other, medians over the
# rounds of throughput, p50 and the server's CPU time per request; then each build's peak memory (VmHWM) around one 50 MB JSON body sent to
# /v2/models/digits_v2/infer (a [1,64] input with 25 million values: refused with 400).
# Writes RUN_DIR/compare/summary.md.
#
#   MODELD_BIN_A=/tmp/old/modeld MODELD_BIN_B=target/release/modeld bash benches/load/compare.sh
#
# Against the bare server (benches/bare_server.rs, the request path's baseline):
#
#   cargo build --release --bin modeld --example bare_server
#   MODELD_BIN_A=target/release/examples/bare_server MODELD_BIN_B=target/release/modeld \
#     COMPARE_JSON_MB=0 bash benches/load/compare.sh
#
# Knobs: COMPARE_CONCURRENCY ("1 16"), LOAD_ROUNDS (3), LOAD_INTERVAL_MS (4000),
# LOAD_STABILITY (15), LOAD_MAX_TRIALS (8), COMPARE_JSON_MB (50; 0 skips the JSON body, which
# the bare server has no HTTP port for), COMPARE_ASYNC (1: perf_analyzer's --async client).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

concurrency="${COMPARE_CONCURRENCY:-1 16}"
rounds="${LOAD_ROUNDS:-3}"
interval_ms="${LOAD_INTERVAL_MS:-4000}"
stability="${LOAD_STABILITY:-15}"
max_trials="${LOAD_MAX_TRIALS:-8}"
json_mb="${COMPARE_JSON_MB:-50}"
mode=()
[ "${COMPARE_ASYNC:-0}" = 1 ] && mode=(--async)
[ -x "${MODELD_BIN_A:-}" ] || die "MODELD_BIN_A must name a modeld binary"
[ -x "${MODELD_BIN_B:-}" ] || die "MODELD_BIN_B must name a modeld binary"

trap stop_all EXIT
trap 'exit 130' INT TERM

tool_env
run_dir="${RUN_DIR:-$repo/target/load/compare-$(date +%Y%m%d-%H%M%S)}"
dir="$run_dir/compare"
inputs_dir="$run_dir/inputs"
mkdir -p "$dir"
"$clients_py" "$load_dir/make_inputs.py" "$repo/models" "$inputs_dir"

# cpu_ticks PID: the process's user + system time so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# start NAME BIN: that build on free ports, ready; sets port.
start() {
  MODELD_BIN="$2"
  port="$(free_port)"
  start_modeld "$dir/$1" "$port"
  wait_ready "$1" "$modeld_pid" "$port" "$dir/$1/modeld.log" digits_v2=digits.json
}

for round in $(seq 1 "$rounds"); do
  for name in A B; do
    bin_var="MODELD_BIN_$name"
    start "$name" "${!bin_var}"
    for c in $concurrency; do
      csv="$dir/${name}_c${c}_r${round}.csv"
      # The server's CPU time over the run (user + system, all its threads), for CPU per request.
      cpu0="$(cpu_ticks "$modeld_pid")"
      wall0="$(date +%s.%N)"
      perf "$name c=$c round $round" "$csv" -m digits_v2 -u "127.0.0.1:$port" \
        --input-data "$inputs_dir/digits.json" --concurrency-range "$c" --measurement-interval "$interval_ms" \
        --percentile 50 --stability-percentage "$stability" --max-trials "$max_trials" "${mode[@]}" ||
        log "perf_analyzer: $name c=$c round $round did not finish cleanly (see $csv.log)"
      echo "$cpu0 $(cpu_ticks "$modeld_pid") $wall0 $(date +%s.%N) $(getconf CLK_TCK)" >"$csv.cpu"
    done
    stop_all
  done
done

# Peak memory around one big JSON body, each build freshly started.
body="$run_dir/big.json"
if [ "$json_mb" -gt 0 ]; then
"$clients_py" - "$body" "$json_mb" <<'PY'
import sys
path, mb = sys.argv[1], int(sys.argv[2])
n = mb * 1_000_000 // 2
with open(path, "w") as f:
    f.write('{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[')
    f.write(",".join(["0"] * n))
    f.write("]}]}")
PY
for name in A B; do
  bin_var="MODELD_BIN_$name"
  start "$name" "${!bin_var}"
  before="$(awk '/VmHWM/ {print $2}' "/proc/$modeld_pid/status")"
  code="$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
    --data-binary "@$body" "http://127.0.0.1:$modeld_http_port/v2/models/digits_v2/infer")"
  after="$(awk '/VmHWM/ {print $2}' "/proc/$modeld_pid/status")"
  echo "$name $code $before $after" >"$dir/${name}_json.txt"
  stop_all
done
else
  echo 0 >"$body"
fi

COMPARE_CLIENT="$([ "${COMPARE_ASYNC:-0}" = 1 ] && echo async || echo sync)" \
  "$clients_py" - "$load_dir" "$dir" "$concurrency" "$rounds" "$(stat -c %s "$body")" >"$dir/summary.md" <<'PY'
import os, statistics, sys
sys.path.insert(0, sys.argv[1])
from report import read_csv
d, conc, rounds, size = sys.argv[2], sys.argv[3].split(), int(sys.argv[4]), int(sys.argv[5])
def read(name):
    r = read_csv(os.path.join(d, name))
    if not r:
        return None
    # Server CPU per request: its CPU time over the whole perf_analyzer run divided by the
    # requests of that run, estimated as the measured throughput times the run's length (the
    # client's start-up, when nothing is sent, counts as sending: a slight underestimate, the
    # same for both builds).
    try:
        c0, c1, w0, w1, hz = map(float, open(os.path.join(d, name + ".cpu")).read().split())
        cpu_us = (c1 - c0) / hz / (r["tput"] * (w1 - w0)) * 1e6
    except (OSError, ValueError, ZeroDivisionError):
        cpu_us = float("nan")
    return (r["tput"], r["p50"], cpu_us)
print(f"Medians over {rounds} rounds (each round: A, then B). perf_analyzer, {os.environ.get('COMPARE_CLIENT', 'sync')} client, gRPC, the MLP.")
print()
print("| concurrency | build | infer/s | p50 | server CPU / request | B / A throughput | B / A CPU | runs |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for c in conc:
    med = {}
    for n in ["A", "B"]:
        runs = [r for r in (read(f"{n}_c{c}_r{k}.csv") for k in range(1, rounds + 1)) if r]
        if runs:
            med[n] = tuple(statistics.median(r[i] for r in runs) for i in range(3)) + (len(runs),)
    for n in ["A", "B"]:
        if n not in med:
            print(f"| {c} | {n} | failed | | | | | 0 |")
            continue
        t, p, cpu, k = med[n]
        both = n == "B" and "A" in med
        ratio = f"{t / med['A'][0]:.3f}" if both else ""
        cpu_ratio = f"{cpu / med['A'][2]:.3f}" if both else ""
        print(f"| {c} | {n} | {t:.0f} | {p:.0f} µs | {cpu:.1f} µs | {ratio} | {cpu_ratio} | {k} of {rounds} |")
if size < 1000:
    sys.exit(0)
print()
print(f"One JSON body of {size / 1e6:.0f} MB to /v2/models/digits_v2/infer (peak resident memory, VmHWM):")
print()
print("| build | answer | peak before | peak after | grew by | grew / body |")
print("| --- | --- | --- | --- | --- | --- |")
for n in ["A", "B"]:
    try:
        _, code, before, after = open(os.path.join(d, f"{n}_json.txt")).read().split()
    except (OSError, ValueError):
        print(f"| {n} | failed | | | | |")
        continue
    grew = (int(after) - int(before)) * 1024
    print(f"| {n} | {code} | {int(before) / 1024:.0f} MiB | {int(after) / 1024:.0f} MiB | {grew / 2**20:.0f} MiB | {grew / size:.2f}× |")
PY
cat "$dir/summary.md"
