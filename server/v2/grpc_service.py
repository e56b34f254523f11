"""``inference.GRPCInferenceService`` on grpc.aio: the six RPCs of the protocol (ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) and Triton's model
repository extension (RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload), over the
functions of ``grpc_wire``, ``interface`` and ``repository``. The models come in as ``Models``
(which version a request names, the repository's control) and the request path as one
coroutine, ``infer`` (the version and a checked :class:`InferRequest` -> one
:class:`FrameResult` per frame), so that this module knows nothing of batching or the model run.
The other RPCs of tritonclient's service (shared memory, statistics, ...) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from server.budget import Hold
from server.modeldir import ModelDir
from server.v2 import grpc_wire, interface, repository
from server.v2.errors import V2Error, from_serving_error, unavailable
from server.v2.interface import FrameResult, InferRequest


class Served(Protocol):
    """A model version a request was given: its model directory, served as it names."""

    model: ModelDir


class Models(Protocol):
    """The models behind the service (server/model_control.py's ``ModelControl``)."""

    def resolve(self, name: str, version: str) -> Served: ...  # 404 / 503 as ServingError
    def is_ready(self, name: str, version: str) -> bool: ...
    def versions(self, name: str) -> list[str]: ...
    async def index(self, ready_only: bool) -> list[dict[str, str]]: ...
    async def load(self, name: str) -> None: ...
    async def unload(self, name: str) -> None: ...


# The request path: the version chosen, a checked request and the call's context -> one
# FrameResult per frame.
Infer = Callable[[Any, InferRequest, grpc.aio.ServicerContext], Awaitable[Sequence[FrameResult]]]
# Each answered call, for the metrics: (RPC name, the HTTP status of the protocol's error
# table, or 200; seconds; the model and version that answered, or empty strings).
Observe = Callable[[str, int, float, str, str], None]
# Errors of the request path -> the protocol's (default: server/errors.py's ServingError).
Translate = Callable[[Exception], V2Error | None]
# A fresh memory hold (server/budget.py) for one call's request.
NewHold = Callable[[], Hold]
PARSE_COPIES = 3
"""A ModelInfer request is held three times while it is read: the message's bytes, the parsed
message, and each input's data taken from it."""


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """ServerLive and ServerReady are probes, open like /healthz; the rest need the API key
    (metadata ``x-api-key`` or ``authorization: Bearer ...``) when one is set."""

    def __init__(
        self,
        models: Models,
        server_version: str,
        infer: Infer,
        is_ready: Callable[[], bool],
        api_key: str | None = None,
        translate: Translate = from_serving_error,
        observe: Observe | None = None,
        new_hold: NewHold | None = None,
    ) -> None:
        self.models, self.server_version = models, server_version
        self.infer, self.is_ready, self.translate = infer, is_ready, translate
        self.api_key = api_key.encode() if api_key else None
        self.observe, self.new_hold = observe, new_hold

    async def ServerLive(self, request, context):
        async with self._answering(context, "ServerLive", open_call=True):
            return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        async with self._answering(context, "ServerReady", open_call=True):
            return service_pb2.ServerReadyResponse(ready=self.is_ready())

    async def ModelReady(self, request, context):
        async with self._answering(context, "ModelReady"):
            ready = self.models.is_ready(request.name, request.version)
            return service_pb2.ModelReadyResponse(ready=ready and self.is_ready())

    async def ServerMetadata(self, request, context):
        async with self._answering(context, "ServerMetadata"):
            document = interface.server_metadata(self.server_version)
            return grpc_wire.server_metadata(document)

    async def ModelMetadata(self, request, context):
        async with self._answering(context, "ModelMetadata"):
            model = self.models.resolve(request.name, request.version).model
            document = interface.model_metadata(model, self.models.versions(request.name))
            return grpc_wire.model_metadata(document)

    async def ModelInfer(self, request, context):
        async with self._answering(context, "ModelInfer") as answering, self._holding(request):
            if not self.is_ready():
                raise unavailable("the model is loading or the server is shutting down")
            wire = await grpc_wire.read_infer_request(request, interface.check_input)
            served = self.models.resolve(wire.model_name, wire.model_version)
            answering.model = served.model
            checked = interface.infer_request(wire, served.model)
            frames = await self.infer(served, checked, context)
            response = interface.infer_response(checked, served.model, frames)
            return grpc_wire.infer_response_bytes(response)  # serialised (create_server)

    @contextlib.asynccontextmanager
    async def _holding(self, request: bytes | object) -> AsyncIterator[None]:
        """The request's copies held from the memory budget (``new_hold``) for the call."""
        hold = self.new_hold() if self.new_hold and isinstance(request, bytes) else None
        try:
            if hold is not None:
                hold.grow_to(PARSE_COPIES * len(request))
            yield
        finally:
            if hold is not None:
                hold.release()

    async def RepositoryIndex(self, request, context):
        async with self._answering(context, "RepositoryIndex"):
            repository.check_repository_name(request.repository_name)
            rows = await self.models.index(request.ready)
            return service_pb2.RepositoryIndexResponse(
                models=[service_pb2.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
            )

    async def RepositoryModelLoad(self, request, context):
        async with self._answering(context, "RepositoryModelLoad"):
            repository.check_repository_name(request.repository_name)
            repository.check_load_parameters(grpc_wire.parameters(request.parameters))
            await self.models.load(request.model_name)
            return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        async with self._answering(context, "RepositoryModelUnload"):
            repository.check_repository_name(request.repository_name)
            parameters = grpc_wire.parameters(request.parameters)
            extra = sorted(set(parameters) - set(repository.UNLOAD_PARAMETERS))
            if extra:
                raise V2Error(400, f"unknown unload parameter(s) {extra}")
            await self.models.unload(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()

    def _answering(
        self, context: grpc.aio.ServicerContext, method: str, open_call: bool = False
    ) -> _Answering:
        return _Answering(self, context, method, open_call)

    def authorised(self, context: grpc.aio.ServicerContext) -> bool:
        if self.api_key is None:
            return True
        metadata = {key: value for key, value in context.invocation_metadata()}
        given = metadata.get("x-api-key") or _bearer(metadata.get("authorization", ""))
        return hmac.compare_digest((given or "").encode(), self.api_key)


class _Answering:
    """Checks the API key on the way in (probes are open); on the way out turns a protocol
    error (or one the service's ``translate`` knows) into the call's status, message and
    trailing metadata, and tells ``observe`` how the call ended."""

    def __init__(
        self,
        service: InferenceService,
        context: grpc.aio.ServicerContext,
        method: str,
        open_call: bool,
    ) -> None:
        self.service, self.context, self.method, self.open_call = (
            service,
            context,
            method,
            open_call,
        )
        self.started = time.perf_counter()
        self.model: ModelDir | None = None  # the version that answered, for the metrics

    async def __aenter__(self) -> _Answering:
        if not self.open_call and not self.service.authorised(self.context):
            self._observed(401)
            raise V2Error(401, "missing or wrong API key: send x-api-key")  # _answered
        return self

    async def __aexit__(self, kind, error, traceback) -> bool:
        if error is None:
            self._observed(200)
            return False
        if not isinstance(error, Exception):  # cancelled: the client left
            self._observed(499)
            return False
        failure = error if isinstance(error, V2Error) else self.service.translate(error)
        if failure is None:
            self._observed(500)
            return False  # grpc reports it as UNKNOWN and logs it
        self._observed(failure.status)
        set_status(self.context, failure)
        return True  # answered: the call returns None, which grpc drops for a non-OK status

    def _observed(self, status: int) -> None:
        if self.service.observe is not None:
            model = (self.model.name, self.model.version) if self.model else ("", "")
            seconds = time.perf_counter() - self.started
            self.service.observe(self.method, status, seconds, *model)


def set_status(context: grpc.aio.ServicerContext, failure: V2Error) -> None:
    """The call's status, message and trailing metadata from ``failure``; its traceback let go.

    Not ``context.abort``: the AbortError it raises is kept by the call's state, which the
    call's frame holds, and its traceback holds that frame: a reference cycle that kept each
    failed request's message (hundreds of MB) until the cyclic collector happened to run."""
    context.set_code(grpc.StatusCode[failure.grpc_code])
    context.set_details(failure.message)
    context.set_trailing_metadata(grpc_wire.error_metadata(failure))
    failure.__traceback__ = None


def _answered(behaviour: Callable) -> Callable:
    """An RPC whose error escaped its ``_Answering`` (the API key refused on the way in) is
    answered as ``__aexit__`` answers the others."""

    async def call(request, context):
        try:
            return await behaviour(request, context)
        except V2Error as failure:
            set_status(context, failure)
            return None

    return call


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def create_server(
    service: InferenceService, host: str, port: int, max_message_bytes: int | None = None
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the service on ``host:port`` (0: any free port): responses up to
    ``grpc_wire.MAX_MESSAGE_BYTES`` (camera-size maps), requests up to ``max_message_bytes``
    (the server passes its body limit); returns it (not started) and the port bound."""
    options = grpc_wire.channel_options(
        grpc_wire.MAX_MESSAGE_BYTES, max_message_bytes or grpc_wire.MAX_MESSAGE_BYTES
    )
    # The thread pool runs the base class's plain (non-async) UNIMPLEMENTED methods.
    server = grpc.aio.server(migration_thread_pool=ThreadPoolExecutor(1), options=options)
    registrar = _Registrar()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, registrar)
    handlers = {  # every RPC's refusals answered without context.abort (set_status)
        name: handler._replace(unary_unary=_answered(handler.unary_unary))
        if handler.unary_unary is not None
        else handler
        for name, handler in registrar.handlers.items()
    }
    # ModelInfer takes the message's bytes (parsed in a thread when large: grpc_wire) and
    # answers bytes serialised already.
    handlers["ModelInfer"] = handlers["ModelInfer"]._replace(
        request_deserializer=None, response_serializer=grpc_wire.serialize_infer_response
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    return server, server.add_insecure_port(f"{host}:{port}")


SERVICE = "inference.GRPCInferenceService"


class _Registrar:
    """Stands in for the server in the generated registration, to take its method handlers."""

    handlers: dict

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        assert service == SERVICE, service
        self.handlers = handlers
