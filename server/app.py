"""The HTTP app: ``create_app(settings)`` builds it; its lifespan loads, warms and drains the model.

Start-up order: read and check the model directory, open the ORT session on the graph chosen
for the provider actually taken, start the batcher, warm up in the background (``/readyz``
answers 503 until then), serve. On shutdown (SIGTERM) uvicorn stops accepting connections and
waits for requests in flight; the lifespan then drains the batcher.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import predict
from server.batching import Batcher
from server.metrics import ServerMetrics, mark_worker_dead
from server.modeldir import ModelDir, load_model_dir
from server.protocol import (
    ApiError,
    HealthResponse,
    ModelsResponse,
    OutputFormat,
    PredictResponse,
    error_responses,
)
from server.runtime import ModelRuntime
from server.settings import Settings

log = logging.getLogger("server.app")
STATIC_DIR = Path(__file__).parent / "static"
ENDPOINTS = ("/predict", "/healthz", "/readyz", "/v1/models", "/metrics", "/")
OPEN_PATHS = ("/healthz", "/readyz")  # probes never need the API key


@dataclass
class ServerState:
    settings: Settings
    model: ModelDir
    runtime: ModelRuntime
    metrics: ServerMetrics
    batcher: Batcher
    render_pool: ThreadPoolExecutor  # restores and encodes the maps of responses
    ready: bool = False


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="ASE multi-task dense prediction",
        description="One image in, up to five dense maps out, from one forward pass.",
        version="1",
        lifespan=_lifespan(settings),
    )
    app.state.server = None
    app.state.settings = settings
    _add_error_handlers(app)
    _add_routes(app)
    if (STATIC_DIR / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(_AccessMiddleware, settings=settings)
    app.add_middleware(_MetricsMiddleware)  # outermost: counts 401s too
    return app


def create_app_from_env() -> FastAPI:
    """Factory for worker processes (``--workers N``): settings travel as ``ASE_*`` variables."""
    return create_app(Settings())


def _lifespan(settings: Settings):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(_load, settings)
        app.state.server = state
        state.batcher.start()
        warm_up = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            state.ready = False
            warm_up.cancel()
            await state.batcher.stop(settings.shutdown_timeout_s)
            await asyncio.to_thread(state.render_pool.shutdown, True)
            mark_worker_dead(os.getpid())
            log.info("drained and stopped")

    return lifespan


def _load(settings: Settings) -> ServerState:
    model = load_model_dir(settings.model_dir)
    runtime = ModelRuntime(model, settings.provider_list, settings.threads, settings.ort_spin)
    metrics = ServerMetrics(model, runtime.provider)
    batcher = Batcher(
        runtime.run, model, metrics,
        max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
    )  # fmt: skip
    render_pool = ThreadPoolExecutor(
        settings.render_threads or os.cpu_count() or 1, thread_name_prefix="ase-render"
    )
    return ServerState(settings, model, runtime, metrics, batcher, render_pool)


async def _warm_up(state: ServerState) -> None:
    try:
        seconds = await asyncio.to_thread(state.runtime.warm_up, state.settings.max_batch)
    except Exception:
        # A model that cannot run a full batch will never serve: say why and exit, rather than
        # answer /readyz 503 forever. Nothing was accepted yet, so nothing is lost.
        log.critical("warm-up failed; the model cannot serve", exc_info=True)
        os._exit(3)
    state.ready = True
    log.info("warmed up in %.3f s; ready", seconds)


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=HealthResponse, summary="liveness")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", response_model=HealthResponse, responses=error_responses(503))
    async def readyz(request: Request) -> dict:
        _ready_state(request)
        return {"status": "ready"}

    @app.get("/v1/models", response_model=ModelsResponse, responses=error_responses(401, 503))
    async def models(request: Request) -> dict:
        return _describe(_ready_state(request, need_warm=False))

    @app.get("/metrics", responses=error_responses(401, 503), summary="Prometheus exposition")
    async def metrics(request: Request) -> Response:
        state = _ready_state(request, need_warm=False)
        state.batcher.flush_router()  # every answered batch, to the last one
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        if not (STATIC_DIR / "index.html").is_file():
            raise ApiError(404, "not_found", "no page is installed; see /docs for the API")
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/v1/samples", summary="sample images the page offers")
    async def samples(request: Request) -> dict:
        names = _sample_names(request.app.state.settings.samples_dir)
        return {"samples": [f"samples/{name}" for name in names]}

    @app.get("/samples/{name}", include_in_schema=False)
    async def sample(request: Request, name: str) -> Response:
        folder = request.app.state.settings.samples_dir
        # Only names from the listing: never a path the client made up.
        if name not in _sample_names(folder):
            raise ApiError(404, "not_found", f"no sample image {name!r}")
        return FileResponse(folder / name)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={
            **predict.BINARY_RESPONSES,
            **error_responses(400, 401, 413, 415, 422, 503, 504),
        },
        openapi_extra=predict.REQUEST_BODY,
        summary="dense maps for one image",
    )
    async def predict_route(
        request: Request,
        tasks: Annotated[str | None, Query(description=predict.TASKS_HELP)] = None,
        format: Annotated[OutputFormat, Query(description=predict.FORMAT_HELP)] = "json",
        visualize: Annotated[bool, Query(description="colourised maps over the image")] = False,
        alpha: Annotated[float, Query(ge=0.0, le=1.0, description="overlay opacity")] = 0.5,
        router_stats: Annotated[bool, Query(description="per-task expert load")] = False,
    ) -> Response:
        options = predict.Options(format, visualize, alpha, router_stats)
        return await predict.handle(request, _ready_state(request), tasks, options)


SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _sample_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES)


def _ready_state(request: Request, need_warm: bool = True) -> ServerState:
    state: ServerState | None = request.app.state.server
    if state is None or (need_warm and not state.ready):
        raise ApiError(503, "not_ready", "the model is loading or the server is shutting down",
                       headers={"Retry-After": "1"})  # fmt: skip
    return state


def _describe(state: ServerState) -> dict:
    model = state.model
    return {
        "name": model.name,
        "version": model.version,
        "tasks": [
            {
                "name": t.name,
                "id": t.id,
                "kind": t.kind,
                "channels": t.channels,
                "classes": list(t.classes) if t.classes else None,
                "palette": [list(c) for c in t.palette] if t.palette else None,
            }
            for t in model.tasks
        ],  # fmt: skip
        "input": model.input.model_dump(mode="json"),
        "adapters": model.adapters.model_dump(mode="json"),
        "providers": state.runtime.providers,
        "graph": state.runtime.graph.name,
        "max_batch": state.settings.max_batch,
    }


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in error.errors() if e.get("loc"))
        return JSONResponse(ApiError(422, "invalid_parameter", problems).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        body = ApiError(error.status_code, code, f"{request.method} {request.url.path}: "
                        f"{error.detail}").body()  # fmt: skip
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        body = ApiError(500, "internal_error", "unexpected server error; it has been logged")
        return JSONResponse(body.body(), status_code=500)


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
        error = ApiError(401, "unauthorized", "missing or wrong API key: send it in X-API-Key")
        response = JSONResponse(
            error.body(), status_code=401, headers={"WWW-Authenticate": "ApiKey"}
        )
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

        async def send_and_record(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            state: ServerState | None = scope["app"].state.server
            if state is not None:
                endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
                state.metrics.requests.labels(endpoint, str(status[0])).inc()
                state.metrics.request_duration.labels(endpoint).observe(
                    time.perf_counter() - started
                )
