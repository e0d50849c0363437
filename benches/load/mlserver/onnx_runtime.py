"""A minimal MLServer runtime that serves one .onnx file with onnxruntime.

The load harness (benches/load/run.sh) serves the same .onnx files with modeld and with MLServer
through this class, so the comparison is of the serving stack, not of the model.

Choices, and why:
- onnxruntime runs with one intra-op and one inter-op thread per session, as tract runs one
  request on one thread in modeld: parallelism comes from concurrent requests, not from
  splitting one request across cores.
- ``session.run`` runs inline on MLServer's event loop by default. MLServer's own request path
  (raw bytes unpacked into Python lists, pydantic models, numpy arrays) costs far more than the
  models here (onnxruntime: ~7 µs for digits_v2, ~0.7 ms for the CNN on one thread), and that
  path holds the GIL either way, so a hop to a thread pool only added overhead: in two
  back-to-back runs on a busy machine, inline gave 30-45% more throughput at concurrency 16 on
  both models, and about the same at concurrency 1.
  ``MODELD_BENCH_ORT_POOL=1`` runs it on a thread pool of one thread per CPU instead
  (``session.run`` releases the GIL, so concurrent runs can use every core, as modeld's compute
  threads do).
- Metadata (names, datatypes, shapes with -1 for dynamic dims) is read from the ONNX graph at
  load time, so model-settings.json needs only the name, the implementation and the file.
"""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

# onnxruntime's element types (as reported by NodeArg.type) to Open Inference Protocol names.
_ORT_TO_OIP = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
}

_POOL = (
    ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ort")
    if os.environ.get("MODELD_BENCH_ORT_POOL") == "1"
    else None
)


def _metadata(args) -> list:
    """MetadataTensor list for onnxruntime NodeArgs; symbolic dims become -1."""
    return [
        MetadataTensor(
            name=a.name,
            datatype=_ORT_TO_OIP[a.type],
            shape=[d if isinstance(d, int) else -1 for d in a.shape],
        )
        for a in args
    ]


class OnnxModel(MLModel):
    """Runs the .onnx file named by ``parameters.uri`` with onnxruntime on the CPU."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        uri = self.settings.parameters.uri
        self._session = ort.InferenceSession(
            uri, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = _metadata(self._session.get_inputs())
        self.outputs = _metadata(self._session.get_outputs())
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._output_names
        if _POOL is None:
            results = self._session.run(wanted, feeds)
        else:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(_POOL, self._session.run, wanted, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, r) for n, r in zip(wanted, results)],
        )
