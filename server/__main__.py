"""``python -m server [--flag value ...]``: every setting is a flag; flags override ``ASE_*``.

Settings and the model directory are checked here, before uvicorn starts, so a bad value or a
missing/corrupt model exits at once with a message (status 2), not on the first request.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

from pydantic import ValidationError

from server.modeldir import ModelDirError, load_model_dir
from server.settings import Settings

log = logging.getLogger("server")


def parse_flags(argv: list[str]) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, dest=name, default=None, help=f"{field.description} (ASE_{name.upper()})"
        )
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings(**parse_flags(sys.argv[1:] if argv is None else argv))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        print(f"error: bad setting: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        load_model_dir(settings.model_dir)
    except ModelDirError as error:
        print(f"error: cannot serve: {error}", file=sys.stderr)
        return 2
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
    ``asyncio.wait_for``, and ``int(0.5)`` would be 0, cancelling requests in flight at once."""
    return dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
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
