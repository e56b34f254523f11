"""Probes, metrics and the page: ``/healthz``, ``/readyz``, ``/metrics``, ``/``, samples."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response

from server.errors import NotFound, Unavailable
from server.model_control import ModelControl
from server.protocol import HealthResponse, error_responses
from server.state import ServerState

router = APIRouter()
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SERVED = "ase.served"
"""ASGI scope key: the model versions a request chose, held until its response is out (the
metrics middleware, server/app.py, labels the request with the first and releases them)."""


def ready_state(
    request: Request,
    need_warm: bool = True,
    model: str | None = None,
    version: str | None = None,
) -> ServerState:
    """The ready version of ``model`` (default: the default model) a request is served by,
    held until its response has been sent; 503 while the server starts (``need_warm``: until
    every model has loaded), 404 naming what is served for an unknown model or version."""
    state = app_state(request.app, need_warm).resolve(model, version)
    served = request.scope.get(SERVED)
    if served is not None:
        state.acquire()
        served.append(state)
    return state


def app_state(app: FastAPI, need_warm: bool = True) -> ModelControl:
    """The server's models, for callers with or without a request (Ray Serve's health check);
    503 while they load (``need_warm``) or the server is shutting down."""
    control: ModelControl | None = app.state.server
    if control is None or (need_warm and not control.ready):
        raise Unavailable("not_ready", "the models are loading or the server is shutting down", 1)
    return control


@router.get("/healthz", response_model=HealthResponse, summary="liveness")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", response_model=HealthResponse, responses=error_responses(503))
async def readyz(request: Request) -> dict:
    app_state(request.app)
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses=error_responses(401, 503),
    summary="Prometheus exposition",
)
async def metrics(request: Request) -> Response:
    control = app_state(request.app, need_warm=False)
    control.flush_router()  # every answered batch, to the last one
    body, content_type = control.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
async def page() -> Response:
    if not (STATIC_DIR / "index.html").is_file():
        raise NotFound("not_found", "no page is installed; see /docs for the API")
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/v1/samples", summary="sample images the page offers")
async def samples(request: Request) -> dict:
    names = sample_names(request.app.state.settings.samples_dir)
    return {"samples": [f"samples/{name}" for name in names]}


@router.get("/samples/{name}", include_in_schema=False)
async def sample(request: Request, name: str) -> Response:
    folder = request.app.state.settings.samples_dir
    # Only names from the listing: never a path the client made up.
    if name not in sample_names(folder):
        raise NotFound("not_found", f"no sample image {name!r}")
    return FileResponse(folder / name)


def sample_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES)
