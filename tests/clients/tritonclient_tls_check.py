#!/usr/bin/env python3
"""tritonclient (gRPC) against a modeld with TLS and bearer tokens, as a Triton user would run
it behind a TLS-terminating, header-checking gateway: ssl=True with the CA, the token in headers.

Usage: tritonclient_tls_check.py HOST:PORT CA_FILE TOKEN
"""
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, ca, token = sys.argv[1], sys.argv[2], sys.argv[3]
c = grpcclient.InferenceServerClient(url=url, ssl=True, root_certificates=ca)
auth = {"authorization": f"Bearer {token}"}

assert c.is_server_live(), "health is open"
assert c.is_server_ready()
try:
    c.is_model_ready("digits_v2")
    raise AssertionError("no token: refused")
except InferenceServerException as e:
    assert "UNAUTHENTICATED" in str(e.status()), e

x = np.zeros((2, 64), dtype=np.float32)
inp = grpcclient.InferInput("input", [2, 64], "FP32")
inp.set_data_from_numpy(x)
try:
    c.infer("active", [inp])
    raise AssertionError("no token: refused")
except InferenceServerException as e:
    assert "UNAUTHENTICATED" in str(e.status()), e
r = c.infer("active", [inp], headers=auth)
probs = r.as_numpy("probabilities")
assert probs.shape == (2, 10), probs.shape
assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4), probs
print("all checks passed")
