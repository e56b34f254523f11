"""gRPC messages both ways with tritonclient 2.73's own message builder and result reader,
through the messages' wire bytes (service_pb2)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from server.v2 import grpc_wire
from server.v2.errors import V2Error, unavailable
from server.v2.interface import (
    check_input,
    infer_request,
    infer_response,
    model_metadata,
    server_metadata,
)
from tests.server.v2.helpers import (
    demo_model,
    fake_frames,
    grpc_message,
    grpc_result,
    image_input,
    pixels_input,
    png_bytes,
)

MODEL = demo_model()


def test_image_and_parameters_from_tritonclients_message():
    upload = png_bytes(3)
    outputs = [grpcclient.InferRequestedOutput("edges"), grpcclient.InferRequestedOutput("parts")]
    message = grpc_message(
        [image_input(grpcclient, upload)], outputs, request_id="g-1", parameters={"max_side": 32}
    )
    request = infer_request(grpc_wire.from_infer_request(message), MODEL)
    assert request.image == upload and request.id == "g-1"
    assert [t.name for t in request.tasks] == ["parts", "edges"]
    assert [c.name for c in request.outputs] == ["edges", "parts"]
    assert (request.size, request.max_side) == ("upload", 32)


def test_pixel_frames_round_trip_through_raw_contents():
    frames = np.random.default_rng(2).integers(0, 256, (2, 4, 6, 3), np.uint8)
    request = infer_request(
        grpc_wire.from_infer_request(grpc_message([pixels_input(grpcclient, frames)])), MODEL
    )
    np.testing.assert_array_equal(request.pixels, frames)
    computed = fake_frames(request, MODEL, height=4, width=6)
    result = grpc_result(grpc_wire.to_infer_response(infer_response(request, MODEL, computed)))
    response = result.get_response()
    assert (response.model_name, response.model_version) == (MODEL.name, MODEL.version)
    assert [o.name for o in response.outputs] == [
        *MODEL.task_names,
        "expert_tokens",
        "shared_gate_mass",
    ]
    for index, frame in enumerate(computed):
        for name, expected in frame.maps.items():
            np.testing.assert_array_equal(result.as_numpy(name)[index], expected)
        np.testing.assert_array_equal(
            result.as_numpy("shared_gate_mass")[index], frame.shared_gate_mass
        )
    assert result.as_numpy("semseg").dtype == np.uint8
    assert result.as_numpy("normals").shape == (2, 4, 6, 3)
    tasks = result.get_output("expert_tokens").parameters["tasks"].string_param
    assert tasks == ",".join(MODEL.task_names)


@pytest.mark.parametrize("frames", [1, 3])
def test_response_bytes_are_the_messages_serialised_form(frames):
    """What ModelInfer sends (its tensors' bytes copied once) parses to the same message as
    to_infer_response builds; the serialiser passes those bytes through, serialises messages."""
    pixels = np.zeros((frames, 5, 7, 3), np.uint8)
    message = grpc_message([pixels_input(grpcclient, pixels)], request_id="r")
    request = infer_request(grpc_wire.from_infer_request(message), MODEL)
    response = infer_response(request, MODEL, fake_frames(request, MODEL, height=5, width=7))
    sent = grpc_wire.infer_response_bytes(response)
    message = grpc_wire.to_infer_response(response)
    assert service_pb2.ModelInferResponse.FromString(sent) == message
    assert grpc_wire.serialize_infer_response(sent) is sent
    assert grpc_wire.serialize_infer_response(message) == message.SerializeToString()
    big = 300  # a length past one varint byte
    assert grpc_wire._varint(big) == bytes([big & 0x7F | 0x80, big >> 7])


def test_typed_contents_are_read_too():
    message = service_pb2.ModelInferRequest(model_name=MODEL.name)
    tensor = message.inputs.add(name="pixels", datatype="UINT8", shape=[1, 1, 2, 3])
    tensor.contents.uint_contents.extend([0, 1, 2, 253, 254, 255])
    request = infer_request(grpc_wire.from_infer_request(message), MODEL)
    assert request.pixels.tolist() == [[[[0, 1, 2], [253, 254, 255]]]]
    tensor.contents.uint_contents[0] = 256
    with pytest.raises(V2Error, match="range"):
        grpc_wire.from_infer_request(message)


def test_raw_and_contents_mixed_or_missing_are_400():
    message = grpc_message([image_input(grpcclient, png_bytes())])
    message.raw_input_contents.append(b"\x00")  # two raw entries for one input
    with pytest.raises(V2Error, match="raw_input_contents has 2 entries") as error:
        grpc_wire.from_infer_request(message)
    assert error.value.grpc_code == "INVALID_ARGUMENT"


def test_metadata_messages():
    server = grpc_wire.server_metadata(server_metadata("0.1.0"))
    assert list(server.extensions) == ["binary_tensor_data", "model_repository"]
    document = model_metadata(MODEL)
    model = grpc_wire.model_metadata(document)
    assert (model.name, list(model.versions)) == (MODEL.name, [MODEL.version])
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in document["outputs"]
    ]


def test_errors_carry_their_grpc_code_and_retry_after():
    error = unavailable("queue full", retry_after_s=2)
    assert error.grpc_code == "UNAVAILABLE"
    assert grpc_wire.error_metadata(error) == (("retry-after", "2"),)
    assert V2Error(504, "late").grpc_code == "DEADLINE_EXCEEDED"
    assert V2Error(413, "big").grpc_code == "RESOURCE_EXHAUSTED"


def declared(name: str, datatype: str, shape: list[int], raw: bytes) -> bytes:
    message = service_pb2.ModelInferRequest(model_name="m", id="x")
    message.parameters["size"].string_param = "model"
    message.inputs.add(name=name, datatype=datatype, shape=shape)
    message.raw_input_contents.append(raw)
    return message.SerializeToString()


def test_inputs_are_checked_from_the_bytes_before_protobuf_reads_them(monkeypatch):
    """4 million BYTES elements declared for ``image``: refused from the declaration alone
    (protobuf never parses the 16 MB); a request of the right form is parsed as before."""
    attack = declared("image", "BYTES", [4_000_000], bytes(16_000_000))

    def never(data):
        raise AssertionError("parsed")

    with monkeypatch.context() as patched:
        patched.setattr(service_pb2.ModelInferRequest, "FromString", never)
        with pytest.raises(V2Error, match="must be BYTES of shape"):
            grpc_wire.parse_infer_request(attack, check_input)
    good = declared("pixels", "UINT8", [1, 2, 2, 3], bytes(12))
    wire = grpc_wire.parse_infer_request(good, check_input)
    assert wire.inputs[0].data.shape == (1, 2, 2, 3) and wire.parameters == {"size": "model"}
    with pytest.raises(V2Error, match="not a valid ModelInferRequest"):
        grpc_wire.parse_infer_request(good[:-5], check_input)  # malformed: protobuf says so
