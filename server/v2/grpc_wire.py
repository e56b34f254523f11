"""The gRPC form (``inference.GRPCInferenceService``) of the protocol's messages, to and from the
wire request and response of ``tensors.py``.

Messages are tritonclient's generated classes (``tritonclient.grpc.service_pb2``, from the
protocol's ``.proto``). Tensors travel in ``raw_input_contents`` / ``raw_output_contents`` (one
entry per tensor, in order, ``BYTES`` elements length-prefixed), as tritonclient sends and reads
them; typed ``contents`` are read too. Every response tensor goes raw: a reader finds tensor i
in ``raw_output_contents[i]``, so all or none must be raw.
"""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from server.v2.errors import V2Error, bad_request
from server.v2.tensors import (
    CheckInput,
    Parameter,
    RequestedOutput,
    WireRequest,
    WireResponse,
    WireTensor,
    check_datatype,
    check_shape,
    element_count,
    from_list,
    from_raw,
    raw_view,
    to_raw,
)

# datatype -> the InferTensorContents field that carries it explicitly (FP16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# A few hundred MiB: camera-size maps in FP32 are far past gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 512 * 2**20
# Requests of up to this many bytes are parsed on the event loop (a hand-off costs more);
# larger ones in a thread, so that no request holds the loop for time proportional to its size.
INLINE_PARSE_BYTES = 1 << 16


def channel_options(
    max_message_bytes: int = MAX_MESSAGE_BYTES, max_receive_bytes: int | None = None
) -> list[tuple[str, int]]:
    """Options for ``grpc.server(..., options=...)`` (and a client's channel) that lift the
    4 MiB default on message size: ``max_message_bytes`` sent, ``max_receive_bytes`` (default
    the same) received."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_receive_bytes or max_message_bytes),
    ]


async def read_infer_request(
    request: bytes | service_pb2.ModelInferRequest, check: CheckInput | None = None
) -> WireRequest:
    """A ModelInfer request, as its serialised bytes (the service's deserializer passes them
    on) or a message, -> the wire request; a large one parsed in a thread."""
    if not isinstance(request, bytes):
        return from_infer_request(request, check)
    if len(request) <= INLINE_PARSE_BYTES:
        return parse_infer_request(request, check)
    return await asyncio.to_thread(parse_infer_request, request, check)


def parse_infer_request(data: bytes, check: CheckInput | None = None) -> WireRequest:
    """The message's bytes -> the wire request; with ``check``, each input's declared form is
    checked from the bytes themselves first (``check_declared_inputs``), before protobuf copies
    the message's data."""
    if check is not None:
        check_declared_inputs(data, check)
    try:
        message = service_pb2.ModelInferRequest.FromString(data)
    except DecodeError:
        raise bad_request("the request is not a valid ModelInferRequest message") from None
    return from_infer_request(message, check)


MAX_FIELDS = 1024  # top-level fields of a request; a real one has a dozen or so
INPUTS_FIELD, NAME, DATATYPE, SHAPE = 5, 1, 2, 3  # ModelInferRequest.inputs; InferInputTensor's


def check_declared_inputs(data: bytes, check: CheckInput) -> None:
    """``check`` each input's name, datatype and shape as the message's bytes declare them,
    reading nothing else (raw contents are skipped, not copied): a message declaring millions
    of elements is refused before protobuf parses it. Malformed bytes are left to protobuf."""
    try:
        fields = list(_wire_fields(memoryview(data), MAX_FIELDS))
    except _Malformed:
        return
    for number, value in fields:
        if number != INPUTS_FIELD or not isinstance(value, memoryview):
            continue
        try:
            parts = list(_wire_fields(value, MAX_FIELDS))
        except _Malformed:
            return
        texts = {n: bytes(v).decode(errors="replace") for n, v in parts if n in (NAME, DATATYPE)}
        shape = [v for n, v in parts if n == SHAPE and isinstance(v, int)]
        for packed in (v for n, v in parts if n == SHAPE and isinstance(v, memoryview)):
            shape += [d for _, d in _varints(packed)]
        name = texts.get(NAME, "")
        check(name, check_datatype(texts.get(DATATYPE), name), check_shape(shape, name))


class _Malformed(Exception):
    pass


def _wire_fields(data: memoryview, limit: int):
    """(field number, int or memoryview) of each field of a protobuf message's bytes."""
    offset, count = 0, 0
    while offset < len(data):
        count += 1
        if count > limit:
            raise bad_request(f"the request has more than {limit} fields")
        key, offset = _read_varint(data, offset)
        kind = key & 7
        if kind == 0:
            value, offset = _read_varint(data, offset)
        elif kind == 2:
            length, offset = _read_varint(data, offset)
            value, offset = data[offset : offset + length], offset + length
        elif kind in (1, 5):
            value, offset = 0, offset + (8 if kind == 1 else 4)
        else:
            raise _Malformed
        if offset > len(data):
            raise _Malformed
        yield key >> 3, value


def _varints(data: memoryview):
    offset = 0
    while offset < len(data):
        value, offset = _read_varint(data, offset)
        yield offset, value


def _read_varint(data: memoryview, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while offset < len(data) and shift < 70:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset, shift = offset + 1, shift + 7
        if byte < 0x80:
            return value, offset
    raise _Malformed


def from_infer_request(
    message: service_pb2.ModelInferRequest, check: CheckInput | None = None
) -> WireRequest:
    """The message -> the wire request; ``check`` sees each input's name, datatype and shape
    before its data is read, so that no more elements are read than the model takes."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise bad_request(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
            "give every input's data there, or none"
        )
    inputs = tuple(_input(tensor, raw, index, check) for index, tensor in enumerate(message.inputs))
    outputs = tuple(
        RequestedOutput(output.name, parameters(output.parameters)) for output in message.outputs
    )
    if any(not output.name for output in outputs):
        raise bad_request("every requested output needs a name")
    return WireRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id or None,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters(message.parameters),
    )


def _input(tensor: Any, raw: Any, index: int, check: CheckInput | None) -> WireTensor:
    """Input ``index``: its data in ``raw[index]`` (``raw_input_contents``, read only once
    ``check`` has passed its form) or in its typed contents."""
    name = tensor.name
    if not name:
        raise bad_request("every input needs a name")
    datatype = check_datatype(tensor.datatype, name)
    shape = check_shape(list(tensor.shape), name)
    if check is not None:
        check(name, datatype, shape)
    given = parameters(tensor.parameters)
    if any(key.startswith("shared_memory") for key in given):
        raise bad_request(f"input {name!r}: shared memory is not supported; send the data")
    if raw:
        if tensor.HasField("contents"):
            raise bad_request(f"input {name!r} has both contents and raw_input_contents")
        data = from_raw(name, datatype, shape, raw[index])
        return WireTensor(name, datatype, shape, data, given)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise bad_request(f"input {name!r}: {datatype} travels in raw_input_contents only")
    contents = getattr(tensor.contents, field)
    if len(contents) != element_count(shape):  # before a value is read
        raise bad_request(
            f"tensor {name!r}: {len(contents)} values given for shape {list(shape)} "
            f"({element_count(shape)} values)"
        )
    return WireTensor(
        name, datatype, shape, from_list(name, datatype, shape, list(contents)), given
    )


def parameters(entries: Any) -> dict[str, Parameter]:
    """A ``map<string, InferParameter>`` -> plain values."""
    plain = {}
    for key, value in entries.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is None:
            raise bad_request(f"parameter {key!r} has no value")
        plain[key] = getattr(value, kind)
    return plain


def set_parameters(entries: Any, values: dict[str, Parameter]) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            entries[key].bool_param = value
        elif isinstance(value, int):
            entries[key].int64_param = value
        elif isinstance(value, float):
            entries[key].double_param = value
        else:
            entries[key].string_param = value


def to_infer_response(response: WireResponse) -> service_pb2.ModelInferResponse:
    message = _described(response)
    for tensor in response.outputs:
        message.raw_output_contents.append(to_raw(tensor))
    return message


def infer_response_bytes(response: WireResponse) -> bytes:
    """``to_infer_response(response).SerializeToString()``, with each tensor's bytes copied
    once instead of three times (to bytes, into the message, into its serialised form: 11 ms for
    a 480x640 photo's five maps, 6.8 MB, on the event loop; docs/benchmarks.md). The message
    less its raw contents is serialised by protobuf, then each raw tensor is appended as field
    6 (``raw_output_contents``, the message's last field), as protobuf itself writes it."""
    parts = [_described(response).SerializeToString()]
    for tensor in response.outputs:
        raw = raw_view(tensor)
        size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
        parts += (RAW_OUTPUT_TAG, _varint(size), raw)
    return b"".join(parts)


def serialize_infer_response(response: service_pb2.ModelInferResponse | bytes) -> bytes:
    """ModelInfer's response serialiser: ``infer_response_bytes``' bytes as they are, a message
    (an error path, a test) as protobuf serialises it."""
    return response if isinstance(response, bytes) else response.SerializeToString()


RAW_OUTPUT_TAG = bytes([6 << 3 | 2])  # field 6, wire type 2 (length-delimited)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _described(response: WireResponse) -> service_pb2.ModelInferResponse:
    """The response message with everything but the tensors' bytes."""
    message = service_pb2.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    set_parameters(message.parameters, response.parameters)
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype)
        output.shape.extend(tensor.shape)
        set_parameters(output.parameters, tensor.parameters)
    return message


def server_metadata(document: dict) -> service_pb2.ServerMetadataResponse:
    """``interface.server_metadata``'s document as the gRPC message."""
    return service_pb2.ServerMetadataResponse(
        name=document["name"], version=document["version"], extensions=document["extensions"]
    )


def model_metadata(document: dict) -> service_pb2.ModelMetadataResponse:
    """``interface.model_metadata``'s document as the gRPC message (which has no ``tasks``)."""
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    return service_pb2.ModelMetadataResponse(
        name=document["name"],
        versions=document["versions"],
        platform=document["platform"],
        inputs=[tensor(**spec) for spec in document["inputs"]],
        outputs=[tensor(**spec) for spec in document["outputs"]],
    )


def error_metadata(error: V2Error) -> tuple[tuple[str, str], ...]:
    """Trailing metadata for a failed call: gRPC keys are lower case (``retry-after``)."""
    return tuple((key.lower(), value) for key, value in error.headers.items())
