#!/usr/bin/env python3
"""Drives a running modeld with tritonclient (gRPC), exactly as a Triton user would.

Usage: tritonclient_check.py HOST:PORT MODELS_DIR
Exits non-zero (with the failing assertion) on any difference from what Triton would answer.
"""
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, models = sys.argv[1], sys.argv[2]
c = grpcclient.InferenceServerClient(url=url)

assert c.is_server_live()
assert c.is_server_ready()
assert c.is_model_ready("digits_v2")
assert c.is_model_ready("active")
assert not c.is_model_ready("digits_v1"), "registered but not active is not ready"

meta = c.get_server_metadata()
assert meta.name == "modeld", meta
assert "statistics" in meta.extensions and "model_repository" in meta.extensions, meta.extensions

m = c.get_model_metadata("digits_v2")
assert m.name == "digits_v2" and m.versions == ["2"], m
assert [(i.name, i.datatype, list(i.shape)) for i in m.inputs] == [("input", "FP32", [-1, 64])], m.inputs
assert [o.name for o in m.outputs] == ["probabilities", "label"], m.outputs
cfg = c.get_model_config("cnn").config
assert cfg.max_batch_size > 0 and list(cfg.input[0].dims) == [3, 224, 224], cfg

index = {(m.name, m.state) for m in c.get_model_repository_index().models}
assert ("digits_v2", "READY") in index and ("digits_v1", "UNAVAILABLE") in index, index

x = np.load(f"{models}/eval/digits_x.npy")
want = {name: np.load(f"{models}/expected/{name}_probabilities.npy") for name in ("digits_v1", "digits_v2")}


def infer(model, batch):
    inp = grpcclient.InferInput("input", [batch, 64], "FP32")
    inp.set_data_from_numpy(x[:batch])
    outs = [grpcclient.InferRequestedOutput("probabilities"), grpcclient.InferRequestedOutput("label")]
    return c.infer(model, [inp], outputs=outs, request_id=f"r{batch}")


for batch in (1, 8):
    r = infer("digits_v2", batch)
    np.testing.assert_allclose(r.as_numpy("probabilities"), want["digits_v2"][:batch], atol=1e-5)
    assert r.as_numpy("label").shape == (batch,)
    resp = r.get_response()
    assert resp.id == f"r{batch}" and resp.model_version == "2", resp

# load_model = activate: the alias follows it.
c.load_model("digits_v1")
assert c.is_model_ready("digits_v1") and not c.is_model_ready("digits_v2")
r = infer("active", 8)
np.testing.assert_allclose(r.as_numpy("probabilities"), want["digits_v1"][:8], atol=1e-5)
assert r.get_response().model_name == "digits_v1"

# A registered model that is not active answers by its name: a candidate, loaded on demand,
# and ready once loaded.
r = infer("digits_v2", 1)
np.testing.assert_allclose(r.as_numpy("probabilities"), want["digits_v2"][:1], atol=1e-5)
assert r.get_response().model_name == "digits_v2"
assert c.is_model_ready("digits_v2"), "a loaded candidate is ready"
index = {(m.name, m.state) for m in c.get_model_repository_index().models}
assert ("digits_v1", "READY") in index and ("digits_v2", "READY") in index, index

# Errors come back as InferenceServerException with the server's message; an unknown model in
# Triton's opening words (simple_grpc_infer_client.py checks them), then modeld's explanation.
try:
    infer("no_such_model", 1)
    raise AssertionError("an unknown model must be refused")
except InferenceServerException as e:
    assert e.message().startswith("Request for unknown model"), e.message()
    assert "not registered" in e.message(), e.message()
try:
    infer("digts_v2", 1)
    raise AssertionError("a mistyped model must be refused")
except InferenceServerException as e:
    assert 'did you mean "digits_v2"' in e.message(), e.message()

# grpc_explicit_int_content_client.py's way: the generated stubs, typed input contents, and
# the outputs read from raw_output_contents, which Triton always answers with.
import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
req = service_pb2.ModelInferRequest(model_name="digits_v2", model_version="")
tensor = service_pb2.ModelInferRequest().InferInputTensor(name="input", datatype="FP32", shape=[2, 64])
tensor.contents.fp32_contents[:] = x[:2].flatten().tolist()
req.inputs.extend([tensor])
resp = stub.ModelInfer(req)
assert [o.name for o in resp.outputs] == ["probabilities", "label"], resp.outputs
assert len(resp.raw_output_contents) == 2, "one raw output per output, as Triton answers"
assert not resp.outputs[0].HasField("contents"), "no typed contents beside the raw bytes"
probs = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape(2, 10)
np.testing.assert_allclose(probs, want["digits_v2"][:2], atol=1e-5)
labels = np.frombuffer(resp.raw_output_contents[1], dtype=np.int64)
assert labels.tolist() == probs.argmax(axis=1).tolist(), labels
try:
    c.unload_model("digits_v1")
    raise AssertionError("unloading the active model must be refused")
except InferenceServerException as e:
    assert "active" in e.message(), e.message()

stats = c.get_inference_statistics("digits_v2").model_stats
assert stats[0].name == "digits_v2" and stats[0].inference_stats.success.count == 4, stats
assert stats[0].inference_count == 12, stats
stats = c.get_inference_statistics("digits_v1").model_stats
assert stats[0].inference_stats.success.count == 1 and stats[0].inference_stats.compute_infer.ns > 0, stats

c.load_model("digits_v2")
print("tritonclient: all checks passed")
