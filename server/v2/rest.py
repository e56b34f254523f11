"""The REST form of an inference request and response, with the binary tensor data extension.

A body is a JSON header, then (binary extension) raw tensors one after the other, in the order
of the inputs (or outputs) whose ``parameters.binary_data_size`` says how many bytes are
theirs; the HTTP header ``Inference-Header-Content-Length`` gives the JSON part's length and
is absent when the body is JSON only. Outputs go binary when their request said
``binary_data: true``, or, for those that did not say, when the request's parameter
``binary_data_output`` is true (tritonclient sets one or the other by default).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import orjson

from server.v2.errors import V2Error, bad_request
from server.v2.tensors import (
    CheckInput,
    RequestedOutput,
    WireRequest,
    WireResponse,
    WireTensor,
    check_datatype,
    check_parameters,
    check_shape,
    from_list,
    from_raw,
    int_parameter,
    raw_view,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE, BINARY_TYPE = "application/json", "application/octet-stream"
# Content-Encoding -> zlib's wbits (tritonclient's request_compression_algorithm sends these).
CONTENT_CODINGS = {"gzip": 31, "deflate": 15}
JSON_BYTES_PER_BYTE = 32
"""Memory parsing a JSON part takes per byte of it, at most: its Python objects, then the
array of ``data``; measured 13 for flat numbers, 9 for strings, 29 for single-element lists."""
BINARY_COPIES = 2  # the binary part: each tensor's bytes, and (BYTES) each element's


def parse_bytes(body_length: int, json_length: int) -> int:
    """The most memory ``parse_request`` takes for a body of ``body_length`` bytes whose JSON
    part is ``json_length`` (``json_length``), for the memory budget."""
    return JSON_BYTES_PER_BYTE * json_length + BINARY_COPIES * (body_length - json_length)


def parse_request(
    body: bytes,
    headers: Mapping[str, str],
    model_name: str,
    model_version: str = "",
    max_body_bytes: int | None = None,
    check: CheckInput | None = None,
) -> WireRequest:
    """A REST inference body and its HTTP headers -> the request; :class:`V2Error` if malformed.
    ``check`` sees each input's name, datatype and shape before its data is read."""
    fields = {key.lower(): value for key, value in headers.items()}
    check_content_type(fields.get("content-type", ""))
    body = decode_content(body, fields.get("content-encoding", ""), max_body_bytes)
    header_length = json_length(fields, len(body))
    document = _json_object(body[:header_length])
    binary = memoryview(body)[header_length:]
    inputs, used = [], 0
    for entry in _list_of_objects(document.get("inputs"), "inputs", required=True):
        tensor, size = _input(entry, binary[used:], check)
        inputs.append(tensor)
        used += size
    if used != len(binary):
        raise bad_request(
            f"{len(binary) - used} bytes of binary data after the inputs' binary_data_size "
            f"({used} bytes in all)"
        )
    outputs = tuple(
        RequestedOutput(_name(entry, "output"), check_parameters(entry.get("parameters"), "output"))
        for entry in _list_of_objects(document.get("outputs"), "outputs", required=False)
    )
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request(f"request id must be a string, got {request_id!r}")
    return WireRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        inputs=tuple(inputs),
        outputs=outputs,
        parameters=check_parameters(document.get("parameters"), "request"),
    )


def check_content_type(content_type: str) -> None:
    """415 for bodies that are plainly not an inference request: an image or a form (that is
    ``/predict``'s upload). Anything else may carry JSON: tritonclient sends no Content-Type,
    curl's ``-d`` sends a form type."""
    media = content_type.split(";")[0].strip().lower()
    if media.startswith(("image/", "multipart/")):
        raise V2Error(
            415,
            f"content type {media!r} is not an inference request: send the JSON request (with "
            "binary tensors after it), the image as the BYTES input 'image'",
        )


def is_encoded(encoding: str) -> bool:
    """Whether a Content-Encoding value asks for ``decode_content``."""
    return encoding.strip().lower() not in ("", "identity")


def check_inputs_first(body: bytes, encoding: str, json_length: int, check: CheckInput) -> None:
    """Of a compressed body, inflate the JSON part only and ``check`` its inputs' forms: a
    request refused for what it declares (5 million BYTES elements) is refused before the rest
    of it is inflated."""
    wbits = CONTENT_CODINGS.get(encoding.strip().lower())
    if wbits is None:
        return  # decode_content says so (415)
    inflater = zlib.decompressobj(wbits)
    try:
        document = _json_object(inflater.decompress(body, json_length))
    except zlib.error as error:
        raise bad_request(f"the body is not valid {encoding} data: {error}") from None
    for entry in _list_of_objects(document.get("inputs"), "inputs", required=True):
        name = _name(entry, "input")
        check(
            name, check_datatype(entry.get("datatype"), name), check_shape(entry.get("shape"), name)
        )


def decode_content(body: bytes, encoding: str, limit: int | None) -> bytes:
    """Undo a gzip/deflate Content-Encoding, never inflating past ``limit`` bytes (413)."""
    encoding = encoding.strip().lower()
    if not is_encoded(encoding):
        return body
    if encoding not in CONTENT_CODINGS:
        raise V2Error(415, f"content encoding {encoding!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(CONTENT_CODINGS[encoding])
    try:
        data = inflater.decompress(body, (limit + 1) if limit else 0)
    except zlib.error as error:
        raise bad_request(f"the body is not valid {encoding} data: {error}") from None
    if limit and (len(data) > limit or inflater.unconsumed_tail):
        raise V2Error(413, f"the body inflates past the limit of {limit} bytes")
    if not inflater.eof:
        raise bad_request(f"the {encoding} body is truncated")
    return data


def json_length(headers: Mapping[str, str], body_length: int) -> int:
    """The JSON part's length: ``Inference-Header-Content-Length`` (``headers`` keys lower
    case), or the whole body without it; 400 unless it is ASCII digits within the body."""
    return _header_length(headers.get(HEADER_LENGTH.lower()), body_length)


def _header_length(value: str | None, body_length: int) -> int:
    if value is None:
        return body_length
    digits = value.strip()  # str.isdigit() takes "²", which int() refuses: ASCII digits only
    if not (digits.isascii() and digits.isdigit()) or int(digits) > body_length:
        raise bad_request(
            f"{HEADER_LENGTH} must be the JSON part's length in bytes (at most the body's "
            f"{body_length}), got {value!r}"
        )
    return int(digits)


def _json_object(data: bytes | memoryview) -> dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"the request is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise bad_request("the request must be a JSON object with 'inputs'")
    return document


def _list_of_objects(value: Any, key: str, required: bool) -> list[dict[str, Any]]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise bad_request(f"'{key}' must be a list of objects")
    return value


def _name(entry: dict[str, Any], what: str) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(f"every {what} needs a 'name' (a string)")
    return name


def _input(
    entry: dict[str, Any], binary: memoryview, check: CheckInput | None
) -> tuple[WireTensor, int]:
    """One input of the JSON header; its data explicit or the next ``binary_data_size`` bytes."""
    name = _name(entry, "input")
    datatype = check_datatype(entry.get("datatype"), name)
    shape = check_shape(entry.get("shape"), name)
    if check is not None:
        check(name, datatype, shape)
    parameters = check_parameters(entry.get("parameters"), f"input {name!r}")
    if any(key.startswith("shared_memory") for key in parameters):
        raise bad_request(f"input {name!r}: shared memory is not supported; send the data")
    size = int_parameter(parameters, "binary_data_size", f"input {name!r}")
    if size is None:
        if "data" not in entry:
            raise bad_request(f"input {name!r} has neither 'data' nor binary_data_size")
        return WireTensor(
            name, datatype, shape, from_list(name, datatype, shape, entry["data"]), parameters
        ), 0
    if "data" in entry:
        raise bad_request(f"input {name!r} has both 'data' and binary_data_size")
    if size < 0 or size > len(binary):
        raise bad_request(
            f"input {name!r}: binary_data_size {size} but only {len(binary)} bytes of binary "
            "data are left"
        )
    data = from_raw(name, datatype, shape, bytes(binary[:size]))
    del parameters["binary_data_size"]
    return WireTensor(name, datatype, shape, data, parameters), size


def encode_response(response: WireResponse) -> tuple[bytes, dict[str, str]]:
    """The response body and the HTTP headers that describe it (content type, header length)."""
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id is not None:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    entries, chunks = [], []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        parameters = dict(tensor.parameters)
        if tensor.name in response.binary_outputs:
            chunks.append(raw_view(tensor))  # no copy: the join below is the only one
            parameters["binary_data_size"] = (
                chunks[-1].nbytes if isinstance(chunks[-1], memoryview) else len(chunks[-1])
            )
        else:
            entry["data"] = _json_data(tensor)
        if parameters:
            entry["parameters"] = parameters
        entries.append(entry)
    header["outputs"] = entries
    document = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return document, {"Content-Type": JSON_TYPE}
    headers = {"Content-Type": BINARY_TYPE, HEADER_LENGTH: str(len(document))}
    return b"".join((document, *chunks)), headers


def _json_data(tensor: WireTensor) -> Any:
    """Flat, row-major data for JSON: NumPy arrays as they are (orjson writes them directly)."""
    if tensor.datatype == "BYTES":
        return [v.decode() if isinstance(v, bytes) else v for v in tensor.data.reshape(-1)]
    if tensor.datatype == "FP16":  # orjson writes no float16
        return tensor.data.reshape(-1).astype("<f4")
    return tensor.data.reshape(-1)


def encode_error(error: V2Error) -> tuple[bytes, dict[str, str]]:
    return orjson.dumps(error.body()), {"Content-Type": JSON_TYPE, **error.headers}
