"""Every error of docs/api_v2.md with its status, over REST and gRPC, against the real server on
127.0.0.1 (one for the module: a deliberately slow model, one model call at a time, two queue
places, small body and pixel limits). tritonclient 2.73 makes every request; where it does not
show what is checked (the ``Retry-After`` header, gRPC's trailing metadata), its own request
body or message goes out over httpx or the gRPC stub instead."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from server.modeldir import load_model_dir
from tests.server.conftest import PREDICT, image_bytes, metric, random_image, start_v2_server
from tests.server.test_bad_input import png_header_only
from tests.server.v2.helpers import grpc_message, http_body, image_input, pixels_input

MAX_BODY, MAX_PIXELS = 200_000, 50_000
IMAGE = image_bytes(random_image(3))
INFER_REST = {"protocol": "v2", "endpoint": "/v2/models/{model}/infer"}
INFER_GRPC = {"protocol": "grpc", "endpoint": "ModelInfer"}


@pytest.fixture(scope="module")
def limited(slow_model_dir, logs):
    flags = (
        "--max-batch",
        "1",
        "--max-queue",
        "2",
        "--max-wait-ms",
        "0",
        "--timeout-s",
        "20",
        "--max-body-bytes",
        str(MAX_BODY),
        "--max-pixels",
        str(MAX_PIXELS),
    )
    server = start_v2_server(slow_model_dir, logs, *flags)
    server.model = load_model_dir(slow_model_dir)
    yield server
    server.stop()


def rest_error(server, **call) -> tuple[str, str]:
    """(status, message) of a failed tritonclient.http call."""
    with httpclient.InferenceServerClient(server.url[7:], network_timeout=60) as client:
        return failure(client, server, **call)


def grpc_error(server, **call) -> tuple[str, str]:
    with grpcclient.InferenceServerClient(server.grpc) as client:
        return failure(client, server, **call)


def failure(client, server, inputs, outputs=None, model=None, version="", **kwargs):
    with pytest.raises(InferenceServerException) as failed:
        client.infer(
            model or server.model.name, inputs, model_version=version, outputs=outputs, **kwargs
        )
    return failed.value.status(), failed.value.message()


def both(module):
    return image_input(module, IMAGE)


# (name, the call for REST, the call for gRPC (None: not a gRPC error), status, gRPC code,
# words of the message)
CASES = [
    (
        "unknown output",
        lambda s, m: {"inputs": [both(m)], "outputs": [m.InferRequestedOutput("depth")]},
        True,
        "400",
        "INVALID_ARGUMENT",
        "unexpected output 'depth'",
    ),
    (
        "unknown parameter",
        lambda s, m: {"inputs": [both(m)], "parameters": {"max-side": 3}},
        True,
        "400",
        "INVALID_ARGUMENT",
        "unknown request parameter",
    ),
    (
        "not an image",
        lambda s, m: {"inputs": [image_input(m, b"plain text, no image" * 4)]},
        True,
        "400",
        "INVALID_ARGUMENT",
        "not an image",
    ),
    (
        "unknown model",
        lambda s, m: {"inputs": [both(m)], "model": "nope"},
        True,
        "404",
        "NOT_FOUND",
        "unknown model 'nope'",
    ),
    (
        "unknown version",
        lambda s, m: {"inputs": [both(m)], "version": "7"},
        True,
        "404",
        "NOT_FOUND",
        "no version '7'",
    ),
    (
        "image over the pixel limit",
        lambda s, m: {"inputs": [image_input(m, png_header_only(300, 300))]},
        True,
        "413",
        "RESOURCE_EXHAUSTED",
        "the limit is 50000",
    ),
    (
        "frames over the pixel limit",
        lambda s, m: {"inputs": [pixels_input(m, np.zeros((1, 250, 250, 3), np.uint8))]},
        True,
        "413",
        "RESOURCE_EXHAUSTED",
        "the limit is 50000",
    ),
    (
        "body over the limit",
        lambda s, m: {"inputs": [pixels_input(m, np.zeros((3, 200, 200, 3), np.uint8))]},
        False,
        "413",
        None,
        "limit",
    ),
    (
        "past the deadline",
        lambda s, m: {"inputs": [both(m)], "timeout": 1},  # microseconds
        True,
        "504",
        "DEADLINE_EXCEEDED",
        "not served within",
    ),
]


@pytest.mark.parametrize(
    ("make", "on_grpc", "status", "code", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_error_with_its_status_over_rest_and_grpc(limited, make, on_grpc, status, code, words):
    got = rest_error(limited, **make(limited, httpclient))
    assert got[0] == status and words in got[1], got
    if on_grpc:
        got = grpc_error(limited, **make(limited, grpcclient))
        assert got[0] == f"StatusCode.{code}" and words in got[1], got


def test_metadata_of_an_unknown_model_is_404(limited):
    with httpclient.InferenceServerClient(limited.url[7:]) as http:
        with pytest.raises(InferenceServerException) as failed:
            http.get_model_metadata("nope")
        assert failed.value.status() == "404"
        assert not http.is_model_ready(limited.model.name, "7")
    with grpcclient.InferenceServerClient(limited.grpc) as client:
        with pytest.raises(InferenceServerException) as failed:
            client.get_model_metadata(limited.model.name, "7")
        assert failed.value.status() == "StatusCode.NOT_FOUND"


def test_media_types_and_encodings_that_are_no_request_are_415(limited):
    """REST only: gRPC has no content types. tritonclient's own body, sent as an image, or
    with a Content-Encoding the server does not read."""
    body, headers = http_body([image_input(httpclient, IMAGE)])
    url = f"{limited.url}/v2/models/{limited.model.name}/infer"
    for extra in ({"Content-Type": "image/png"}, {"Content-Encoding": "br"}):
        answer = httpx.post(url, content=body, headers={**headers, **extra}, timeout=30)
        assert answer.status_code == 415, answer.text
        assert isinstance(answer.json()["error"], str) and len(answer.json()["error"]) > 20


async def flood(server, count: int):
    """``count`` requests at once over REST and as many over gRPC (tritonclient's bodies and
    messages): (REST responses, gRPC outcomes: None for success, else the AioRpcError)."""
    body, headers = http_body(
        [image_input(httpclient, IMAGE)], [httpclient.InferRequestedOutput("edges")]
    )
    message = grpc_message([image_input(grpcclient, IMAGE)], model=server.model.name)
    url = f"{server.url}/v2/models/{server.model.name}/infer"

    async def call(stub):
        try:
            await stub.ModelInfer(message)
        except grpc.aio.AioRpcError as error:
            return error
        return None

    async with httpx.AsyncClient(timeout=60) as http, grpc.aio.insecure_channel(server.grpc) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        rest = [http.post(url, content=body, headers=headers) for _ in range(count)]
        calls = [call(stub) for _ in range(count)]
        done = await asyncio.gather(*rest, *calls)
    return done[:count], done[count:]


def test_a_full_queue_is_503_with_retry_after_on_both(limited):
    before = limited.metrics()
    rest, calls = asyncio.run(flood(limited, 8))
    after = limited.metrics()
    refused = [r for r in rest if r.status_code == 503]
    assert refused and {r.status_code for r in rest} <= {200, 503}
    assert all(r.headers["Retry-After"] == "1" and "capacity" in r.json()["error"] for r in refused)
    unavailable = [c for c in calls if c is not None]
    assert unavailable and all(c.code() == grpc.StatusCode.UNAVAILABLE for c in unavailable)
    assert all(("retry-after", "1") in tuple(c.trailing_metadata()) for c in unavailable)
    served = 2 * 8 - len(refused) - len(unavailable)
    assert served >= 2  # the queue's two places, at least

    def moved(labels, status):
        return metric(after, "ase_requests_total", **labels, status=status) - metric(
            before, "ase_requests_total", **labels, status=status
        )

    assert moved(INFER_REST, "503") == len(refused)  # counted by protocol and status
    assert moved(INFER_GRPC, "503") == len(unavailable)
    assert moved(INFER_REST, "200") + moved(INFER_GRPC, "200") == served


MALFORMED_SHAPES = [[0, 2**70], [0, 2**62, 2**62, 3], [1] * 65, [2**40, 2**40]]


@pytest.mark.parametrize(
    "shape", MALFORMED_SHAPES, ids=["0x2^70", "0x2^62x2^62x3", "65 dims", "2^80"]
)
def test_shapes_numpy_cannot_hold_are_400_not_500(limited, shape):
    url = f"{limited.url}/v2/models/{limited.model.name}/infer"
    for name, datatype in (("pixels", "UINT8"), ("image", "BYTES"), ("other", "FP32")):
        request = {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": []}]}
        answer = httpx.post(url, json=request, timeout=30)
        assert answer.status_code == 400 and isinstance(answer.json()["error"], str), answer.text
    message = service_pb2.ModelInferRequest(model_name=limited.model.name)
    message.inputs.add(name="pixels", datatype="UINT8", shape=[min(d, 2**63 - 1) for d in shape])
    message.raw_input_contents.append(b"")
    with grpc.insecure_channel(limited.grpc) as channel, pytest.raises(grpc.RpcError) as failed:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()


def test_a_header_length_of_non_ascii_digits_is_400(limited):
    body, headers = http_body([image_input(httpclient, IMAGE)])
    url = f"{limited.url}/v2/models/{limited.model.name}/infer"
    # b"\xb2" is "²" as the server reads headers (latin-1): str.isdigit() takes it, int() not
    for value in (b"\xb2", "\u0663\u0662".encode(), b"-1", b"12x"):
        answer = httpx.post(
            url, content=body, headers={**headers, "Inference-Header-Content-Length": value}
        )
        assert answer.status_code == 400 and "Inference-Header-Content-Length" in answer.text


def test_a_client_leaving_mid_body_is_recorded_499_as_on_predict(limited):
    before = limited.metrics()
    infer = f"/v2/models/{limited.model.name}/infer"
    for path in (infer, "/predict", "/v2/repository/index"):
        with socket.create_connection(limited.url.removeprefix("http://").split(":")) as sock:
            # a declared length within every route's limit (the repository's is 64 KiB)
            head = f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 60000\r\n\r\n"
            sock.sendall(head.encode() + b"{" * 1000)
            time.sleep(0.2)  # the route is reading the body when the client goes
    labels = {**INFER_REST, "status": "499"}
    index = {"protocol": "v2", "endpoint": "/v2/repository/index", "status": "499"}

    def settled() -> bool:
        after = limited.metrics()
        return all(
            metric(after, "ase_requests_total", **wanted)
            > metric(before, "ase_requests_total", **wanted)
            for wanted in (labels, index)
        )

    give_up = time.monotonic() + 30
    while not settled() and time.monotonic() < give_up:
        time.sleep(0.1)
    after = limited.metrics()
    assert metric(after, "ase_requests_total", **labels) == 1 + metric(
        before, "ase_requests_total", **labels
    )
    for status in ("500", "499"):  # no 500 on V2, and /predict's 499 as before
        native = metric(after, "ase_requests_total", **PREDICT, status=status)
        assert native - metric(before, "ase_requests_total", **PREDICT, status=status) == (
            status == "499"
        )
    for endpoint in (INFER_REST, {**index, "status": "500"}):
        labelled = {**endpoint, "status": "500"}
        assert metric(after, "ase_requests_total", **labelled) == metric(
            before, "ase_requests_total", **labelled
        )
    assert metric(after, "ase_requests_total", **index) == 1 + metric(
        before, "ase_requests_total", **index
    )
