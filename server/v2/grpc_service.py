"""``inference.GRPCInferenceService`` on grpc.aio: the six RPCs of the protocol (ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer), over the functions of
``grpc_wire`` and ``interface``. The request path comes in as one coroutine, ``infer``
(a checked :class:`InferRequest` -> one :class:`FrameResult` per frame), so that this module
knows nothing of batching or the model run. The other RPCs of tritonclient's service (model
repository, shared memory, statistics, ...) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from server.modeldir import ModelDir
from server.v2 import grpc_wire, interface
from server.v2.errors import V2Error, from_serving_error, unavailable
from server.v2.interface import FrameResult, InferRequest

Infer = Callable[[InferRequest], Awaitable[Sequence[FrameResult]]]
# Errors of the request path -> the protocol's (default: server/errors.py's ServingError).
Translate = Callable[[Exception], V2Error | None]


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """ServerLive and ServerReady are probes, open like /healthz; the rest need the API key
    (metadata ``x-api-key`` or ``authorization: Bearer ...``) when one is set."""

    def __init__(
        self,
        model: ModelDir,
        server_version: str,
        infer: Infer,
        is_ready: Callable[[], bool],
        api_key: str | None = None,
        translate: Translate = from_serving_error,
    ) -> None:
        self.model, self.server_version = model, server_version
        self.infer, self.is_ready, self.translate = infer, is_ready, translate
        self.api_key = api_key.encode() if api_key else None

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.is_ready())

    async def ModelReady(self, request, context):
        async with self._answering(context):
            interface.check_model(self.model, request.name, request.version)
            return service_pb2.ModelReadyResponse(ready=self.is_ready())

    async def ServerMetadata(self, request, context):
        async with self._answering(context):
            document = interface.server_metadata(self.server_version)
            return grpc_wire.server_metadata(document)

    async def ModelMetadata(self, request, context):
        async with self._answering(context):
            interface.check_model(self.model, request.name, request.version)
            return grpc_wire.model_metadata(interface.model_metadata(self.model))

    async def ModelInfer(self, request, context):
        async with self._answering(context):
            if not self.is_ready():
                raise unavailable("the model is loading or the server is shutting down")
            checked = interface.infer_request(grpc_wire.from_infer_request(request), self.model)
            frames = await self.infer(checked)
            response = interface.infer_response(checked, self.model, frames)
            return grpc_wire.to_infer_response(response)

    def _answering(self, context: grpc.aio.ServicerContext) -> _Answering:
        return _Answering(self, context)

    def authorised(self, context: grpc.aio.ServicerContext) -> bool:
        if self.api_key is None:
            return True
        metadata = {key: value for key, value in context.invocation_metadata()}
        given = metadata.get("x-api-key") or _bearer(metadata.get("authorization", ""))
        return hmac.compare_digest((given or "").encode(), self.api_key)


class _Answering:
    """Checks the API key on the way in; on the way out turns a protocol error (or one the
    service's ``translate`` knows) into the call's status, message and trailing metadata."""

    def __init__(self, service: InferenceService, context: grpc.aio.ServicerContext) -> None:
        self.service, self.context = service, context

    async def __aenter__(self) -> None:
        if not self.service.authorised(self.context):
            await self.context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key: send x-api-key"
            )

    async def __aexit__(self, kind, error, traceback) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        failure = error if isinstance(error, V2Error) else self.service.translate(error)
        if failure is None:
            return False  # grpc reports it as UNKNOWN and logs it
        await self.context.abort(
            grpc.StatusCode[failure.grpc_code], failure.message, grpc_wire.error_metadata(failure)
        )
        return False  # abort raises; never reached


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def create_server(
    service: InferenceService, host: str, port: int, max_message_bytes: int | None = None
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the service on ``host:port`` (0: any free port), message limits
    lifted for camera-size maps; returns it (not started) and the port bound."""
    options = grpc_wire.channel_options(max_message_bytes or grpc_wire.MAX_MESSAGE_BYTES)
    # The thread pool runs the base class's plain (non-async) UNIMPLEMENTED methods.
    server = grpc.aio.server(migration_thread_pool=ThreadPoolExecutor(1), options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    return server, server.add_insecure_port(f"{host}:{port}")
