#!/usr/bin/env bash
# Swap under load: perf_analyzer at concurrency 16 on the model name `active` of a modeld, first
# steady (three windows of SWAP_SECONDS/3), then the same run while the CLI activates digits_v1
# and digits_v2 alternately SWAP_COUNT times (swap_driver.py). Every request must succeed.
#
#   bash benches/load/swap.sh            # standalone (run.sh calls it with RUN_DIR set)
#
# Knobs: SWAP_COUNT (100), SWAP_SECONDS (20), SWAP_CONCURRENCY (16), SWAP_POLL_MS (100: the
# server's --registry-poll-ms, how soon it notices a CLI activation; the default of 500 would
# make 100 swaps take ~50 s). Writes RUN_DIR/swap/summary.json for report.py.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

count="${SWAP_COUNT:-100}"
seconds="${SWAP_SECONDS:-20}"
concurrency="${SWAP_CONCURRENCY:-16}"
poll_ms="${SWAP_POLL_MS:-100}"

trap stop_all EXIT
trap 'exit 130' INT TERM

modeld_bin
tool_env
run_dir="${RUN_DIR:-$repo/target/load/swap-$(date +%Y%m%d-%H%M%S)}"
dir="$run_dir/swap"
inputs_dir="$run_dir/inputs"
mkdir -p "$dir"
if [ ! -f "$inputs_dir/digits.json" ]; then
  "$clients_py" "$load_dir/make_inputs.py" "$repo/models" "$inputs_dir"
fi

port="$(free_port)"
log "swap: starting modeld on 127.0.0.1:$port (--registry-poll-ms $poll_ms)"
start_modeld "$dir" "$port" --registry-poll-ms "$poll_ms"
wait_ready modeld "$modeld_pid" "$port" "$dir/modeld.log" digits_v2=digits.json active=digits.json

# Failed requests as the server counts them (ModelStatistics fail.count over all models).
server_failures() {
  "$clients_py" - "127.0.0.1:$port" <<'EOF'
import sys
import tritonclient.grpc as g
stats = g.InferenceServerClient(sys.argv[1]).get_inference_statistics("", as_json=True)
print(sum(int(m.get("inference_stats", {}).get("fail", {}).get("count", 0)) for m in stats.get("model_stats", [])))
EOF
}

# The same perf_analyzer command for both runs: three windows of SWAP_SECONDS/3 each, reported
# together (the stability check is turned off with a 1000% threshold: both runs measure exactly
# three windows, whatever their spread).
window_ms=$((seconds * 1000 / 3))
pa_args=(-m active -u "127.0.0.1:$port" --input-data "$inputs_dir/digits.json"
  --concurrency-range "$concurrency" --measurement-interval "$window_ms"
  --stability-percentage 1000 --max-trials 3 --percentile 50)

fail_before="$(server_failures)"
steady_status=0
t0="$(date +%s%N)"
perf "swap: steady c=$concurrency, 3 windows of $window_ms ms" "$dir/steady.csv" "${pa_args[@]}" ||
  steady_status=$?
# perf_analyzer's wall-clock time (start-up and windows) is longer than the windows alone; the
# swaps are spread over the steady run's wall-clock time, so they cover the whole swapping run.
spread="$(( ($(date +%s%N) - t0) / 1000000 ))"
fail_steady="$(server_failures)"

log "swap: the same run while the CLI swaps digits_v1/digits_v2 $count times over $spread ms"
perf "swap: under swaps" "$dir/swapping.csv" "${pa_args[@]}" &
perf_pid=$!
driver_status=0
"$clients_py" "$load_dir/swap_driver.py" --modeld "$MODELD_BIN" --url "127.0.0.1:$port" \
  --count "$count" --duration "$((spread / 1000)).$(printf '%03d' $((spread % 1000)))" \
  --out "$dir/driver.json" --log "$dir/cli.log" \
  digits_v1 digits_v2 >"$dir/driver.log" 2>&1 || driver_status=$?
swap_status=0
wait "$perf_pid" || swap_status=$?
fail_after="$(server_failures)"

"$clients_py" - "$dir" "$steady_status" "$swap_status" "$driver_status" \
  "$((fail_steady - fail_before))" "$((fail_after - fail_steady))" "$count" "$seconds" "$concurrency" "$poll_ms" "$spread" <<'EOF'
import json, sys
d, steady, swapping, driver, f_steady, f_swap, count, seconds, conc, poll, spread = sys.argv[1:]
summary = {
    "perf_exit": {"steady": int(steady), "swapping": int(swapping)},
    "driver_exit": int(driver),
    "server_failed_requests": {"steady": int(f_steady), "swapping": int(f_swap)},
    "count": int(count), "seconds": int(seconds), "concurrency": int(conc), "poll_ms": int(poll),
    "steady_wall_ms": int(spread),
}
try:
    summary["driver"] = json.load(open(f"{d}/driver.json"))
except OSError:
    summary["driver"] = None
json.dump(summary, open(f"{d}/summary.json", "w"), indent=2)
EOF
log "swap: perf_analyzer exit steady=$steady_status swapping=$swap_status, driver exit $driver_status, server-counted failures steady=$((fail_steady - fail_before)) swapping=$((fail_after - fail_steady))"
log "swap: driver: $(cat "$dir/driver.log")"

if ((steady_status || swap_status || driver_status || fail_after != fail_before)); then
  die "swap under load: failures (logs in $dir)"
fi
