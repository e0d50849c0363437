"""Swaps the served model COUNT times with the modeld CLI, spread over DURATION seconds.

Each swap runs `modeld activate <model>` (the CLI works on the registry database; the running
server follows the change through its registry poll), checks its exit code, then polls the
server's ModelReady for that model (every 5 ms, at most 10 s) until the server serves it, so
every one of the COUNT activations is a real swap on the server, not one coalesced by the poll.
Swap k starts no earlier than k * DURATION / COUNT seconds after the first, so the swaps cover
the load run that measures them; a swap that takes longer than its slot delays the next ones
(the summary says so).

Usage: swap_driver.py --modeld BIN --url HOST:PORT --count 100 --duration 30 --out OUT.json
       --log CLI.log MODEL_A MODEL_B   (MODEL_B must be active at the start; MODEL_A comes first)
Exits non-zero if an activation failed or the server did not follow one.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import tritonclient.grpc as grpcclient


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--modeld", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("models", nargs=2)
    args = p.parse_args()
    client = grpcclient.InferenceServerClient(args.url)
    slot = args.duration / args.count
    cli_ms, served_ms, failures, late = [], [], [], 0
    t0 = time.monotonic()
    with open(args.log, "w") as log:
        for k in range(args.count):
            start_at = t0 + k * slot
            now = time.monotonic()
            if now < start_at:
                time.sleep(start_at - now)
            elif k > 0 and now - start_at > slot:
                late += 1
            model = args.models[k % 2]
            t = time.monotonic()
            cli = subprocess.run(
                [args.modeld, "--log", "warn", "activate", model, "--reason", f"load test swap {k + 1}"],
                stdout=log, stderr=subprocess.STDOUT,
            )
            t_cli = time.monotonic()
            if cli.returncode != 0:
                failures.append(f"swap {k + 1}: modeld activate {model} exited {cli.returncode}")
                continue
            deadline = t_cli + 10
            while not client.is_model_ready(model):
                if time.monotonic() > deadline:
                    failures.append(f"swap {k + 1}: the server did not serve {model} within 10 s")
                    break
                time.sleep(0.005)
            else:
                served_ms.append((time.monotonic() - t) * 1000)
            cli_ms.append((t_cli - t) * 1000)
    elapsed = time.monotonic() - t0
    summary = {
        "swaps": args.count,
        "swaps_served": len(served_ms),
        "failures": failures,
        "late_slots": late,
        "elapsed_s": round(elapsed, 2),
        "cli_ms_median": round(statistics.median(cli_ms), 1) if cli_ms else None,
        "cli_ms_max": round(max(cli_ms), 1) if cli_ms else None,
        "served_ms_median": round(statistics.median(served_ms), 1) if served_ms else None,
        "served_ms_max": round(max(served_ms), 1) if served_ms else None,
    }
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))
    if failures:
        sys.exit("\n".join(failures))


if __name__ == "__main__":
    main()
