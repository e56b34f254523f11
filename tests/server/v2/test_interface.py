"""The model's V2 interface as metadata declares it, and the shared path's errors in V2 terms."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from server import errors
from server.v2.errors import V2Error, from_serving_error
from server.v2.interface import (
    FrameResult,
    infer_request,
    infer_response,
    model_metadata,
    server_metadata,
)
from server.v2.openapi import (
    EXAMPLE,
    INFER_OPENAPI,
    InferResponseBody,
    ModelMetadataResponse,
    ServerMetadataResponse,
    infer_request_schema,
)
from server.v2.rest import encode_response, parse_request
from tests.server.v2.helpers import demo_model, fake_frames, http_body, image_input, png_bytes

MODEL = demo_model()


def test_model_metadata_declares_the_interface():
    document = model_metadata(MODEL)
    layers, experts = MODEL.adapters.layers, MODEL.adapters.experts
    assert (document["name"], document["versions"]) == ("ase-demo", [MODEL.version])
    assert document["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [1]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
    ]
    assert document["outputs"] == [
        {"name": "semseg", "datatype": "UINT8", "shape": [-1, -1, -1]},
        {"name": "parts", "datatype": "UINT8", "shape": [-1, -1, -1]},
        {"name": "saliency", "datatype": "FP32", "shape": [-1, -1, -1]},
        {"name": "normals", "datatype": "FP32", "shape": [-1, -1, -1, 3]},
        {"name": "edges", "datatype": "FP32", "shape": [-1, -1, -1]},
        {"name": "expert_tokens", "datatype": "FP32", "shape": [-1, -1, layers, experts]},
        {"name": "shared_gate_mass", "datatype": "FP32", "shape": [-1, -1, layers]},
    ]
    semseg = document["tasks"][0]
    assert (semseg["kind"], semseg["channels"]) == ("classes", len(semseg["classes"]))
    assert server_metadata("0.1.0")["extensions"] == ["binary_tensor_data", "model_repository"]


def test_request_path_errors_in_protocol_terms():
    unknown = errors.InvalidParameter("unknown_task", "unknown task(s) ['depth']")
    assert from_serving_error(unknown).status == 400  # the protocol has no 422
    full = from_serving_error(errors.overloaded("queue"))
    assert (full.status, full.headers) == (503, {"Retry-After": "1"})
    assert full.body() == {"error": full.message}
    assert from_serving_error(errors.TooLarge("image_too_large", "big")).status == 413
    assert from_serving_error(errors.deadline_exceeded()).grpc_code == "DEADLINE_EXCEEDED"
    assert from_serving_error(ValueError("a bug")) is None


def test_documents_match_their_openapi_models():
    ModelMetadataResponse.model_validate(model_metadata(MODEL))
    ServerMetadataResponse.model_validate(server_metadata("0.1.0"))
    assert "$ref" not in json.dumps(INFER_OPENAPI)  # pasted into /openapi.json as it is
    outputs = [httpclient.InferRequestedOutput("edges", binary_data=False)]
    body, _ = http_body([image_input(httpclient, png_bytes(), binary=False)], outputs)
    validator = jsonschema.Draft202012Validator(infer_request_schema(list(MODEL.outputs)))
    validator.validate(orjson.loads(body))  # tritonclient's JSON request is schema-valid
    request = infer_request(parse_request(body, {}, MODEL.name), MODEL)
    frames = fake_frames(request, MODEL, height=4, width=5)
    response, headers = encode_response(infer_response(request, MODEL, frames))
    assert headers == {"Content-Type": "application/json"}
    InferResponseBody.model_validate_json(response)


@pytest.mark.parametrize(
    "change",
    [
        {"inputs": []},
        {"inputs": [{**EXAMPLE["inputs"][0], "name": "img"}]},
        {"inputs": [{**EXAMPLE["inputs"][0], "shape": [1, 1, 2, 4]}]},
        {"inputs": [{**EXAMPLE["inputs"][0], "data": [256, 0, 0, 0, 0, 0]}]},
        {"outputs": [{"name": "depth"}]},
        {"outputs": [{"name": "semseg", "parameters": {"classification": 2}}]},
        {"parameters": {"max_side": 0}},
        {"parameters": {"max_side": 65536}},
        {"parameters": {"size": "huge"}},
        {"parameters": {"sequence_id": 0}},
        {"parameters": {"priority": -1}},
    ],
)
def test_what_the_schema_refuses_the_server_refuses(change):
    """Each schema-invalid body is a 400, and the example (changed by nothing) is served."""
    schema = infer_request_schema(list(MODEL.outputs))
    jsonschema.Draft202012Validator(schema).validate(EXAMPLE)
    infer_request(parse_request(orjson.dumps(EXAMPLE), {}, MODEL.name), MODEL)
    body = {**EXAMPLE, **change}
    assert not jsonschema.Draft202012Validator(schema).is_valid(body)
    with pytest.raises(V2Error) as refused:
        infer_request(parse_request(orjson.dumps(body), {}, MODEL.name), MODEL)
    assert refused.value.status == 400


def test_frame_results_from_per_task_router_statistics():
    tasks = [MODEL.task("semseg"), MODEL.task("edges")]
    layers, experts = MODEL.adapters.layers, MODEL.adapters.experts
    tokens = {t.name: np.full((layers, experts), t.id, np.float32) for t in tasks}
    gate = {t.name: np.full(layers, t.id, np.float32) for t in tasks}
    frame = FrameResult.per_task(tasks, {}, tokens, gate)
    assert frame.expert_tokens.shape == (2, layers, experts)
    assert frame.expert_tokens[:, 0, 0].tolist() == [0, 4] and frame.shared_gate_mass.shape == (
        2,
        layers,
    )
