# Shared helpers for benches/load/run.sh and swap.sh (sourced, not run).
# Globals the caller sets before use: inputs_dir (wait_ready), mlserver_py (start_mlserver; mlserver_env sets it).
# Globals set here for the caller: modeld_prebuilt, clients_py, modeld_pid, modeld_http_port,
# mlserver_py, mlserver_pid, mlserver_http_port.
# shellcheck shell=bash disable=SC2034,SC2154

load_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$load_dir/../.." && pwd)"

modeld_prebuilt=""

log() { printf '[load %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Servers started by this shell, stopped by stop_all (the EXIT trap).
declare -a started_pids=()

# stop_pid PID NAME: SIGTERM, wait up to 10 s (polling), then SIGKILL.
stop_pid() {
  local pid="$1" name="$2" deadline=$((SECONDS + 10))
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local pid
  for pid in "${started_pids[@]}"; do
    stop_pid "$pid" "server"
  done
  started_pids=()
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now. (A small race remains
# until the server binds it; a server that then fails to bind exits, and wait_ready says so.)
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# tool_env: perf_analyzer, grpcurl and tritonclient from tests/clients/setup.sh (idempotent).
tool_env() {
  local line
  while IFS= read -r line; do
    case "$line" in
      PATH=* | LD_LIBRARY_PATH=*) export "${line?}" ;;
      *) die "unexpected line from tests/clients/setup.sh: $line" ;;
    esac
  done < <(bash "$repo/tests/clients/setup.sh")
  clients_py="$(dirname "$(command -v perf_analyzer)")/python"
  [ -x "$clients_py" ] || die "no python next to perf_analyzer ($clients_py)"
}

# modeld_bin: MODELD_BIN if set (then modeld_prebuilt=1), else `cargo build --release` and
# target/release/modeld.
modeld_bin() {
  if [ -n "${MODELD_BIN:-}" ]; then
    [ -x "$MODELD_BIN" ] || die "MODELD_BIN=$MODELD_BIN is not an executable"
    log "modeld: $MODELD_BIN (from MODELD_BIN, not rebuilt)"
    modeld_prebuilt=1
  else
    log "building modeld (cargo build --release)"
    (cd "$repo" && cargo build --release) || die "cargo build --release failed"
    MODELD_BIN="$repo/target/release/modeld"
  fi
  export MODELD_BIN
}

# start_modeld DIR PORT [extra serve flags...]: a modeld on 127.0.0.1:PORT with a fresh SQLite
# registry in DIR, seeded from models/models.json. Sets modeld_pid.
start_modeld() {
  local dir="$1" port="$2"
  shift 2
  mkdir -p "$dir"
  rm -f "$dir"/registry.db*
  # The registry flags also go to the environment, so the CLI (modeld activate) run later from
  # swap.sh finds the same registry.
  export MODELD_DATABASE_URL="sqlite://$dir/registry.db"
  export MODELD_MODEL_ROOT="$repo/models"
  # Its HTTP port (the Open Inference Protocol's REST binding, metrics) on a free port too.
  modeld_http_port="$(free_port)"
  "$MODELD_BIN" --log warn serve --database-url "$MODELD_DATABASE_URL" \
    --model-root "$MODELD_MODEL_ROOT" --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$modeld_http_port" \
    "$@" >"$dir/modeld.log" 2>&1 &
  modeld_pid=$!
  started_pids+=("$modeld_pid")
}

# start_mlserver DIR GRPC_PORT: MLServer (target/mlserver-venv) serving digits_v2 and cnn from
# the same .onnx files through benches/load/mlserver/onnx_runtime.py. Sets mlserver_pid and
# mlserver_http_port (its REST port).
start_mlserver() {
  local dir="$1" grpc_port="$2" http_port m version
  http_port="$(free_port)"
  mlserver_http_port="$http_port"
  rm -rf "$dir/repo"
  mkdir -p "$dir/repo"
  # debug false: MLServer's default (true) logs every gRPC call. metrics_endpoint null: no
  # Prometheus interceptor (modeld's metrics are read from its counters when scraped).
  cat >"$dir/repo/settings.json" <<EOF
{
  "debug": false,
  "parallel_workers": 0,
  "host": "127.0.0.1",
  "http_port": $http_port,
  "grpc_port": $grpc_port,
  "metrics_endpoint": null,
  "load_models_at_startup": true
}
EOF
  for m in digits_v2 cnn; do
    version="$("$mlserver_py" -c 'import json,sys; print(next(x["version"] for x in json.load(open(sys.argv[1]))["models"] if x["name"] == sys.argv[2]))' "$repo/models/models.json" "$m")"
    mkdir -p "$dir/repo/$m"
    cat >"$dir/repo/$m/model-settings.json" <<EOF
{
  "name": "$m",
  "implementation": "onnx_runtime.OnnxModel",
  "parameters": {"uri": "$repo/models/$m.onnx", "version": "$version"}
}
EOF
  done
  (cd "$dir" && PYTHONPATH="$load_dir/mlserver" exec "$mlserver_py" "$load_dir/mlserver/launch.py" "$dir/repo") \
    >"$dir/mlserver.log" 2>&1 &
  mlserver_pid=$!
  started_pids+=("$mlserver_pid")
}

# wait_ready NAME PID PORT LOG MODEL...: polls the server (ServerReady, then ModelReady and
# ModelMetadata of each model) until ready, for at most 120 s; fails early if PID exits.
wait_ready() {
  local name="$1" pid="$2" port="$3" logfile="$4"
  shift 4
  "$clients_py" "$load_dir/check_server.py" --pid "$pid" --url "127.0.0.1:$port" \
    --deadline 120 --inputs "$inputs_dir" "$@" ||
    { log "$name did not become ready; last lines of $logfile:"; tail -n 20 "$logfile" >&2; exit 1; }
}

# perf NAME OUT_CSV PERF_ANALYZER_ARGS...: one perf_analyzer run; its output goes to OUT_CSV.log.
# Returns perf_analyzer's exit code (non-zero on any failed request or unstable measurement).
# PERF_PROTOCOL (grpc) is perf_analyzer's -i: grpc, or http for the REST binding.
perf() {
  local name="$1" csv="$2"
  shift 2
  log "perf_analyzer: $name"
  perf_analyzer -i "${PERF_PROTOCOL:-grpc}" -f "$csv" "$@" >"$csv.log" 2>&1
}

# mlserver_env: Seldon MLServer in target/mlserver-venv (requirements-mlserver.txt; rebuilt
# when that file changes). Sets mlserver_py.
mlserver_env() {
  local venv="$repo/target/mlserver-venv" stamp
  mlserver_py="$venv/bin/python"
  stamp="$venv/.installed-$(sha256sum "$load_dir/requirements-mlserver.txt" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "installing MLServer into $venv (requirements-mlserver.txt)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$load_dir/requirements-mlserver.txt"
    touch "$stamp"
  fi
}
