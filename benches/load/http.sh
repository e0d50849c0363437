#!/usr/bin/env bash
# The Open Inference Protocol over HTTP, on the MLP (digits_v2), in LOAD_ROUNDS rounds of every
# server one right after the other, medians over the rounds:
# - perf_analyzer (binary tensors): modeld over gRPC and over HTTP, MLServer over gRPC;
# - benches/rest_load.rs (JSON tensors, one client for both): modeld's REST and MLServer's REST,
#   which perf_analyzer cannot drive (MLServer has no /v2/models/{m}/config).
# Writes RUN_DIR/http/summary.md.
#
#   bash benches/load/http.sh          # MODELD_BIN=target/release/modeld skips the build
#
# Knobs: HTTP_CONCURRENCY ("1 16"), LOAD_ROUNDS (3), LOAD_INTERVAL_MS (4000),
# LOAD_STABILITY (15), LOAD_MAX_TRIALS (8). MODELD_* variables reach `modeld serve` as usual.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

concurrency="${HTTP_CONCURRENCY:-1 16}"
rounds="${LOAD_ROUNDS:-3}"
interval_ms="${LOAD_INTERVAL_MS:-4000}"
stability="${LOAD_STABILITY:-15}"
max_trials="${LOAD_MAX_TRIALS:-8}"

trap stop_all EXIT
trap 'exit 130' INT TERM

modeld_bin
tool_env
mlserver_env
run_dir="${RUN_DIR:-$repo/target/load/http-$(date +%Y%m%d-%H%M%S)}"
dir="$run_dir/http"
inputs_dir="$run_dir/inputs"
mkdir -p "$dir"
"$clients_py" "$load_dir/make_inputs.py" "$repo/models" "$inputs_dir"

port="$(free_port)"
log "http: starting modeld on 127.0.0.1:$port"
start_modeld "$dir/modeld" "$port"
wait_ready modeld "$modeld_pid" "$port" "$dir/modeld/modeld.log" digits_v2=digits.json
modeld_http="$modeld_http_port"
ml_port="$(free_port)"
log "http: starting MLServer on 127.0.0.1:$ml_port"
start_mlserver "$dir/mlserver" "$ml_port"
wait_ready MLServer "$mlserver_pid" "$ml_port" "$dir/mlserver/mlserver.log" digits_v2=digits.json

# name protocol address
targets=(
  "modeld_grpc grpc 127.0.0.1:$port"
  "modeld_http http 127.0.0.1:$modeld_http"
  "mlserver_grpc grpc 127.0.0.1:$ml_port"
)
for round in $(seq 1 "$rounds"); do
  for c in $concurrency; do
    for t in "${targets[@]}"; do
      read -r name protocol address <<<"$t"
      csv="$dir/${name}_c${c}_r${round}.csv"
      PERF_PROTOCOL="$protocol" perf "$name c=$c round $round" "$csv" -m digits_v2 -u "$address" \
        --input-data "$inputs_dir/digits.json" --concurrency-range "$c" --measurement-interval "$interval_ms" \
        --percentile 50 --stability-percentage "$stability" --max-trials "$max_trials" ||
        log "perf_analyzer: $name c=$c round $round did not finish cleanly (see $csv.log)"
    done
  done
done

log "rest_load: modeld's REST and MLServer's REST with JSON tensors (benches/rest_load.rs)"
(cd "$repo" && REST_LOAD_TARGETS="modeld_rest=http://127.0.0.1:$modeld_http mlserver_rest=http://127.0.0.1:$mlserver_http_port" \
  REST_LOAD_CONCURRENCY="$concurrency" REST_LOAD_ROUNDS="$rounds" REST_LOAD_SECS="$((interval_ms / 1000))" \
  cargo bench --quiet --bench rest_load) >"$dir/rest_load.md" 2>"$dir/rest_load.log" ||
  log "rest_load failed (see $dir/rest_load.log)"

"$clients_py" - "$dir" "$concurrency" "$rounds" >"$dir/summary.md" <<'PY'
import csv, os, statistics, sys
d, conc, rounds = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
names = ["modeld_grpc", "modeld_http", "mlserver_grpc"]
def read(name):
    try:
        with open(os.path.join(d, name)) as f:
            row = list(csv.DictReader(f))[-1]
        return float(row["Inferences/Second"]), float(row["p50 latency"])
    except (OSError, IndexError, KeyError, ValueError):
        return None
print(f"Medians over {rounds} rounds (each round: every server, one right after the other).")
print()
print("perf_analyzer (sync client, binary tensors):")
print()
print("| concurrency | server and protocol | infer/s | p50 | throughput / MLServer gRPC | runs |")
print("| --- | --- | --- | --- | --- | --- |")
for c in conc:
    med = {}
    for n in names:
        runs = [r for r in (read(f"{n}_c{c}_r{k}.csv") for k in range(1, rounds + 1)) if r]
        if runs:
            med[n] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), len(runs))
    base = med.get("mlserver_grpc")
    for n in names:
        if n not in med:
            print(f"| {c} | {n} | failed | | | 0 |")
            continue
        tput, p50, k = med[n]
        ratio = f"{tput / base[0]:.1f}×" if base else ""
        print(f"| {c} | {n} | {tput:.0f} | {p50:.0f} µs | {ratio} | {k} of {rounds} |")
PY
echo >>"$dir/summary.md"
cat "$dir/rest_load.md" >>"$dir/summary.md"
cat "$dir/summary.md"
