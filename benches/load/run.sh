#!/usr/bin/env bash
# Load test: perf_analyzer against modeld (tract engine), modeld (onnxruntime engine) and Seldon
# MLServer side by side, in one run on one machine, then a swap-under-load run on modeld
# (swap.sh). See benches/load/README.md.
#
#   bash benches/load/run.sh              # builds modeld (release), installs the tools, ~12 min
#   MODELD_BIN=/path/to/modeld bash benches/load/run.sh   # use an already-built binary
#
# Knobs (environment): LOAD_OUT (target/load), LOAD_CONCURRENCY ("1 4 16"),
# LOAD_ASYNC_CONCURRENCY ("4 16": the concurrencies also measured with perf_analyzer's async
# client on one thread; "" for none), LOAD_INTERVAL_MS (4000), LOAD_STABILITY (15, %),
# LOAD_MAX_TRIALS (8), LOAD_SKIP_SWAP (unset), LOAD_ENGINES ("tract onnxruntime": the modeld
# engines measured; the library comes from scripts/onnxruntime.sh), and those of swap.sh
# (SWAP_COUNT, SWAP_SECONDS, SWAP_POLL_MS), MODELD_BENCH_ORT_POOL=1 (MLServer runs onnxruntime
# on a thread pool; see mlserver/onnx_runtime.py). MODELD_* variables reach
# `modeld serve` as usual (e.g. MODELD_RUNTIME_THREADS=2).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

out="${LOAD_OUT:-$repo/target/load}"
concurrency="${LOAD_CONCURRENCY:-1 4 16}"
async_concurrency="${LOAD_ASYNC_CONCURRENCY-4 16}"
for c in $async_concurrency; do
  [[ " $concurrency " == *" $c "* ]] ||
    die "LOAD_ASYNC_CONCURRENCY: $c is not in LOAD_CONCURRENCY ($concurrency); give space-separated values from it"
done
interval_ms="${LOAD_INTERVAL_MS:-4000}"
stability="${LOAD_STABILITY:-15}"
max_trials="${LOAD_MAX_TRIALS:-8}"
engines="${LOAD_ENGINES:-tract onnxruntime}"
t_start=$SECONDS

trap stop_all EXIT
trap 'exit 130' INT TERM

# --- 1. modeld and the tools ------------------------------------------------------------------
modeld_bin
log "installing/checking perf_analyzer (tests/clients/setup.sh)"
tool_env
ort_lib=""
if [[ " $engines " == *" onnxruntime "* ]]; then
  log "fetching ONNX Runtime's library for modeld (scripts/onnxruntime.sh)"
  ort_lib="$(bash "$repo/scripts/onnxruntime.sh")"
fi

mlserver_env

run_dir="$out/run-$(date +%Y%m%d-%H%M%S)"
inputs_dir="$run_dir/inputs"
mkdir -p "$run_dir"
log "results and logs: $run_dir"
"$mlserver_py" "$load_dir/make_inputs.py" "$repo/models" "$inputs_dir"

# --- 2. versions and machine --------------------------------------------------------------------
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc=$(nproc)"
  echo "cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "mem=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
  if rev="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null)"; then
    git -C "$repo" diff --quiet HEAD || rev="$rev with uncommitted changes"
  else
    rev="unknown (not a git checkout)"
  fi
  echo "modeld_rev=$rev"
  echo "modeld_bin=$MODELD_BIN${modeld_prebuilt:+ (from MODELD_BIN, not built by this run: it may not match the repository)}"
  echo "rustc=$(rustc --version 2>/dev/null || echo unknown)"
  echo "perf_analyzer=$("$clients_py" -c 'import importlib.metadata as m; print("tritonclient " + m.version("tritonclient"))') ($(perf_analyzer --version 2>&1 | head -n1))"
  echo "mlserver=$("$mlserver_py" -c 'import importlib.metadata as m; print(m.version("mlserver"))')"
  echo "onnxruntime=$("$mlserver_py" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')"
  echo "python=$("$mlserver_py" --version 2>&1 | cut -d' ' -f2)"
  echo "modeld_engines=$engines"
  echo "modeld_onnxruntime_lib=${ort_lib:-none}"
  if [ "${MODELD_BENCH_ORT_POOL:-}" = 1 ]; then
    echo "mlserver_ort_run=on a thread pool of one thread per CPU (MODELD_BENCH_ORT_POOL=1)"
  else
    echo "mlserver_ort_run=inline on the event loop"
  fi
  echo "settings=perf_analyzer -i grpc --concurrency-range C --measurement-interval $interval_ms --stability-percentage $stability --max-trials $max_trials --percentile 50, fixed --input-data"
  echo "async_concurrency=$async_concurrency"
} >"$run_dir/env.txt"

# modeld runs with --log warn: a fallback to tract (library or model) is the warning looked for.
check_engine() { # NAME
  if grep -q "onnxruntime not used\|cannot load ONNX Runtime" "${dir_of[$1]}/modeld.log"; then
    die "$1 is not computing with ONNX Runtime: $(cat "${dir_of[$1]}/modeld.log")"
  fi
}

# --- 3. the servers -----------------------------------------------------------------------------
# One modeld per engine, each on its own SQLite registry; the servers measured are named
# modeld (tract), modeld_ort (onnxruntime) and mlserver in the CSVs.
servers=()
declare -A port_of db_of dir_of pid_of
for engine in $engines; do
  case "$engine" in
    tract) name=modeld; flags=() ;;
    onnxruntime) name=modeld_ort; flags=(--engine onnxruntime --onnxruntime-lib "$ort_lib") ;;
    *) die "LOAD_ENGINES: unknown engine $engine (tract, onnxruntime)" ;;
  esac
  port_of[$name]="$(free_port)"
  dir_of[$name]="$run_dir/$name"
  log "starting $name (engine $engine) on 127.0.0.1:${port_of[$name]}"
  start_modeld "${dir_of[$name]}" "${port_of[$name]}" ${flags[@]+"${flags[@]}"}
  db_of[$name]="$MODELD_DATABASE_URL"
  pid_of[$name]="$modeld_pid"
  log "waiting for $name (digits_v2 active)"
  wait_ready "$name" "$modeld_pid" "${port_of[$name]}" "${dir_of[$name]}/modeld.log" digits_v2=digits.json
  if [ "$engine" = onnxruntime ]; then check_engine "$name"; fi
  servers+=("$name")
done
port_of[mlserver]="$(free_port)"
log "starting MLServer on 127.0.0.1:${port_of[mlserver]}"
start_mlserver "$run_dir/mlserver" "${port_of[mlserver]}"
servers+=(mlserver)
log "waiting for MLServer (digits_v2, cnn)"
wait_ready MLServer "$mlserver_pid" "${port_of[mlserver]}" "$run_dir/mlserver/mlserver.log" \
  digits_v2=digits.json cnn=cnn.json

# --- 4. the measurements ------------------------------------------------------------------------
# For each model and concurrency, every server right after the other, so slow drift on a shared
# machine hits all alike. modeld serves one model at a time: cnn is activated with the CLI
# between the two models. The servers not being measured are idle.
#
# A measurement that does not stabilise within the trials is measured once more over three
# windows without the stability check, and marked as unstable in the report (CSV.unstable).
failed_runs=()
# Two load clients. "sync" is perf_analyzer's default: one thread per concurrent request, each
# blocking on its call. "async" (--async --max-threads 1) keeps the same number of requests in
# flight from a single thread. On 2 cores shared with the server, the 16 sync threads use about
# three times the server's CPU per request; the async client leaves the server more of the
# machine. Both are measured, against every server alike.
measure() { # model input_file
  local model="$1" data="$2" c mode server csv args
  for c in $concurrency; do
    for mode in sync async; do
      [ "$mode" = async ] && [[ " $async_concurrency " != *" $c "* ]] && continue
      for server in "${servers[@]}"; do
        csv="$run_dir/${server}_${model}_c${c}.csv"
        args=(-m "$model" -u "127.0.0.1:${port_of[$server]}" --input-data "$inputs_dir/$data"
          --concurrency-range "$c" --measurement-interval "$interval_ms" --percentile 50)
        if [ "$mode" = async ]; then
          csv="$run_dir/${server}_${model}_c${c}_async.csv"
          args+=(--async --max-threads 1)
        fi
        perf "$server $model c=$c $mode" "$csv" "${args[@]}" \
          --stability-percentage "$stability" --max-trials "$max_trials" && continue
        if grep -q "Failed to obtain stable measurement" "$csv.log"; then
          log "$server $model c=$c $mode did not stabilise within $max_trials windows: measuring 3 windows unchecked"
          mv "$csv.log" "$csv.unstable.log"
          touch "$csv.unstable"
          perf "$server $model c=$c $mode (unchecked)" "$csv" "${args[@]}" \
            --stability-percentage 1000 --max-trials 3 && continue
        fi
        failed_runs+=("$server $model c=$c $mode")
        log "FAILED: $server $model c=$c $mode (see $csv.log)"
      done
    done
  done
}

measure digits_v2 digits.json

for name in "${servers[@]}"; do
  [ "$name" = mlserver ] && continue
  log "$name: activating cnn with the CLI"
  "$MODELD_BIN" --log warn activate cnn --reason "load test" --database-url "${db_of[$name]}" \
    >"${dir_of[$name]}/activate-cnn.log" 2>&1 ||
    die "$name: modeld activate cnn failed: $(cat "${dir_of[$name]}/activate-cnn.log")"
  wait_ready "$name" "${pid_of[$name]}" "${port_of[$name]}" "${dir_of[$name]}/modeld.log" cnn=cnn.json
  if [ "$name" = modeld_ort ]; then check_engine "$name"; fi
done

measure cnn cnn.json

stop_all

# --- 5. swap under load -------------------------------------------------------------------------
swap_status=0
if [ -z "${LOAD_SKIP_SWAP:-}" ]; then
  RUN_DIR="$run_dir" bash "$load_dir/swap.sh" || swap_status=$?
fi

# --- 6. the report ------------------------------------------------------------------------------
"$mlserver_py" "$load_dir/report.py" "$run_dir" >"$run_dir/results.md"
cp "$run_dir/results.md" "$out/results.md"
cat "$run_dir/results.md"
log "done in $((SECONDS - t_start)) s; table in $out/results.md, logs in $run_dir"

if ((${#failed_runs[@]})); then
  die "perf_analyzer failed for: ${failed_runs[*]} (logs in $run_dir)"
fi
((swap_status == 0)) || die "the swap-under-load run failed (see $run_dir/swap)"
