"""Waits until an Open Inference Protocol server is ready, then checks it serves what the harness
sends: for each model, its input (name, FP32, dims) must match the --input-data file, and one
request built from that file must succeed with finite outputs.

Usage: check_server.py --pid PID --url HOST:PORT --deadline SECONDS --inputs DIR MODEL=FILE...
(FILE is the name of an input-data JSON in DIR, e.g. digits_v2=digits.json). Exits non-zero with
a message saying what is wrong; prints one line per model when all is well.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_ready(client, pid, models, deadline):
    """Polls ServerReady and ModelReady (every 50 ms) until all are ready or the deadline."""
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not alive(pid):
            sys.exit(f"server process {pid} exited before it was ready")
        try:
            if client.is_server_ready() and all(client.is_model_ready(m) for m in models):
                return
            last = "server or a model not ready yet"
        except InferenceServerException as e:
            last = str(e)
        time.sleep(0.05)
    sys.exit(f"not ready before the deadline: {last}")


def check_model(client, model, data_file):
    with open(data_file) as f:
        sample = json.load(f)["data"][0]
    (name, tensor), = sample.items()
    meta = client.get_model_metadata(model, as_json=True)
    inputs = {i["name"]: i for i in meta["inputs"]}
    if list(inputs) != [name]:
        sys.exit(f"{model}: the server says its inputs are {list(inputs)}; {data_file} has {name!r}")
    shape = [int(d) for d in inputs[name]["shape"]]
    if inputs[name]["datatype"] != "FP32" or shape[1:] != tensor["shape"]:
        sys.exit(f"{model}: input {name!r} is {inputs[name]['datatype']} {shape}; "
                 f"{data_file} has FP32 [N]+{tensor['shape']}")
    config = client.get_model_config(model, as_json=True)["config"]
    x = np.asarray(tensor["content"], dtype=np.float32).reshape([1] + tensor["shape"])
    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp])
    outputs = {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}
    for out_name, value in outputs.items():
        if value is None or not np.all(np.isfinite(value.astype(np.float64))):
            sys.exit(f"{model}: output {out_name!r} is missing or not finite: {value}")
    summary = ", ".join(f"{n} {list(v.shape)}" for n, v in outputs.items())
    print(f"  {model}: input {name} FP32 {shape}, max_batch_size "
          f"{config.get('max_batch_size', 0)}, platform {meta.get('platform', '?')}; "
          f"one request OK ({summary})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--deadline", type=float, default=120)
    p.add_argument("--inputs", required=True)
    p.add_argument("models", nargs="+", help="MODEL=INPUT_DATA_FILE")
    args = p.parse_args()
    pairs = [m.split("=", 1) for m in args.models]
    client = grpcclient.InferenceServerClient(args.url)
    wait_ready(client, args.pid, [m for m, _ in pairs], time.monotonic() + args.deadline)
    for model, data in pairs:
        check_model(client, model, os.path.join(args.inputs, data))


if __name__ == "__main__":
    main()
