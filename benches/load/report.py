"""Turns one harness run directory into the markdown report (printed to stdout).

Reads RUN_DIR/env.txt, the perf_analyzer CSVs RUN_DIR/{server}_{model}_c{N}[_async].csv
(servers: modeld with tract, modeld_ort with onnxruntime, mlserver; _async: perf_analyzer's
async client on one thread, else its default sync client, one thread per request) and
RUN_DIR/swap/{steady,swapping}.csv with RUN_DIR/swap/summary.json. A run whose CSV is missing
(perf_analyzer failed or could not stabilise) shows as "failed", with the log to read.

Usage: report.py RUN_DIR
"""

import csv
import json
import os
import re
import sys

MODELS = [("digits_v2", "digits_v2 (MLP)"), ("cnn", "cnn")]
# CSV prefix, column label.
SERVERS = [("modeld", "modeld [tract]"), ("modeld_ort", "modeld [onnxruntime]"), ("mlserver", "MLServer")]


def read_csv(path):
    """{'tput': infer/s, 'p50': µs, 'p99': µs} from a perf_analyzer -f CSV, or None."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    if not rows:
        return None
    row = rows[0]
    return {
        "tput": float(row["Inferences/Second"]),
        "p50": float(row["p50 latency"]),
        "p99": float(row["p99 latency"]),
    }


def request_count(log_path):
    """The client request count perf_analyzer reports in its log, or None."""
    try:
        text = open(log_path).read()
    except OSError:
        return None
    m = re.search(r"Request count: (\d+)", text)
    return int(m.group(1)) if m else None


def us(v):
    if v is None:
        return "failed"
    return f"{v / 1000:.2f} ms" if v >= 10_000 else f"{v:,.0f} µs"


def tput(v):
    return "failed" if v is None else f"{v:,.0f}"


def ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def main():
    run = sys.argv[1]
    env = {}
    with open(os.path.join(run, "env.txt")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            env[k] = v
    # (concurrency, client suffix): sync first, then the async client, per concurrency.
    runs = sorted(
        {(int(m.group(1)), m.group(2) or "")
         for n in os.listdir(run) if (m := re.search(r"_c(\d+)(_async)?\.csv", n))}
    )
    out = []
    p = out.append
    p(f"# Load test: modeld vs MLServer ({env.get('date', '?')})")
    p("")
    p(f"Machine: {env.get('nproc')} CPUs, {env.get('cpu')}, {env.get('mem')}. "
      "Client and servers share it.")
    p("")
    p(f"- modeld: repository at {env.get('modeld_rev')}; binary {env.get('modeld_bin')}; "
      f"{env.get('rustc')}")
    p(f"- perf_analyzer: {env.get('perf_analyzer')}")
    p(f"- MLServer {env.get('mlserver')}, onnxruntime {env.get('onnxruntime')} "
      f"(1 intra-op thread per session, session.run {env.get('mlserver_ort_run', '?')}), "
      f"Python {env.get('python')}, parallel_workers 0")
    p(f"- modeld engines: {env.get('modeld_engines', 'tract')}; ONNX Runtime library for modeld: "
      f"{env.get('modeld_onnxruntime_lib', 'none')}")
    p(f"- {env.get('settings')}")
    p("- client: sync is perf_analyzer's default, one client thread per concurrent request; async "
      "is `--async --max-threads 1`, the same requests in flight from one client thread, so the "
      "client takes less of the two cores from the server")
    p("")
    # The servers this run measured (a failed run still leaves its CSV.log).
    models = "|".join(m for m, _ in MODELS)
    servers = [sv for sv in SERVERS
               if any(re.fullmatch(rf"{sv[0]}_({models})_c\d+(_async)?\.csv(\.log)?", n)
                      for n in os.listdir(run))]
    modelds = [sv for sv in servers if sv[0] != "mlserver"]
    p("Ratios are modeld / MLServer: throughput above 1 and p50 below 1 favour modeld. "
      "modeld's engine is named in brackets.")
    p("")
    head = ["model", "concurrency", "client"]
    head += [f"{label} infer/s" for _, label in servers]
    head += [f"{label} / MLServer throughput" for _, label in modelds]
    head += [f"{label} p50" for _, label in servers]
    head += [f"{label} / MLServer p50" for _, label in modelds]
    head += [f"{label} p99" for _, label in servers]
    p("| " + " | ".join(head) + " |")
    p("|" + " --- |" * len(head))
    failed, unstable = [], []
    for model, label in MODELS:
        for c, suffix in runs:
            r, mark = {}, {}
            for server, _ in servers:
                name = f"{server}_{model}_c{c}{suffix}.csv"
                r[server] = read_csv(os.path.join(run, name)) or {}
                mark[server] = ""
                if not r[server]:
                    failed.append(f"{name}.log")
                elif os.path.exists(os.path.join(run, name + ".unstable")):
                    unstable.append(name)
                    mark[server] = " *"
            ml = r.get("mlserver", {})
            row = [label, str(c), "async" if suffix else "sync"]
            row += [tput(r[sv].get("tput")) + mark[sv] for sv, _ in servers]
            row += [ratio(r[sv].get("tput"), ml.get("tput")) for sv, _ in modelds]
            row += [us(r[sv].get("p50")) + mark[sv] for sv, _ in servers]
            row += [ratio(r[sv].get("p50"), ml.get("p50")) for sv, _ in modelds]
            row += [us(r[sv].get("p99")) + mark[sv] for sv, _ in servers]
            p("| " + " | ".join(row) + " |")
    if unstable:
        p("")
        p("\\* did not stabilise within the stability threshold; measured once more over three "
          "windows without the check (the first attempt's log is CSV.unstable.log): "
          + ", ".join(unstable))
    if failed:
        p("")
        p("Failed runs (read the logs in the run directory): " + ", ".join(failed))

    summary_path = os.path.join(run, "swap", "summary.json")
    if os.path.exists(summary_path):
        s = json.load(open(summary_path))
        drv = s.get("driver") or {}
        p("")
        p(f"## Swap under load (modeld, model `active`, concurrency {s['concurrency']})")
        p("")
        p(f"perf_analyzer measures three windows of {s['seconds'] * 1000 // 3} ms steady, then "
          f"the same run while `modeld activate` (the CLI, on the same SQLite registry) swaps "
          f"digits_v1 / digits_v2 {s['count']} times, spread over the steady run's wall-clock "
          f"time ({s.get('steady_wall_ms', 0) / 1000:.1f} s); the server polls the registry "
          f"every {s['poll_ms']} ms. Failed requests: perf_analyzer's exit code (it stops on "
          "the first failed request) and the server's ModelStatistics fail count.")
        p("")
        p("| run | requests | infer/s | p50 | p99 | perf_analyzer exit | failed (server) |")
        p("| --- | --- | --- | --- | --- | --- | --- |")
        for run_name in ("steady", "swapping"):
            r = read_csv(os.path.join(run, "swap", f"{run_name}.csv")) or {}
            n = request_count(os.path.join(run, "swap", f"{run_name}.csv.log"))
            p(f"| {run_name} | {n if n is not None else '?'} | {tput(r.get('tput'))} "
              f"| {us(r.get('p50'))} | {us(r.get('p99'))} | {s['perf_exit'][run_name]} "
              f"| {s['server_failed_requests'][run_name]} |")
        st = read_csv(os.path.join(run, "swap", "steady.csv"))
        sw = read_csv(os.path.join(run, "swap", "swapping.csv"))
        if st and sw:
            p("")
            p(f"Swapping / steady: throughput {ratio(sw['tput'], st['tput'])}, "
              f"p50 {ratio(sw['p50'], st['p50'])}, p99 {ratio(sw['p99'], st['p99'])}.")
        p("")
        if drv:
            p(f"Swaps: {drv.get('swaps_served')} of {drv.get('swaps')} served in "
              f"{drv.get('elapsed_s')} s ({drv.get('late_slots')} started late); CLI activate "
              f"median {drv.get('cli_ms_median')} ms (max {drv.get('cli_ms_max')}); from CLI start "
              f"to the server serving the new model median {drv.get('served_ms_median')} ms "
              f"(max {drv.get('served_ms_max')}). Driver exit {s['driver_exit']}"
              + (f"; failures: {'; '.join(drv['failures'])}" if drv.get("failures") else "") + ".")
        else:
            p(f"The swap driver wrote no summary (exit {s['driver_exit']}); see swap/driver.log.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
