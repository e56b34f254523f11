"""``python -m server [--flag value ...]``: every setting is a flag; flags override ``ASE_*``.

``--ray ADDRESS`` serves the same app as Ray Serve replicas on the Ray cluster at ADDRESS
(server/ray_app.py) instead of here; ``python -m server predict-dataset ...`` predicts a
folder of images (server/batch.py). Settings and the model directory are checked here,
before anything starts, so a bad value or a missing/corrupt model exits at once with a message
(status 2), not on the first request.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

from server.cli import add_setting_flags, checked_settings
from server.limits import ConnectionLimits
from server.settings import Settings

log = logging.getLogger("server")
PREDICT_DATASET = "predict-dataset"


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    add_setting_flags(parser)
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="serve as Ray Serve replicas on this Ray cluster (e.g. auto, 10.0.0.5:6379)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [PREDICT_DATASET]:
        from server.batch_cli import main as predict_dataset

        return predict_dataset(argv[1:])
    args = parse_flags(argv)
    settings = checked_settings(args)
    if settings is None:
        return 2
    if args.ray is not None:
        from server.ray_app import serve_on_ray

        return serve_on_ray(settings, args.ray)
    if settings.workers > 1:
        _prepare_multiprocess_metrics()
    return _serve(settings)


def _prepare_multiprocess_metrics() -> None:
    """Workers share metrics through files; the directory must exist, empty, before they import
    prometheus_client (it reads the variable at import)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ase-metrics-")
    log.info("multiprocess metrics in %s", os.environ["PROMETHEUS_MULTIPROC_DIR"])


def uvicorn_options(settings: Settings) -> dict:
    """What every uvicorn run gets. The drain timeout stays a float: uvicorn waits on it with
    ``asyncio.wait_for``, and ``int(0.5)`` would be 0, cancelling requests in flight at once.
    The event loop and HTTP parser are named, not "auto": the full install has uvloop and
    httptools (Ray's uvicorn[standard]), the serving install and the image do not, and the
    tests must run the server the image runs. The parser is h11 with the header, body and send
    deadlines and the connection cap uvicorn lacks (server/limits.py)."""
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        max_connections=settings.max_connections,
    )
    return dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        loop="asyncio",
        http=limits.protocol(),
    )


def _serve(settings: Settings) -> int:
    import uvicorn  # after the metrics directory is set: workers inherit the environment

    common = uvicorn_options(settings)
    if settings.workers > 1:
        os.environ.update(settings.to_env())
        uvicorn.run(
            "server.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
    else:
        from server.app import create_app

        uvicorn.run(create_app(settings), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
