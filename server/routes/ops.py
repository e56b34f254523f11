"""Probes, metrics and the page: ``/healthz``, ``/readyz``, ``/metrics``, ``/``, samples."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response

from server.errors import NotFound, Unavailable
from server.protocol import HealthResponse, error_responses
from server.state import ServerState

router = APIRouter()
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def ready_state(request: Request, need_warm: bool = True) -> ServerState:
    """The running server's state; 503 while it loads (or, ``need_warm``, warms up)."""
    return app_state(request.app, need_warm)


def app_state(app: FastAPI, need_warm: bool = True) -> ServerState:
    """``ready_state`` of an app, for callers outside a request (Ray Serve's health check)."""
    state: ServerState | None = app.state.server
    if state is None or (need_warm and not state.ready):
        raise Unavailable("not_ready", "the model is loading or the server is shutting down", 1)
    return state


@router.get("/healthz", response_model=HealthResponse, summary="liveness")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", response_model=HealthResponse, responses=error_responses(503))
async def readyz(request: Request) -> dict:
    ready_state(request)
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses=error_responses(401, 503),
    summary="Prometheus exposition",
)
async def metrics(request: Request) -> Response:
    state = ready_state(request, need_warm=False)
    state.batcher.flush_router()  # every answered batch, to the last one
    body, content_type = state.metrics.render()
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
