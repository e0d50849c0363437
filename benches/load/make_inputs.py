"""Writes perf_analyzer --input-data files of real numbers for the bundled models.

perf_analyzer's default random inputs contain NaN and denormals: MLServer cannot return NaN in
its responses, and denormals slow the CNN down, so both servers get the same fixed inputs:

- digits: the first 16 images of the evaluation set (models/eval/digits_x.npy), FP32 [64] each;
- cnn: the two deterministic test images of models/README.md,
  x[i] = ((i * 7919) mod 1000) / 1000 - 0.5 over [2,3,224,224], FP32 [3,224,224] each.

Shapes leave out the batch dim (the models advertise max_batch_size > 0): perf_analyzer sends
[1, ...] requests, cycling through the samples.

Usage: python make_inputs.py MODELS_DIR OUT_DIR   → OUT_DIR/digits.json, OUT_DIR/cnn.json
"""

import json
import os
import sys

import numpy as np


def write(path, input_name, samples):
    data = [
        {input_name: {"content": [float(v) for v in s.ravel()], "shape": list(s.shape)}}
        for s in samples
    ]
    with open(path, "w") as f:
        json.dump({"data": data}, f, separators=(",", ":"))


def main():
    models, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    digits = np.load(os.path.join(models, "eval", "digits_x.npy")).astype(np.float32)
    assert digits.shape[1:] == (64,) and np.isfinite(digits).all()
    write(os.path.join(out, "digits.json"), "input", digits[:16])
    i = np.arange(2 * 3 * 224 * 224, dtype=np.int64)
    cnn = (((i * 7919) % 1000) / 1000.0 - 0.5).astype(np.float32).reshape(2, 3, 224, 224)
    write(os.path.join(out, "cnn.json"), "image", cnn)


if __name__ == "__main__":
    main()
