#!/usr/bin/env python3
"""Drives a running modeld with tritonclient.http (the Open Inference Protocol's REST binding),
exactly as a Triton user would: JSON and binary tensors, metadata, config, repository, errors.

Usage: tritonclient_http_check.py HOST:PORT MODELS_DIR
Exits non-zero (with the failing assertion) on any difference from what Triton would answer.
"""
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, models = sys.argv[1], sys.argv[2]
c = httpclient.InferenceServerClient(url=url)

assert c.is_server_live()
assert c.is_server_ready()
assert c.is_model_ready("digits_v2")
assert c.is_model_ready("active")
assert not c.is_model_ready("digits_v1"), "registered but not active is not ready"

meta = c.get_server_metadata()
assert meta["name"] == "modeld", meta
assert "statistics" in meta["extensions"], meta

m = c.get_model_metadata("digits_v2")
assert m["name"] == "digits_v2" and m["versions"] == ["2"], m
assert [(i["name"], i["datatype"], i["shape"]) for i in m["inputs"]] == [("input", "FP32", [-1, 64])], m
assert [o["name"] for o in m["outputs"]] == ["probabilities", "label"], m
cfg = c.get_model_config("cnn")
assert cfg["max_batch_size"] > 0 and cfg["input"][0]["dims"] == [3, 224, 224], cfg

index = {(m["name"], m["state"]) for m in c.get_model_repository_index()}
assert ("digits_v2", "READY") in index and ("digits_v1", "UNAVAILABLE") in index, index

x = np.load(f"{models}/eval/digits_x.npy")
want = {name: np.load(f"{models}/expected/{name}_probabilities.npy") for name in ("digits_v1", "digits_v2")}


def infer(model, batch, binary):
    inp = httpclient.InferInput("input", [batch, 64], "FP32")
    inp.set_data_from_numpy(x[:batch], binary_data=binary)
    outs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        httpclient.InferRequestedOutput("label", binary_data=binary),
    ]
    return c.infer(model, [inp], outputs=outs, request_id=f"r{batch}")


for binary in (False, True):
    for batch in (1, 8):
        r = infer("digits_v2", batch, binary)
        np.testing.assert_allclose(r.as_numpy("probabilities"), want["digits_v2"][:batch], atol=1e-5)
        assert r.as_numpy("label").shape == (batch,)
        resp = r.get_response()
        assert resp["id"] == f"r{batch}" and resp["model_version"] == "2", resp
        assert resp["parameters"]["role"] == "active", resp

# No outputs named: tritonclient asks for every output as binary data.
inp = httpclient.InferInput("input", [2, 64], "FP32")
inp.set_data_from_numpy(x[:2])
r = c.infer("active", [inp])
np.testing.assert_allclose(r.as_numpy("probabilities"), want["digits_v2"][:2], atol=1e-5)

# load_model = activate: the alias follows it.
c.load_model("digits_v1")
assert c.is_model_ready("digits_v1") and not c.is_model_ready("digits_v2")
r = infer("active", 8, True)
np.testing.assert_allclose(r.as_numpy("probabilities"), want["digits_v1"][:8], atol=1e-5)
assert r.get_response()["model_name"] == "digits_v1"

# Errors come back as InferenceServerException with the server's message.
try:
    infer("no_such_model", 1, True)
    raise AssertionError("an unknown model must be refused")
except InferenceServerException as e:
    # Triton's opening words (simple_http_infer_client.py checks them), then modeld's.
    assert e.message().startswith("Request for unknown model"), e.message()
    assert "not registered" in e.message(), e.message()
try:
    c.unload_model("digits_v1")
    raise AssertionError("unloading the active model must be refused")
except InferenceServerException as e:
    assert "active" in e.message(), e.message()

stats = c.get_inference_statistics("digits_v2")["model_stats"]
assert stats[0]["name"] == "digits_v2" and stats[0]["inference_stats"]["success"]["count"] == 5, stats

c.load_model("digits_v2")
print("tritonclient.http: all checks passed")
