"""The gRPC service on a real grpc.aio server on 127.0.0.1, tritonclient.grpc as the client; the
request path is a stand-in coroutine (random maps of the right shapes), so what is tested is the
service: RPCs, message limits past gRPC's 4 MiB, errors with their codes, the API key."""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from server.v2.errors import unavailable
from server.v2.grpc_service import InferenceService, create_server
from server.v2.grpc_wire import channel_options
from tests.server.v2.helpers import OneModel, demo_model, fake_frames, pixels_input

MODEL = demo_model()
KEY = "s3cret"


class Running:
    """The server's event loop in a thread of its own, so the test's client can block."""

    def __init__(self, service: InferenceService) -> None:
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(service,), daemon=True)
        self.thread.start()
        assert self.started.wait(30)

    def _run(self, service: InferenceService) -> None:
        asyncio.set_event_loop(self.loop)
        self.server, self.port = create_server(service, "127.0.0.1", 0)
        self.loop.run_until_complete(self.server.start())
        self.started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


async def stand_in(served, request, context):
    height, width = (4, 4) if request.pixels is None else request.pixels.shape[1:3]
    if request.id == "full":
        raise unavailable("queue full", retry_after_s=3)
    return fake_frames(request, MODEL, height, width)


@pytest.fixture(scope="module")
def service():
    service = InferenceService(OneModel(MODEL), "0.1.0", stand_in, lambda: True, api_key=KEY)
    running = Running(service)
    yield running
    running.stop()


def client(service) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        f"127.0.0.1:{service.port}", channel_args=channel_options()
    )


def test_probes_are_open_and_the_rest_needs_the_key(service):
    triton = client(service)
    assert triton.is_server_live() and triton.is_server_ready()
    with pytest.raises(InferenceServerException, match="API key") as error:
        triton.get_server_metadata()
    assert error.value.status() == "StatusCode.UNAUTHENTICATED"
    metadata = triton.get_model_metadata(MODEL.name, headers={"x-api-key": KEY})
    assert [o.name for o in metadata.outputs][-2:] == ["expert_tokens", "shared_gate_mass"]
    assert triton.is_model_ready(MODEL.name, headers={"authorization": f"Bearer {KEY}"})


def test_camera_size_frames_pass_the_4_mib_default(service):
    frames = np.zeros((2, 1024, 1024, 3), np.uint8)  # 6 MiB in, 24 MiB of normals out
    outputs = [grpcclient.InferRequestedOutput("normals")]
    result = client(service).infer(
        MODEL.name, [pixels_input(grpcclient, frames)], outputs=outputs, headers={"x-api-key": KEY}
    )
    assert result.as_numpy("normals").shape == (2, 1024, 1024, 3)


def test_errors_carry_codes_and_retry_after(service):
    triton, headers = client(service), {"x-api-key": KEY}
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    with pytest.raises(InferenceServerException) as error:
        triton.infer("other", [pixels_input(grpcclient, frames)], headers=headers)
    assert error.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="unexpected output") as error:
        triton.infer(
            MODEL.name,
            [pixels_input(grpcclient, frames)],
            headers=headers,
            outputs=[grpcclient.InferRequestedOutput("depth")],
        )
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:  # trailing metadata
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        message = service_pb2.ModelInferRequest(model_name=MODEL.name, id="full")
        message.inputs.add(name="pixels", datatype="UINT8", shape=[1, 1, 1, 3])
        message.raw_input_contents.append(b"\x00\x00\x00")
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(message, metadata=(("x-api-key", KEY),))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("retry-after", "3") in tuple(failed.value.trailing_metadata())


def test_repository_rpcs_answer_through_the_models(service):
    triton, headers = client(service), {"x-api-key": KEY}
    index = triton.get_model_repository_index(headers=headers, as_json=True)
    assert index["models"] == [{"name": MODEL.name, "version": "1", "state": "READY"}]
    with pytest.raises(InferenceServerException, match="not allowed") as error:
        triton.load_model(MODEL.name, headers=headers)
    assert error.value.status() == "StatusCode.UNAVAILABLE"
    with pytest.raises(InferenceServerException, match="not supported") as error:
        triton.load_model(MODEL.name, headers=headers, config="{}")
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="API key"):
        triton.unload_model(MODEL.name)


def test_other_rpcs_are_unimplemented(service):
    with pytest.raises(InferenceServerException) as error:
        client(service).get_model_config(MODEL.name, headers={"x-api-key": KEY})
    assert error.value.status() == "StatusCode.UNIMPLEMENTED"
