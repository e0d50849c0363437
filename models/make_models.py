#!/usr/bin/env python3
"""Builds the ONNX models, evaluation set and expected outputs bundled in models/.

Reproducible: fixed seeds, pinned packages (see models/README.md). Run from the repo root:

    pip install numpy==2.4.6 scikit-learn==1.9.1 onnx==1.23.2 onnxruntime==1.31.1
    python3 models/make_models.py

Outputs (all small):
  digits_v1.onnx       logistic regression on scikit-learn's handwritten digits (8x8 images)
  digits_v2.onnx       a one-hidden-layer MLP on the same data (the better version)
  cnn.onnx             a small CNN over 1x3x224x224 images, fixed random weights (performance work)
  eval/digits_x.npy    labelled evaluation set: held-out digits, float32 [N,64] scaled to 0..1
  eval/digits_y.npy    their labels, int64 [N]
  expected/*.npy       outputs computed by onnxruntime, compared against modeld in the tests
  examples/*.json      one evaluation image as `modeld predict` input, a Predict request and a
                       KServe v2 ModelInfer request
  models.json          the seed manifest modeld registers on first start with an empty registry
  testdata/engines_disagree.onnx
                       a float-to-int32 cast of out-of-range values, which the ONNX spec leaves
                       undefined: tract saturates, onnxruntime does not (the engines' cross-check
                       test)
  testdata/lookup.onnx value = table[index] (Gather): a request with an index outside the
                       table fails inside the engine, after validation (the batching fallback
                       test)
  digits_faulty.onnx   digits_v1 with a fault: a request whose first pixel is 0.5 or more
                       fails inside the engine (every digit of the dataset has 0 there), the
                       deliberately failing canary of docs/rollout.md. `--only-faulty` builds
                       it alone, from the digits_v1.onnx already here.
  examples/digit_faulty.json
                       an input that trips it
"""
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).resolve().parent
OPSET = 13
SEED = 20261122


def save(model, name):
    onnx.checker.check_model(model, full_check=True)
    path = HERE / name
    onnx.save(model, path)
    return path


def classifier_graph(name, layers, doc):
    """layers: list of (weight [in,out], bias [out], activation or None). Softmax + ArgMax on top."""
    inits, nodes = [], []
    prev = "input"
    for i, (w, b, act) in enumerate(layers):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], name=f"dense{i}"))
        if act:
            nodes.append(helper.make_node(act, [out], [f"{out}_act"], name=f"act{i}"))
            out = f"{out}_act"
        prev = out
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=1, name="softmax"))
    nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0,
                                  name="argmax"))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="modeld/models/make_models.py", doc_string=doc)
    model.ir_version = 8
    return model


def cnn_graph(rng):
    chans = [3, 16, 32, 64]
    inits, nodes = [], []
    prev = "image"
    for i in range(3):
        cin, cout = chans[i], chans[i + 1]
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), size=(cout, cin, 3, 3)).astype(np.float32)
        b = np.zeros(cout, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}_w"), numpy_helper.from_array(b, f"conv{i}_b")]
        nodes.append(helper.make_node("Conv", [prev, f"conv{i}_w", f"conv{i}_b"], [f"c{i}"],
                                      kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                      name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["pooled"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"))
    wf = rng.normal(0, np.sqrt(1.0 / 64), size=(64, 10)).astype(np.float32)
    inits += [numpy_helper.from_array(wf, "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="modeld/models/make_models.py",
                              doc_string="Small CNN, fixed random weights, for performance work.")
    model.ir_version = 8
    return model


def cnn_input(batch):
    """Deterministic CNN input; tests recompute it with the same integer formula."""
    n = batch * 3 * 224 * 224
    i = np.arange(n, dtype=np.int64)
    x = ((i * 7919) % 1000) / 1000.0 - 0.5
    return x.astype(np.float32).reshape(batch, 3, 224, 224)


def test_model(graph, doc):
    """A test model around `graph`, stamped like the bundled ones."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="modeld/models/make_models.py", doc_string=doc)
    model.ir_version = 8
    return model


def engines_disagree_graph():
    """y = int32(x * 1e10): out of int32's range for x > 0.22, where the spec leaves the cast
    undefined and the engines differ (tract saturates to 2147483647, onnxruntime's x86 build
    gives -2147483648)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4])
    scale = numpy_helper.from_array(np.array([1e10], dtype=np.float32), "scale")
    nodes = [helper.make_node("Mul", ["x", "scale"], ["big"], name="scale_up"),
             helper.make_node("Cast", ["big"], ["y"], to=TensorProto.INT32, name="to_int32")]
    graph = helper.make_graph(nodes, "engines_disagree", [x], [y], [scale])
    return test_model(graph, "Engines disagree on out-of-range casts (tests).")


def lookup_graph():
    """value = table[index], table = [0, 0.5, 1, ..., 4.5]: an index outside 0..9 passes modeld's
    validation (right type and shape) and fails inside the engine."""
    index = helper.make_tensor_value_info("index", TensorProto.INT64, ["N", 1])
    value = helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 1])
    table = numpy_helper.from_array(np.arange(10, dtype=np.float32) / 2, "table")
    nodes = [helper.make_node("Gather", ["table", "index"], ["value"], axis=0, name="lookup")]
    graph = helper.make_graph(nodes, "lookup", [index], [value], [table])
    return test_model(graph, "A table lookup that fails on out-of-range indices (tests).")


def faulty_graph(v1):
    """digits_v1 (an onnx ModelProto) plus a table lookup of its first pixel: index =
    int64(pixel0 * 2) into a one-entry table of zeros, added to the probabilities. Every digit
    of the dataset has pixel 0 = 0 (index 0, adds 0: the same answers as digits_v1); a first
    pixel of 0.5 or more is an index outside the table, and the engine fails the request."""
    model = onnx.ModelProto()
    model.CopyFrom(v1)
    g = model.graph
    probs = [o for o in g.output if o.name == "probabilities"][0]
    for node in g.node:
        node.output[:] = ["probabilities_v1" if o == "probabilities" else o for o in node.output]
        node.input[:] = ["probabilities_v1" if i == "probabilities" else i for i in node.input]
    g.initializer.extend([
        numpy_helper.from_array(np.array([0], dtype=np.int64), "first_pixel"),
        numpy_helper.from_array(np.array([2.0], dtype=np.float32), "two"),
        numpy_helper.from_array(np.zeros([1], dtype=np.float32), "fault_table"),
    ])
    g.node.extend([
        helper.make_node("Gather", ["input", "first_pixel"], ["pixel0"], axis=1, name="pixel0"),
        helper.make_node("Mul", ["pixel0", "two"], ["pixel0x2"], name="scale"),
        helper.make_node("Cast", ["pixel0x2"], ["fault_index"], to=TensorProto.INT64, name="to_index"),
        helper.make_node("Gather", ["fault_table", "fault_index"], ["fault"], axis=0, name="fault"),
        helper.make_node("Add", ["probabilities_v1", "fault"], ["probabilities"], name="with_fault"),
    ])
    del probs
    model.doc_string = ("Digits classifier v1 with a fault: fails inside the engine when the first "
                        "pixel is 0.5 or more (docs/rollout.md, the failing canary).")
    return model


def save_faulty(v1_path, x_eval):
    m = faulty_graph(onnx.load(str(v1_path)))
    path = save(m, "digits_faulty.onnx")
    ok = run_ort(path, {"input": x_eval})
    want = run_ort(v1_path, {"input": x_eval})
    assert np.allclose(ok["probabilities"], want["probabilities"]), "digits_faulty = digits_v1 on the dataset"
    bad = x_eval[:1].copy()
    bad[0, 0] = 1.0
    try:
        run_ort(path, {"input": bad})
        raise AssertionError("digits_faulty must fail on a first pixel of 1")
    except Exception as e:  # onnxruntime raises its own InvalidArgument
        assert "out of" in str(e), e
    (HERE / "examples").mkdir(exist_ok=True)
    (HERE / "examples/digit_faulty.json").write_text(json.dumps([[float(v) for v in bad[0]]]) + "\n")


def run_ort(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def main():
    import sys
    if "--only-faulty" in sys.argv:
        save_faulty(HERE / "digits_v1.onnx", np.load(HERE / "eval/digits_x.npy"))
        return
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    rng = np.random.default_rng(SEED)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=0.2, random_state=SEED % (2**31), stratify=y)

    # v1: a deliberately simple model (strong regularisation, few iterations).
    v1 = LogisticRegression(C=0.01, max_iter=50)
    v1.fit(x_train, y_train)
    m1 = classifier_graph("digits_v1", [(v1.coef_.T, v1.intercept_, None)],
                          "Digits classifier v1: logistic regression (scikit-learn digits).")
    # v2: an MLP, better.
    v2 = MLPClassifier(hidden_layer_sizes=(32,), max_iter=600, random_state=SEED % (2**31))
    v2.fit(x_train, y_train)
    m2 = classifier_graph(
        "digits_v2",
        [(v2.coefs_[0], v2.intercepts_[0], "Relu"), (v2.coefs_[1], v2.intercepts_[1], None)],
        "Digits classifier v2: MLP with 32 hidden units (scikit-learn digits).")
    p1, p2 = save(m1, "digits_v1.onnx"), save(m2, "digits_v2.onnx")
    p3 = save(cnn_graph(rng), "cnn.onnx")
    (HERE / "testdata").mkdir(exist_ok=True)
    save(engines_disagree_graph(), "testdata/engines_disagree.onnx")
    save(lookup_graph(), "testdata/lookup.onnx")

    (HERE / "eval").mkdir(exist_ok=True)
    (HERE / "expected").mkdir(exist_ok=True)
    np.save(HERE / "eval/digits_x.npy", x_eval)
    np.save(HERE / "eval/digits_y.npy", y_eval)
    save_faulty(p1, x_eval)

    acc = {}
    for name, path, skl in (("digits_v1", p1, v1), ("digits_v2", p2, v2)):
        out = run_ort(path, {"input": x_eval})
        # The ONNX graph must agree with scikit-learn on every evaluation sample.
        assert np.allclose(out["probabilities"], skl.predict_proba(x_eval), atol=1e-5), name
        acc[name] = float((out["label"] == y_eval).mean())
        np.save(HERE / f"expected/{name}_probabilities.npy", out["probabilities"])
        np.save(HERE / f"expected/{name}_label.npy", out["label"])
    assert acc["digits_v2"] > acc["digits_v1"], acc

    out = run_ort(p3, {"image": cnn_input(2)})
    np.save(HERE / "expected/cnn_probabilities.npy", out["probabilities"])

    manifest = {
        "note": "Registered by modeld on first start when the registry is empty (--seed-manifest).",
        "activate": "digits_v2",
        "models": [
            {"name": "digits_v1", "file_path": "digits_v1.onnx", "version": "1",
             "model_type": "classifier", "accuracy": round(acc["digits_v1"], 4),
             "description": "Handwritten digits (8x8), logistic regression."},
            {"name": "digits_v2", "file_path": "digits_v2.onnx", "version": "2",
             "model_type": "classifier", "accuracy": round(acc["digits_v2"], 4),
             "description": "Handwritten digits (8x8), MLP with 32 hidden units."},
            {"name": "cnn", "file_path": "cnn.onnx", "version": "1",
             "model_type": "cnn",
             "description": "Small CNN over 3x224x224 images, fixed random weights (benchmarks)."},
        ],
    }
    (HERE / "models.json").write_text(json.dumps(manifest, indent=2) + "\n")

    # Example inputs for the README: the first evaluation image (a "2").
    (HERE / "examples").mkdir(exist_ok=True)
    row = [float(v) for v in x_eval[0]]
    (HERE / "examples/digit_2.json").write_text(json.dumps([row]) + "\n")
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "fp32_data": row}]}
    (HERE / "examples/predict_request.json").write_text(json.dumps(request) + "\n")
    infer = {"model_name": "active", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                                 "contents": {"fp32_contents": row}}]}
    (HERE / "examples/model_infer_request.json").write_text(json.dumps(infer) + "\n")
    print(json.dumps(acc))


if __name__ == "__main__":
    main()
