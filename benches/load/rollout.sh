#!/usr/bin/env bash
# Rollout under load: perf_analyzer on the alias `active` of one modeld (the MLP, digits_v2),
# three ways one right after the other in one run: plain, with digits_v1 as a shadow at 100 %,
# and with digits_v1 as a canary at 50 % (no routing key: a random draw per request), in
# ROLLOUT_ROUNDS rounds (plain, shadow, canary, plain, shadow, canary, ...) so that a slow
# minute of the machine hits every scenario alike; the summary gives each scenario's median
# over the rounds. For the shadow it counts how many mirrored requests actually ran and how
# many were dropped (from GetServerStatus, before and after each measurement). Writes
# RUN_DIR/rollout/summary.md.
#
#   bash benches/load/rollout.sh          # MODELD_BIN=target/release/modeld skips the build
#
# Knobs: ROLLOUT_CONCURRENCY ("1 16"), ROLLOUT_ROUNDS (3), LOAD_INTERVAL_MS (4000), LOAD_STABILITY (15),
# LOAD_MAX_TRIALS (8). MODELD_* variables reach `modeld serve` as usual.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

concurrency="${ROLLOUT_CONCURRENCY:-1 16}"
rounds="${ROLLOUT_ROUNDS:-3}"
interval_ms="${LOAD_INTERVAL_MS:-4000}"
stability="${LOAD_STABILITY:-15}"
max_trials="${LOAD_MAX_TRIALS:-8}"

trap stop_all EXIT
trap 'exit 130' INT TERM

modeld_bin
tool_env
run_dir="${RUN_DIR:-$repo/target/load/rollout-$(date +%Y%m%d-%H%M%S)}"
dir="$run_dir/rollout"
inputs_dir="$run_dir/inputs"
mkdir -p "$dir"
if [ ! -f "$inputs_dir/digits.json" ]; then
  "$clients_py" "$load_dir/make_inputs.py" "$repo/models" "$inputs_dir"
fi

port="$(free_port)"
log "rollout: starting modeld on 127.0.0.1:$port"
start_modeld "$dir" "$port" --registry-poll-ms 100
wait_ready modeld "$modeld_pid" "$port" "$dir/modeld.log" digits_v2=digits.json active=digits.json

server_status() {
  grpcurl -plaintext -d '{}' "127.0.0.1:$port" modeld.v1.ModelRegistry/GetServerStatus
}

# wait_rollout CANARY% SHADOW%: until the server serves that rollout (0: none), 30 s at most.
wait_rollout() {
  local want_canary="$1" want_shadow="$2" deadline=$((SECONDS + 30)) got
  while :; do
    got="$(server_status | "$clients_py" -c 'import json,sys; r=json.load(sys.stdin).get("rollout",{}); print(r.get("canaryPercentage",0) if "canary" in r else 0, r.get("shadowPercentage",0) if "shadow" in r else 0)')"
    [ "$got" = "$want_canary $want_shadow" ] && return 0
    ((SECONDS < deadline)) || die "the server did not follow the rollout (wants $want_canary $want_shadow, serves $got)"
    sleep 0.1
  done
}

# shadow_counts: "mirrored dropped" of digits_v1 as a shadow, since the server started.
shadow_counts() {
  server_status | "$clients_py" -c '
import json, sys
for f in json.load(sys.stdin).get("rollout", {}).get("shadows", []):
    if f.get("modelName") == "digits_v1":
        print(int(f.get("mirrored", 0)), int(f.get("dropped", 0)))
        break
else:
    print(0, 0)'
}

for round in $(seq 1 "$rounds"); do
  for scenario in plain shadow canary; do
    case "$scenario" in
      plain)
        "$MODELD_BIN" canary clear >/dev/null
        wait_rollout 0 0
        ;;
      shadow)
        "$MODELD_BIN" shadow set digits_v1 --percentage 100 >/dev/null
        wait_rollout 0 100
        ;;
      canary)
        "$MODELD_BIN" shadow clear >/dev/null
        "$MODELD_BIN" canary set digits_v1 --percentage 50 >/dev/null
        wait_rollout 50 0
        ;;
    esac
    for c in $concurrency; do
      csv="$dir/${scenario}_c${c}_r${round}.csv"
      read -r m0 d0 < <(shadow_counts)
      perf "rollout $scenario c=$c round $round" "$csv" -m active -u "127.0.0.1:$port" --input-data "$inputs_dir/digits.json" \
        --concurrency-range "$c" --measurement-interval "$interval_ms" --percentile 50 \
        --stability-percentage "$stability" --max-trials "$max_trials" ||
        log "perf_analyzer: rollout $scenario c=$c round $round did not finish cleanly (see $csv.log)"
      read -r m1 d1 < <(shadow_counts)
      echo "$((m1 - m0)) $((d1 - d0))" >"$csv.shadow"
    done
  done
done

"$clients_py" - "$dir" "$concurrency" "$rounds" >"$dir/summary.md" <<'PY'
import csv, os, statistics, sys
d, conc, rounds = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
def read(name):
    try:
        with open(os.path.join(d, name)) as f:
            row = list(csv.DictReader(f))[-1]
        return float(row["Inferences/Second"]), float(row["p50 latency"])
    except (OSError, IndexError, KeyError, ValueError):
        return None
def shadow(name):
    try:
        ran, dropped = (open(os.path.join(d, name + ".shadow")).read().split() + ["0", "0"])[:2]
        return int(ran), int(dropped)
    except OSError:
        return 0, 0
print(f"Medians over {rounds} rounds (each round: plain, shadow, canary, one after the other).")
print()
print("| concurrency | run | infer/s | p50 | throughput / plain | p50 / plain | mirrored ran | dropped | ran of mirrored |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for c in conc:
    med = {}
    for s in ["plain", "shadow", "canary"]:
        runs = [r for r in (read(f"{s}_c{c}_r{k}.csv") for k in range(1, rounds + 1)) if r]
        if runs:
            med[s] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), len(runs))
    base = med.get("plain")
    for s in ["plain", "shadow", "canary"]:
        if s not in med:
            print(f"| {c} | {s} | failed | | | | | | |")
            continue
        tput, p50, n = med[s]
        counts = [shadow(f"{s}_c{c}_r{k}.csv") for k in range(1, rounds + 1)]
        ran, dropped = sum(x[0] for x in counts), sum(x[1] for x in counts)
        share = f"{100 * ran / (ran + dropped):.1f}%" if s == "shadow" and ran + dropped else ""
        ratio = (f"{tput / base[0]:.2f}", f"{p50 / base[1]:.2f}") if base else ("", "")
        note = "" if n == rounds else f" ({n} of {rounds} rounds)"
        print(f"| {c} | {s}{note} | {tput:.0f} | {p50:.0f} µs | {ratio[0]} | {ratio[1]} | "
              f"{ran if s == 'shadow' else ''} | {dropped if s == 'shadow' else ''} | {share} |")
print()
print("Each round, throughput / plain of the same round:")
print()
print("| concurrency | round | shadow | canary |")
print("| --- | --- | --- | --- |")
for c in conc:
    for k in range(1, rounds + 1):
        base = read(f"plain_c{c}_r{k}.csv")
        cells = []
        for s in ["shadow", "canary"]:
            r = read(f"{s}_c{c}_r{k}.csv")
            cells.append(f"{r[0] / base[0]:.2f}" if r and base else "")
        print(f"| {c} | {k} | {cells[0]} | {cells[1]} |")
PY
cat "$dir/summary.md"
