"""Real servers for the tests: ``python -m server`` processes on 127.0.0.1
(``tests/processes.py``), on a tiny model exported by the real exporter (and, where a
deliberately slow model is needed, on the contract-conforming fake of ``fake_model.py``)."""

from __future__ import annotations

import base64
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.export.tiny_export import export_tiny_model_dir
from tests.processes import RunningProcess, free_port
from tests.server.fake_model import write_fake_model_dir

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BASE_FLAGS = ("--providers", "cpu", "--threads", "1", "--log-level", "warning")
SLOW_MATMULS = 100  # ~0.15 s per model call on one thread
PREDICT = {"protocol": "native", "endpoint": "/predict"}  # the request metrics' labels


@dataclass
class ServerProcess(RunningProcess):
    """A ``python -m server`` process."""

    grpc: str | None = None  # host:port of the V2 gRPC service, when started with one

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def metrics(self, **headers) -> dict[tuple[str, frozenset], float]:
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=10).text
        return parse_metrics(text)


def start_server(model_dir: Path, log_dir: Path, *flags: str, env: dict | None = None):
    port = free_port()
    command = [PYTHON, "-m", "server", "--model-dir", str(model_dir), "--port", str(port)]
    log = log_dir / f"server-{port}.log"
    environment = {**os.environ, **(env or {})}
    return ServerProcess.start(
        [*command, *BASE_FLAGS, *flags], port, log, "/readyz", 40, cwd=REPO, env=environment
    )


def start_v2_server(model_dir: Path, log_dir: Path, *flags: str) -> ServerProcess:
    """``start_server`` with the Open Inference Protocol's gRPC service on a free port too."""
    grpc_port = free_port()
    server = start_server(model_dir, log_dir, "--grpc-port", str(grpc_port), *flags)
    server.grpc = f"127.0.0.1:{grpc_port}"  # bound before the lifespan warms up, so now
    return server


def start_demo_server(log_dir: Path, grpc: bool = False) -> ServerProcess:
    """The server as ``make serve`` runs it: no --model-dir, so the committed demo model (with
    ``grpc``: as ``make serve GRPC_PORT=...``, a free port)."""
    port, grpc_port = free_port(), free_port() if grpc else None
    command = [PYTHON, "-m", "server", "--port", str(port), "--providers", "cpu"]
    if grpc:
        command += ["--grpc-port", str(grpc_port)]
    log = log_dir / f"demo-{port}.log"
    server = ServerProcess.start(command, port, log, "/readyz", 90, cwd=REPO)
    server.grpc = f"127.0.0.1:{grpc_port}" if grpc else None
    return server


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """``(sample name, frozenset of label items) -> value`` for every sample."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(values: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (those not named, e.g. the
    model and version every per-model series carries, are summed over)."""
    wanted = set(labels.items())
    return sum(
        value for (sample, items), value in values.items() if sample == name and wanted <= items
    )


def png_pixels(data: bytes | str) -> np.ndarray:
    """A PNG's pixels, from its bytes or from the base64 text a JSON answer carries."""
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.asarray(Image.open(io.BytesIO(raw)))


def decoded(tasks: dict) -> dict:
    """A JSON answer's ``tasks`` with each PNG's base64 text replaced by its pixels (shape,
    dtype, bytes), for comparing answers: the server promises a map's pixels, not the PNG's
    bytes, which ISA-L's deflate does not always repeat (server/codecs.py::encode_png_bands)."""
    return {
        name: {
            key: _pixel_key(value) if key == "data" and entry.get("encoding") == "png" else value
            for key, value in entry.items()
        }
        for name, entry in tasks.items()
    }


def _pixel_key(data: str) -> tuple:
    pixels = png_pixels(data)
    return pixels.shape, str(pixels.dtype), pixels.tobytes()


def image_bytes(array: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def random_image(seed: int, height: int = 40, width: int = 56) -> np.ndarray:
    """A smooth random picture: colour gradients plus blocks, so that maps have structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack(
        [
            np.sin(6 * x + rng.uniform(0, 6)),
            np.cos(5 * y + rng.uniform(0, 6)),
            np.sin(4 * (x + y) + rng.uniform(0, 6)),
        ],
        axis=-1,
    )
    noise = rng.uniform(-0.3, 0.3, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)
    return np.clip((base + noise[:height, :width] + 1) * 127.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A real tiny ASE network (32 px, 2 blocks, 16/3/1/4) exported by export/to_onnx.py."""
    return export_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def slow_model_dir(tmp_path_factory) -> Path:
    return write_fake_model_dir(tmp_path_factory.mktemp("slow"), heavy_matmuls=SLOW_MATMULS)


@pytest.fixture(scope="session")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def server(model_dir, logs):
    process = start_server(model_dir, logs, "--max-batch", "8", "--max-wait-ms", "30")
    yield process
    process.stop()
