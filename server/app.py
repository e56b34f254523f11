"""The HTTP app: ``create_app(settings)`` builds it; its lifespan loads, warms and drains models.

Start-up (server/model_control.py, server/state.py): find the repository's models, and for each
version served open its ORT sessions, start its batcher and warm it up, in the background
(``/readyz`` answers 503 until every one is done), serve. On shutdown (SIGTERM) uvicorn stops
accepting connections and waits for requests in flight; the lifespan then drains every batcher.
Routes live beside their handlers in server/routes/.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from server.errors import Unauthorized
from server.metrics import mark_worker_dead
from server.model_control import ModelControl
from server.routes import native, ops, repository, v2
from server.routes.errors import add_error_handlers, error_response
from server.routes.ops import SERVED
from server.settings import Settings
from server.v2 import openapi as v2_openapi
from server.v2 import serving

log = logging.getLogger("server.app")
# every front door's routes (server/routes/)
ROUTERS = (ops.router, native.router, v2.router, repository.router)
ENDPOINTS = ("/predict", "/healthz", "/readyz", "/v1/models", "/metrics", "/")
OPEN_PATHS = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")  # probes: no key


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="ASE multi-task dense prediction",
        description="One image in, up to five dense maps out, from one forward pass.",
        version="1",
        lifespan=_lifespan(settings),
    )
    app.state.server = None
    app.state.warming = None
    app.state.settings = settings
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if (ops.STATIC_DIR / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=ops.STATIC_DIR), name="static")
    app.add_middleware(_AccessMiddleware, settings=settings)
    app.add_middleware(_MetricsMiddleware)  # outermost: counts 401s too
    app.openapi = _openapi_for_model(app)
    return app


def _openapi_for_model(app: FastAPI) -> Callable[[], dict]:
    """``app.openapi`` with the served models' names (task names, model names and versions, V2
    outputs) patched in, once the lifespan has loaded them; before that, the generic document.
    Built again whenever what is served changes."""
    generic = app.openapi

    def openapi() -> dict:
        control: ModelControl | None = app.state.server
        if control is None or not control.serving:
            return generic()
        built = getattr(app.state, "model_openapi", None)
        if built is None or built[0] != control.generation:
            document = copy.deepcopy(generic())
            models = [state.model for state in control.all_served()]
            native.describe_model(document, models)
            v2_openapi.describe_model(document, models)
            repository.describe_control(document, control)
            app.state.model_openapi = (control.generation, document)
        return app.state.model_openapi[1]

    return openapi


def create_app_from_env() -> FastAPI:
    """Factory for worker processes (``--workers N``): settings travel as ``ASE_*`` variables."""
    return create_app(Settings())


def _lifespan(settings: Settings):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        control = await asyncio.to_thread(ModelControl, settings)
        app.state.server = control
        grpc_server = None if settings.grpc_port is None else await serving.start_grpc(control)
        warming = asyncio.create_task(_start_models(control))
        app.state.warming = warming  # a Ray Serve replica's first health check awaits it
        try:
            yield
        finally:
            warming.cancel()
            if grpc_server is not None:  # no new calls; those in flight finish first
                await grpc_server.stop(settings.shutdown_timeout_s)
            await control.stop(settings.shutdown_timeout_s)
            mark_worker_dead(os.getpid())
            log.info("drained and stopped")

    return lifespan


async def _start_models(control: ModelControl) -> None:
    failures = await control.start()
    if control.settings.model_control_mode == "none" and (failures or not control.serving):
        # Nothing can change what this server serves: a model that cannot load will never
        # serve, so say why and exit rather than run without it (Triton's exit-on-error).
        # Nothing was accepted yet, so nothing is lost.
        why = "; ".join(failures) or f"no model found in {control.repository.describe()}"
        log.critical("a model cannot serve: %s", why)
        os._exit(3)
    served = ", ".join(f"{s.name} {s.version}" for s in control.all_served())
    log.info("ready: %s", served or "no model loaded yet")


class _AccessMiddleware:
    """Optional API key (``X-API-Key`` or ``Authorization: Bearer``), compared in constant time.

    The probes stay open; so do the page and its static files, which carry no data and ask
    the user for the key themselves.
    """

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        key = settings.api_key
        self.key = key.get_secret_value().encode() if key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.key is None or _is_open(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key") or _bearer(headers.get(b"authorization", b""))
        if hmac.compare_digest(given or b"", self.key):
            return await self.app(scope, receive, send)
        error = Unauthorized("unauthorized", "missing or wrong API key: send it in X-API-Key")
        response = error_response(error, scope["path"])
        response.headers["WWW-Authenticate"] = "ApiKey"
        await response(scope, receive, send)


def _is_open(path: str) -> bool:
    return (
        path in OPEN_PATHS
        or path in ("/", "/v1/samples")
        or path.startswith(("/static/", "/samples/"))
    )


def _bearer(value: bytes) -> bytes | None:
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


class _MetricsMiddleware:
    """``ase_requests_total`` and ``ase_request_duration_seconds`` for every HTTP request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        served = scope.setdefault(SERVED, [])  # the versions the request chose (routes/ops.py)

        async def send_and_record(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            control: ModelControl | None = scope["app"].state.server
            if control is not None:
                protocol, endpoint = endpoint_label(scope["path"])
                seconds = time.perf_counter() - started
                model = (served[0].name, served[0].version) if served else ("", "")
                control.metrics.observe_request(protocol, endpoint, status[0], seconds, *model)
            for state in served:  # the response is out: the version may be unloaded now
                state.release()


def endpoint_label(path: str) -> tuple[str, str]:
    """(protocol, endpoint) for the metrics: bounded values, whatever paths clients send."""
    if path == "/v2":
        return "v2", "/v2"
    if not path.startswith("/v2/"):
        return "native", path if path in ENDPOINTS else "other"
    parts = path.split("/")[2:]  # health/<probe> | models/<name>[/versions/<v>][/ready|/infer]
    if parts[0] == "repository":
        return "v2", repository.endpoint_label(parts[1:])
    if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
        return "v2", f"/v2/health/{parts[1]}"
    if parts[0] != "models" or len(parts) < 2:
        return "v2", "other"
    rest = parts[4:] if len(parts) >= 4 and parts[2] == "versions" else parts[2:]
    if not rest:
        return "v2", "/v2/models/{model}"
    if rest in (["ready"], ["infer"]):
        return "v2", f"/v2/models/{{model}}/{rest[0]}"
    return "v2", "other"
