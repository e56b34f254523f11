"""The server as a Ray Serve application: ``serve run server.ray_app:app`` (settings from
``ASE_*``), or ``python -m server --ray ADDRESS [--flag value ...]``.

Each replica is one whole server: ``__serve_build_asgi_app__`` builds the same FastAPI app as
``python -m server`` (``server.app.create_app``: every router in ``ROUTERS``, the middlewares,
the error handlers), and Serve runs its lifespan once in that replica, so each replica loads
its own models (per version: ORT sessions, batcher, pipeline; one memory budget and render
pool) and batches the requests Serve routes to it. Which models: the repository's, as the
plain server's settings say (``--models NAME`` serves only that one, ``--default-model`` picks
the one ``/predict`` runs without ``?model=``); in ``none`` or ``poll`` mode only, as a load
call through Serve's proxy would reach one replica. Serve's proxy takes HTTP on each node and
routes each request to a replica; the autoscaler adds and removes replicas on the requests they
hold (``target_ongoing_requests``). A replica counts as started once its first health check has
passed, which waits for the warm-up; later checks are the ``/readyz`` probe's test. Metrics:
server/ray_metrics.py.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from server.app import create_app
from server.ray_metrics import RegistryMirror
from server.routes.ops import app_state
from server.settings import Settings

log = logging.getLogger("server.ray_app")

APP_NAME = "ase"
METRICS_EXPORT_S = 1.0
"""How often a replica copies its metrics to Ray (Ray's agent exports on its own interval)."""
# Serve's defaults wait 30 s before adding and 600 s before removing a replica; a replica
# here is slow to add (model load, warm-up) and cheap to keep, so lulls keep it for 5 minutes.
AUTOSCALING_DELAYS = {"upscale_delay_s": 10.0, "downscale_delay_s": 300.0}


@serve.deployment(name="ASEServer")
@serve.ingress()
class ASEServer:
    """One replica. Options (resources, autoscaling) come from ``deployment_options``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._mirror_task: asyncio.Task | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._settings)

    async def check_health(self) -> None:
        """Serve calls this every ``health_check_period_s``; raising marks the replica
        unhealthy and Serve replaces it. The first call, before any request is routed here,
        waits for the warm-up."""
        warming = self.app.state.warming
        if warming is not None and not warming.done():
            await asyncio.shield(warming)
        control = app_state(self.app)  # raises Unavailable: loading, or shutting down
        if self._mirror_task is None:
            replica = serve.get_replica_context().replica_id.unique_id
            mirror = RegistryMirror(control.metrics.registry, replica)
            self._mirror_task = asyncio.create_task(_export_metrics(control, mirror))

    async def __del__(self) -> None:
        if self._mirror_task is not None:
            self._mirror_task.cancel()


async def _export_metrics(control, mirror: RegistryMirror) -> None:
    """Every ``METRICS_EXPORT_S``: the batches' router statistics into the counters (on the
    event loop, as ``/metrics`` does), then the registry to Ray (in a thread)."""
    while True:
        control.flush_router()
        try:
            await asyncio.to_thread(mirror.export)
        except Exception:  # a metrics hiccup must not stop the exports that follow
            log.exception("exporting metrics to Ray failed")
        await asyncio.sleep(METRICS_EXPORT_S)


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Serve's options for the replicas, from the settings."""
    return {
        "ray_actor_options": {"num_cpus": settings.ray_num_cpus, "num_gpus": settings.ray_num_gpus},
        "autoscaling_config": {
            "min_replicas": settings.ray_min_replicas,
            "initial_replicas": max(1, settings.ray_min_replicas),
            "max_replicas": settings.ray_max_replicas,
            "target_ongoing_requests": settings.ray_target_ongoing_requests,
            **AUTOSCALING_DELAYS,
        },
        "max_ongoing_requests": settings.ray_max_ongoing_requests,
        "max_queued_requests": settings.max_queue,
        "graceful_shutdown_timeout_s": settings.shutdown_timeout_s,
    }


def serve_on_ray(settings: Settings, address: str) -> int:
    """``python -m server --ray ADDRESS``: the application on that cluster, its HTTP proxies on
    ``host:port``, until SIGINT or SIGTERM; then the application is deleted (the cluster and
    Serve's proxies stay)."""
    import ray

    if settings.model_control_mode == "explicit":
        log.error(
            "--ray serves in model control mode none or poll: a load call would reach one replica"
        )
        return 2
    ray.init(address=address, logging_level=settings.log_level.upper())
    serve.start(http_options={"host": settings.host, "port": settings.port})
    stop = threading.Event()  # set by a signal, even one that comes while the app deploys
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    log.info("serving %s on Ray at http://%s:%d", APP_NAME, settings.host, settings.port)
    stop.wait()
    serve.delete(APP_NAME)
    return 0


def build_app(settings: Settings, **overrides: Any) -> Application:
    """The Serve application; ``overrides`` replace deployment options (tests pin replicas to
    nodes with custom resources this way)."""
    options = {**deployment_options(settings), **overrides}
    return ASEServer.options(**options).bind(settings.per_ray_actor())


app = build_app(Settings())
