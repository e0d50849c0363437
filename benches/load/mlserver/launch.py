"""Starts MLServer with a ModelConfig RPC added to its gRPC inference service.

perf_analyzer calls ``inference.GRPCInferenceService/ModelConfig`` (Triton's extension) before it
sends a request, and MLServer does not serve it. This launcher wraps MLServer's
``add_GRPCInferenceServiceServicer_to_server`` so that, when MLServer builds its gRPC server, one
more method handler is registered for the same service: ModelConfig, built from the model's
metadata (name, platform, ``max_batch_size``, inputs and outputs with Triton data types and dims).

Usage: python launch.py MODEL_REPOSITORY   (the same argument as ``mlserver start``)

The Triton messages are declared here in a private descriptor pool, with the field numbers of
Triton's grpc_service.proto and model_config.proto: importing tritonclient's generated modules
next to MLServer's fails (both declare ``inference.ServerLiveRequest`` etc. in the default pool).
"""

import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import mlserver.grpc.server as mlserver_grpc_server
from mlserver.cli.main import main as mlserver_main
from mlserver.errors import MLServerError

# The batch limit advertised for models whose every input and output has a dynamic leading dim
# (the same value modeld advertises). perf_analyzer then sends [batch, ...dims] requests.
MAX_BATCH_SIZE = 64

# Triton's DataType enum values (model_config.proto).
_TRITON_TYPES = {
    "BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7,
    "INT32": 8, "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14,
}


def _triton_messages():
    """ModelConfigRequest, ModelConfigResponse, ModelConfig, ModelInput and ModelOutput classes."""
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="modeld_bench_model_config.proto", package="inference", syntax="proto3"
    )

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    enum = fdp.enum_type.add(name="DataType")
    enum.value.add(name="TYPE_INVALID", number=0)
    for name, number in _TRITON_TYPES.items():
        enum.value.add(name=f"TYPE_{'STRING' if name == 'BYTES' else name}", number=number)
    message("ModelConfigRequest", [
        ("name", 1, F.TYPE_STRING, one, None),
        ("version", 2, F.TYPE_STRING, one, None),
    ])
    message("ModelInput", [
        ("name", 1, F.TYPE_STRING, one, None),
        ("data_type", 2, F.TYPE_ENUM, one, ".inference.DataType"),
        ("dims", 4, F.TYPE_INT64, many, None),
    ])
    message("ModelOutput", [
        ("name", 1, F.TYPE_STRING, one, None),
        ("data_type", 2, F.TYPE_ENUM, one, ".inference.DataType"),
        ("dims", 3, F.TYPE_INT64, many, None),
    ])
    message("ModelConfig", [
        ("name", 1, F.TYPE_STRING, one, None),
        ("platform", 2, F.TYPE_STRING, one, None),
        ("max_batch_size", 4, F.TYPE_INT32, one, None),
        ("input", 5, F.TYPE_MESSAGE, many, ".inference.ModelInput"),
        ("output", 6, F.TYPE_MESSAGE, many, ".inference.ModelOutput"),
        ("backend", 17, F.TYPE_STRING, one, None),
    ])
    message("ModelConfigResponse", [
        ("config", 1, F.TYPE_MESSAGE, one, ".inference.ModelConfig"),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
        for name in ("ModelConfigRequest", "ModelConfigResponse", "ModelConfig")
    }


_MSG = _triton_messages()


def model_config(metadata):
    """A Triton ModelConfig for MLServer's model metadata (MetadataModelResponse)."""
    tensors = list(metadata.inputs or []) + list(metadata.outputs or [])
    batched = bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)
    config = _MSG["ModelConfig"](
        name=metadata.name,
        platform=metadata.platform or "onnxruntime_onnx",
        backend="mlserver",
        max_batch_size=MAX_BATCH_SIZE if batched else 0,
    )
    for t in metadata.inputs or []:
        config.input.add(name=t.name, data_type=_TRITON_TYPES[t.datatype],
                         dims=t.shape[1:] if batched else t.shape)
    for t in metadata.outputs or []:
        config.output.add(name=t.name, data_type=_TRITON_TYPES[t.datatype],
                          dims=t.shape[1:] if batched else t.shape)
    return _MSG["ModelConfigResponse"](config=config)


def _model_config_handler(servicer):
    data_plane = servicer._data_plane

    async def model_config_rpc(request, context):
        try:
            metadata = await data_plane.model_metadata(name=request.name, version=request.version)
        except MLServerError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        return model_config(metadata)

    return grpc.unary_unary_rpc_method_handler(
        model_config_rpc,
        request_deserializer=_MSG["ModelConfigRequest"].FromString,
        response_serializer=_MSG["ModelConfigResponse"].SerializeToString,
    )


_original_add = mlserver_grpc_server.add_GRPCInferenceServiceServicer_to_server


def _add_with_model_config(servicer, server):
    _original_add(servicer, server)
    # A second generic handler for the same service: gRPC asks each in turn, and MLServer's own
    # answers None for a method it does not have.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelConfig": _model_config_handler(servicer)}
    ),))


mlserver_grpc_server.add_GRPCInferenceServiceServicer_to_server = _add_with_model_config

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: launch.py MODEL_REPOSITORY")
    sys.argv = ["mlserver", "start", sys.argv[1]]
    mlserver_main()
