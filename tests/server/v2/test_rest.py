"""REST bodies both ways with tritonclient 2.73 as the other side: its request builder feeds our
parser, its result reader reads our responses; binary and JSON, BYTES and UINT8."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from server.v2.errors import V2Error
from server.v2.interface import infer_request, infer_response
from server.v2.rest import HEADER_LENGTH, encode_error, encode_response, parse_request
from tests.server.v2.helpers import (
    demo_model,
    fake_frames,
    http_body,
    http_result,
    image_input,
    pixels_input,
    png_bytes,
)

MODEL = demo_model()
ROUTER = ("expert_tokens", "shared_gate_mass")


def parse(body: bytes, headers: dict, version: str = ""):
    return infer_request(parse_request(body, headers, MODEL.name, version), MODEL)


@pytest.mark.parametrize("binary", [True, False])
def test_image_bytes_arrive_as_the_file(binary):
    upload = png_bytes()
    request = parse(*http_body([image_input(httpclient, upload, binary)]))
    assert request.image == upload and request.pixels is None and request.frames == 1
    assert [t.name for t in request.tasks] == list(MODEL.task_names)
    # No outputs named: every output, binary (tritonclient sets binary_data_output).
    assert [(c.name, c.binary) for c in request.outputs] == [
        (name, True) for name in (*MODEL.task_names, *ROUTER)
    ]


@pytest.mark.parametrize("binary", [True, False])
def test_pixel_frames_arrive_as_uint8(binary):
    frames = np.random.default_rng(1).integers(0, 256, (3, 5, 7, 3), np.uint8)
    request = parse(*http_body([pixels_input(httpclient, frames, binary)]))
    assert request.image is None and request.frames == 3
    np.testing.assert_array_equal(request.pixels, frames)
    assert request.pixels.dtype == np.uint8


def test_requested_outputs_choose_tasks_order_and_form():
    outputs = [
        httpclient.InferRequestedOutput("normals", binary_data=False),
        httpclient.InferRequestedOutput("expert_tokens"),
        httpclient.InferRequestedOutput("semseg"),
    ]
    body, headers = http_body([image_input(httpclient, png_bytes())], outputs)
    request = parse(body, headers)
    assert [t.name for t in request.tasks] == ["semseg", "normals"]  # registry order
    assert [(c.name, c.binary) for c in request.outputs] == [
        ("normals", False),
        ("expert_tokens", True),
        ("semseg", True),
    ]


def test_router_statistics_alone_compute_every_task():
    outputs = [httpclient.InferRequestedOutput("shared_gate_mass")]
    request = parse(*http_body([image_input(httpclient, png_bytes())], outputs))
    assert [t.name for t in request.tasks] == list(MODEL.task_names)
    assert [c.name for c in request.outputs] == ["shared_gate_mass"]


def test_size_parameters_and_client_timeout():
    image = [image_input(httpclient, png_bytes())]
    request = parse(*http_body(image, parameters={"size": "model"}, timeout=250_000))
    assert (request.size, request.max_side, request.timeout_s) == ("model", None, 0.25)
    request = parse(*http_body(image, parameters={"max_side": 64}))
    assert (request.size, request.max_side, request.timeout_s) == ("upload", 64, None)
    request = parse(*http_body(image, parameters={"size": "model", "max_side": 64}))
    assert (request.size, request.max_side) == ("model", 64)  # composed: MapSize.resolve


def test_whole_numbers_written_as_floats_are_integers():
    """JSON (and JSON Schema) has one number type: 3.0 is the integer 3."""
    pixels = {
        "name": "pixels",
        "datatype": "UINT8",
        "shape": [1.0, 1, 2, 3.0],
        "data": [0, 1.0, 2, 3, 4, 255.0],
    }
    body = orjson.dumps({"inputs": [pixels], "parameters": {"max_side": 8.0}})
    request = parse(body, {})
    assert request.pixels.shape == (1, 1, 2, 3) and request.pixels.dtype == np.uint8
    assert request.pixels.reshape(-1).tolist() == [0, 1, 2, 3, 4, 255]
    assert request.max_side == 8 and isinstance(request.max_side, int)


@pytest.mark.parametrize("binary", [True, False])
def test_responses_read_back_by_tritonclient(binary):
    frames = np.zeros((2, 6, 9, 3), np.uint8)
    names = ["semseg", "saliency", "normals", *ROUTER]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    request = parse(*http_body([pixels_input(httpclient, frames)], outputs, request_id="r-7"))
    computed = fake_frames(request, MODEL, height=6, width=9)
    body, headers = encode_response(infer_response(request, MODEL, computed))
    assert (HEADER_LENGTH in headers) is binary
    result = http_result(body, headers)
    response = result.get_response()
    assert (response["model_name"], response["id"]) == (MODEL.name, "r-7")
    assert response["model_version"] == MODEL.version
    expected = {
        "semseg": ("UINT8", np.uint8, (2, 6, 9)),
        "saliency": ("FP32", np.float32, (2, 6, 9)),
        "normals": ("FP32", np.float32, (2, 6, 9, 3)),
        "expert_tokens": ("FP32", np.float32, (2, 3, *_router_dims())),
        "shared_gate_mass": ("FP32", np.float32, (2, 3, _router_dims()[0])),
    }
    for output in response["outputs"]:
        datatype, dtype, shape = expected[output["name"]]
        array = result.as_numpy(output["name"])
        assert (output["datatype"], array.dtype, array.shape) == (datatype, dtype, shape)
    for index, frame in enumerate(computed):
        for task in ("semseg", "saliency", "normals"):  # float32 exact through JSON too
            np.testing.assert_array_equal(result.as_numpy(task)[index], frame.maps[task])
        np.testing.assert_array_equal(result.as_numpy("expert_tokens")[index], frame.expert_tokens)
    router = {o["name"]: o.get("parameters", {}) for o in response["outputs"]}
    assert router["expert_tokens"]["tasks"] == "semseg,saliency,normals"


def _router_dims() -> tuple[int, int]:
    return MODEL.adapters.layers, MODEL.adapters.experts


def test_compressed_request_bodies():
    body, headers = http_body([image_input(httpclient, png_bytes())])
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        wire = parse_request(packed, {**headers, "Content-Encoding": encoding}, MODEL.name)
        assert wire.inputs[0].data[0] == png_bytes()
    with pytest.raises(V2Error) as error:
        parse_request(
            gzip.compress(body),
            {**headers, "Content-Encoding": "gzip"},
            MODEL.name,
            max_body_bytes=len(body) - 1,
        )
    assert error.value.status == 413


def _json(document: dict) -> tuple[bytes, dict]:
    return orjson.dumps(document), {}


def _binary(document: dict, raw: bytes) -> tuple[bytes, dict]:
    header = orjson.dumps(document)
    return header + raw, {HEADER_LENGTH: str(len(header))}


def _raw_image(size: int) -> dict:
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": size},
            }
        ]
    }


IMAGE_JSON = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}
BAD_REQUESTS = {
    "not json": ((b"{inputs", {}), 400, "not valid JSON"),
    "no inputs": (_json({"outputs": []}), 400, "'inputs'"),
    "two inputs": (
        _json({"inputs": [IMAGE_JSON, {**IMAGE_JSON, "name": "pixels"}]}),
        400,
        "exactly one",
    ),
    "unknown input": (_json({"inputs": [{**IMAGE_JSON, "name": "img"}]}), 400, "unexpected"),
    "image shape": (_json({"inputs": [{**IMAGE_JSON, "shape": [1, 1]}]}), 400, "shape [1]"),
    "not base64": (_json({"inputs": [{**IMAGE_JSON, "data": ["%%"]}]}), 400, "base64"),
    "pixels float": (
        _json(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "UINT8",
                        "shape": [1, 1, 1, 3],
                        "data": [1.5, 2, 3],
                    }
                ]
            }
        ),
        400,
        "integers",
    ),
    "pixels range": (
        _json(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "UINT8",
                        "shape": [1, 1, 1, 3],
                        "data": [300, 2, 3],
                    }
                ]
            }
        ),
        400,
        "range",
    ),
    "pixels layout": (
        _json(
            {
                "inputs": [
                    {"name": "pixels", "datatype": "UINT8", "shape": [1, 3], "data": [1, 2, 3]}
                ]
            }
        ),
        400,
        "[N, H, W, 3]",
    ),
    "count": (_json({"inputs": [{**IMAGE_JSON, "data": ["aGk=", "aGk="]}]}), 400, "2 values"),
    "datatype": (_json({"inputs": [{**IMAGE_JSON, "datatype": "STRING"}]}), 400, "datatype"),
    "bf16": (_json({"inputs": [{**IMAGE_JSON, "datatype": "BF16"}]}), 400, "datatype"),
    "size": (_json({"inputs": [IMAGE_JSON], "parameters": {"size": "big"}}), 400, "'size'"),
    "max_side": (_json({"inputs": [IMAGE_JSON], "parameters": {"max_side": 0}}), 400, "1..65535"),
    "max_side big": (
        _json({"inputs": [IMAGE_JSON], "parameters": {"max_side": 65536}}),
        400,
        "1..65535",
    ),
    "priority": (_json({"inputs": [IMAGE_JSON], "parameters": {"priority": -1}}), 400, "0.."),
    "timeout": (_json({"inputs": [IMAGE_JSON], "parameters": {"timeout": -5}}), 400, "0.."),
    "max_side type": (
        _json({"inputs": [IMAGE_JSON], "parameters": {"max_side": "64"}}),
        400,
        "integer",
    ),
    "unknown parameter": (
        _json({"inputs": [IMAGE_JSON], "parameters": {"max-side": 64}}),
        400,
        "unknown",
    ),
    "sequence": (
        _json({"inputs": [IMAGE_JSON], "parameters": {"sequence_id": 3}}),
        400,
        "sequence",
    ),
    "sequence start": (
        _json({"inputs": [IMAGE_JSON], "parameters": {"sequence_start": False}}),
        400,
        "sequence",
    ),
    "unknown output": (
        _json({"inputs": [IMAGE_JSON], "outputs": [{"name": "depth"}]}),
        400,
        "unexpected",
    ),
    "repeated output": (
        _json({"inputs": [IMAGE_JSON], "outputs": [{"name": "edges"}, {"name": "edges"}]}),
        400,
        "more than once",
    ),
    "classification": (
        _json(
            {
                "inputs": [IMAGE_JSON],
                "outputs": [{"name": "semseg", "parameters": {"classification": 3}}],
            }
        ),
        400,
        "not supported",
    ),
    "binary_data type": (
        _json(
            {
                "inputs": [IMAGE_JSON],
                "outputs": [{"name": "semseg", "parameters": {"binary_data": "yes"}}],
            }
        ),
        400,
        "boolean",
    ),
    "header length": ((b"{}", {HEADER_LENGTH: "99"}), 400, HEADER_LENGTH),
    "left over": (
        (b'{"inputs": []}xyz', {HEADER_LENGTH: "14"}),
        400,
        "3 bytes of binary data after",
    ),
    "short binary": (_binary(_raw_image(9), b"\x02\x00\x00\x00hi"), 400, "only 6 bytes"),
    "bad prefix": (_binary(_raw_image(6), b"\x09\x00\x00\x00hi"), 400, "4-byte"),
    "both data": (
        _binary(
            {"inputs": [{**IMAGE_JSON, "parameters": {"binary_data_size": 6}}]},
            b"\x02\x00\x00\x00hi",
        ),
        400,
        "both",
    ),
    "no data": (
        _json({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}),
        400,
        "neither",
    ),
    "wrong model": (_json({"inputs": [IMAGE_JSON]}), 404, "unknown model"),
    "image upload": ((b"\x89PNG", {"Content-Type": "image/png"}), 415, "image"),
    "brotli": ((b"...", {"Content-Encoding": "br"}), 415, "encoding"),
    "not gzip": ((b"plain", {"Content-Encoding": "gzip"}), 400, "gzip"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_fail_with_the_protocols_status(case):
    (body, headers), status, words = BAD_REQUESTS[case]
    name = "other" if case == "wrong model" else MODEL.name
    with pytest.raises(V2Error) as raised:
        infer_request(parse_request(body, headers, name), MODEL)
    error = raised.value
    assert error.status == status and words in error.message, error.message
    body, headers = encode_error(error)
    assert orjson.loads(body) == {"error": error.message}
    assert headers["Content-Type"] == "application/json"


def test_unknown_version_is_404():
    body, headers = http_body([image_input(httpclient, png_bytes())])
    assert parse(body, headers, MODEL.version).image == png_bytes()
    with pytest.raises(V2Error) as error:
        parse(body, headers, "7")
    assert error.value.status == 404
