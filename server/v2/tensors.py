"""Tensors as the Open Inference Protocol carries them, and the request and response they travel
in, independent of REST or gRPC (``rest.py`` and ``grpc_wire.py`` read and write them).

A tensor is a name, a datatype (``BOOL``, ``UINT8`` ... ``FP64``, ``BYTES``), a shape and its
data as a NumPy array of that shape: the datatype's own dtype, or an object array of ``bytes``
for ``BYTES``. Raw (binary) data is little-endian and row-major; a ``BYTES`` tensor is its
elements one after the other, each after a 4-byte little-endian length. ``BF16`` has no NumPy
dtype and no use here: it is refused.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.v2.errors import bad_request

Parameter = bool | int | float | str
# An input's name, datatype and shape, checked before its data is read (raises V2Error).
CheckInput = Callable[[str, str, tuple[int, ...]], None]
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "?"),
        ("UINT8", "u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("INT8", "i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    )
}
DATATYPES = (*DTYPES, "BYTES")
LENGTH_PREFIX = struct.Struct("<I")
MAX_DIMENSIONS = 32  # NumPy 1's limit (2's is 64); a tensor of this model has at most 4
MAX_ELEMENTS = 2**48
"""Most elements a shape may describe (zero dimensions read as one): beyond any body this
server takes, and far inside NumPy's 2**63-byte arrays, so that no shape a client sends
makes NumPy raise (a 500) instead of the protocol's 400."""


@dataclass(frozen=True)
class WireTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray  # of ``shape``; dtype DTYPES[datatype], or object (bytes or str) for BYTES
    parameters: dict[str, Parameter] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Parameter] = field(default_factory=dict)


@dataclass(frozen=True)
class WireRequest:
    """One inference request as it arrived, checked for form only (not against a model)."""

    model_name: str
    model_version: str  # "" when the client named none
    id: str | None
    inputs: tuple[WireTensor, ...]
    outputs: tuple[RequestedOutput, ...]  # empty: the client asked for every output
    parameters: dict[str, Parameter] = field(default_factory=dict)


@dataclass(frozen=True)
class WireResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: tuple[WireTensor, ...]
    binary_outputs: frozenset[str] = frozenset()  # REST: these go after the JSON header
    parameters: dict[str, Parameter] = field(default_factory=dict)


def check_datatype(datatype: Any, name: str) -> str:
    if datatype not in DATATYPES:
        raise bad_request(
            f"tensor {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}"
        )
    return datatype


def check_shape(shape: Any, name: str) -> tuple[int, ...]:
    """A shape of at most ``MAX_DIMENSIONS`` integers >= 0 describing at most ``MAX_ELEMENTS``
    (zero dimensions counted as one: ``[0, 2**70]`` is refused too); 400 otherwise."""
    if isinstance(shape, list | tuple) and len(shape) > MAX_DIMENSIONS:
        raise bad_request(
            f"tensor {name!r}: shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS}"
        )
    dimensions = [whole_number(d) for d in shape] if isinstance(shape, list | tuple) else [None]
    if not all(d is not None and d >= 0 for d in dimensions):
        raise bad_request(f"tensor {name!r}: shape must be a list of integers >= 0, got {shape!r}")
    spanned = 1
    for dimension in dimensions:  # stops early: a dimension may be a huge JSON integer
        spanned *= max(dimension, 1)
        if spanned > MAX_ELEMENTS:
            raise bad_request(f"tensor {name!r}: shape {shape!r} describes too many elements")
    return tuple(dimensions)


def whole_number(value: Any) -> int | None:
    """An integer, or a float with no fractional part (JSON has one number type: 64.0 is the
    integer 64 there, and in JSON Schema); ``None`` for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    """Raw tensor bytes -> the array of ``shape``; 400 when the sizes disagree."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, name).reshape(shape)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise bad_request(
            f"tensor {name!r}: {len(raw)} bytes of data, but shape {list(shape)} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype).reshape(shape)


def to_raw(tensor: WireTensor) -> bytes:
    """The tensor's raw bytes (``BYTES``: length-prefixed elements)."""
    return bytes(raw_view(tensor))


def raw_view(tensor: WireTensor) -> bytes | memoryview:
    """The tensor's raw bytes without a copy where it can be: a numeric tensor's memory itself
    (row-major, little-endian), for a body that is joined once (``rest.encode_response``)."""
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data)
    return memoryview(np.ascontiguousarray(tensor.data, DTYPES[tensor.datatype])).cast("B")


def serialize_bytes(elements: np.ndarray) -> bytes:
    parts = []
    for element in elements.reshape(-1):
        value = element if isinstance(element, bytes) else str(element).encode()
        parts += (LENGTH_PREFIX.pack(len(value)), value)
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Length-prefixed elements -> object array of ``count`` bytes; nothing may be left over."""
    elements, offset, view = [], 0, memoryview(raw)
    while offset < len(view) and len(elements) < count:
        if offset + LENGTH_PREFIX.size > len(view):
            break
        (length,) = LENGTH_PREFIX.unpack_from(view, offset)
        offset += LENGTH_PREFIX.size
        if offset + length > len(view):
            break
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != count or offset != len(view):
        raise bad_request(
            f"tensor {name!r}: BYTES data must be {count} element(s), each after a 4-byte "
            f"little-endian length; {len(view)} bytes do not parse that way"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def from_list(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Explicit (JSON or gRPC ``contents``) data, flat or nested, row-major -> the array.

    Values are checked, not coerced: integers for integer types (in range), numbers for
    floats, booleans for ``BOOL``, strings or bytes for ``BYTES``. JSON strings stay ``str``
    (JSON cannot carry arbitrary bytes, so what a string means, text or base64, is the model
    interface's business); gRPC ``bytes_contents`` are ``bytes``.
    """
    if datatype == "BYTES":
        flat = _flatten(data, name)
        if not all(isinstance(v, str | bytes) for v in flat):
            raise bad_request(f"tensor {name!r}: BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        array = _numeric(name, datatype, data)
    if array.size != element_count(shape):
        raise bad_request(
            f"tensor {name!r}: {array.size} values given for shape {list(shape)} "
            f"({element_count(shape)} values)"
        )
    return array.reshape(shape)


def _numeric(name: str, datatype: str, data: Any) -> np.ndarray:
    try:
        values = np.asarray(data)
    except ValueError:  # ragged nesting
        raise bad_request(f"tensor {name!r}: data is not a regular (row-major) array") from None
    allowed = {"BOOL": "b", "FP16": "biuf", "FP32": "biuf", "FP64": "biuf"}.get(datatype, "iu")
    if allowed == "iu" and values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0):
        allowed = "iuf"  # whole numbers written as floats: JSON's 3.0 is the integer 3
    if values.size and values.dtype.kind not in allowed:
        wanted = {"b": "booleans", "iu": "integers"}.get(allowed, "numbers")
        raise bad_request(f"tensor {name!r}: {datatype} data must be {wanted}")
    dtype = DTYPES[datatype]
    if values.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise bad_request(f"tensor {name!r}: values outside {datatype}'s range")
    return values.astype(dtype).reshape(-1)


def _flatten(data: Any, name: str) -> list:
    if not isinstance(data, list):
        raise bad_request(f"tensor {name!r}: data must be an array")
    flat: list = []
    stack = [iter(data)]
    while stack:  # iterative: nesting depth comes from the client
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def check_parameters(parameters: Any, where: str) -> dict[str, Parameter]:
    """A ``parameters`` object: string keys, scalar values (the protocol's $parameters)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict) or not all(
        isinstance(key, str) and isinstance(value, bool | int | float | str)
        for key, value in parameters.items()
    ):
        raise bad_request(f"{where}: parameters must map names to strings, numbers or booleans")
    return dict(parameters)


def bool_parameter(parameters: dict[str, Parameter], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise bad_request(f"{where}: parameter {key!r} must be a boolean, got {value!r}")
    return value


def int_parameter(parameters: dict[str, Parameter], key: str, where: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    number = whole_number(value)
    if number is None:
        raise bad_request(f"{where}: parameter {key!r} must be an integer, got {value!r}")
    return number
