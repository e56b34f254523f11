"""Start-up: bad settings and broken model directories exit non-zero with a clear message; the
server never imports torch; the API key guards everything but the probes."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from export.contract import file_sha256
from server.__main__ import uvicorn_options
from server.settings import Settings
from tests.server.conftest import PYTHON, REPO, free_port, image_bytes, random_image, start_server


def run_server(*args: str) -> subprocess.CompletedProcess:
    command = [PYTHON, "-m", "server", "--port", str(free_port()), "--providers", "cpu", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def break_metadata_json(path):
    (path / "metadata.json").write_text("{not json")


def drop_metadata_field(path):
    data = json.loads((path / "metadata.json").read_text())
    del data["input"]
    (path / "metadata.json").write_text(json.dumps(data))


def cpu_graph(path) -> str:
    """The graph the CPU provider will load (metadata.provider_graph decides)."""
    metadata = json.loads((path / "metadata.json").read_text())
    return metadata["provider_graph"]["CPUExecutionProvider"]


def corrupt_graph(path):
    data = json.loads((path / "metadata.json").read_text())
    (path / data["graphs"][cpu_graph(path)]["file"]).write_bytes(b"garbage" * 100)


def drop_graph_hash(path):
    data = json.loads((path / "metadata.json").read_text())
    data["graphs"][cpu_graph(path)]["sha256"] = None  # hashes are required, not optional
    (path / "metadata.json").write_text(json.dumps(data))


def corrupt_graph_and_hash(path):
    corrupt_graph(path)
    data = json.loads((path / "metadata.json").read_text())
    entry = data["graphs"][cpu_graph(path)]
    entry["sha256"] = file_sha256(path / entry["file"])  # the hash no longer catches it: ORT must
    (path / "metadata.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (break_metadata_json, "not valid JSON"),
        (drop_metadata_field, "input: Field required"),
        (corrupt_graph, "is corrupt: sha256"),
        (drop_graph_hash, "sha256: Input should be a valid string"),
        (corrupt_graph_and_hash, "ONNX Runtime cannot load"),
    ],
)
def test_broken_model_dir_exits_with_a_message(model_dir, tmp_path, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    damage(broken)
    result = run_server("--model-dir", str(broken))
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


def test_missing_model_dir_exits_with_a_message(tmp_path):
    result = run_server("--model-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_empty_model_dir_exits_with_a_message(tmp_path):
    """What a container gets when its model mount names a host path that does not exist
    (Compose v2 and `docker run -v` create it, empty)."""
    result = run_server("--model-dir", str(tmp_path))
    assert result.returncode == 2 and f"model directory {tmp_path} is empty" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--max-batch", "0"), "max_batch"),
        (("--providers", "gpu"), "unknown provider"),
        (("--port", "http"), "port"),
    ],
)
def test_bad_setting_exits_with_a_message(model_dir, flags, message):
    result = run_server("--model-dir", str(model_dir), *flags)
    assert result.returncode == 2 and "bad setting" in result.stderr and message in result.stderr


def test_bad_environment_setting_is_caught_too(model_dir):
    command = [PYTHON, "-m", "server", "--model-dir", str(model_dir)]
    env = {"ASE_MAX_QUEUE": "-3", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "max_queue" in result.stderr


def test_server_modules_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import server.app, server.__main__, server.batching, server.codecs, server.metrics\n"
        "import server.protocol, server.runtime, server.settings, server.pipeline, server.state\n"
        "import server.routes.native, server.routes.ops, server.render, server.resample\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "print('ok')"
    )
    result = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.fixture(scope="module")
def keyed_server(model_dir, logs):
    server = start_server(model_dir, logs, env={"ASE_API_KEY": "s3cret-key"})
    yield server
    server.stop()


def test_api_key_guards_everything_but_probes(keyed_server):
    url, body = keyed_server.url, image_bytes(random_image(0))
    headers = {"Content-Type": "image/png"}
    for path in ("/healthz", "/readyz"):
        assert httpx.get(url + path).status_code == 200
    for path in ("/v1/models", "/metrics"):
        denied = httpx.get(url + path)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        assert httpx.get(url + path, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert httpx.post(f"{url}/predict", content=body, headers=headers).status_code == 401
    wrong = {**headers, "X-API-Key": "s3cret-kez"}
    assert httpx.post(f"{url}/predict", content=body, headers=wrong).status_code == 401
    bearer = {**headers, "Authorization": "Bearer s3cret-key"}
    assert httpx.post(f"{url}/predict", content=body, headers=bearer, timeout=30).status_code == 200


def test_a_fractional_shutdown_timeout_reaches_uvicorn_as_it_is():
    """0.5 s must stay 0.5 s: rounded to 0, uvicorn cancels the requests in flight at once."""
    options = uvicorn_options(Settings(shutdown_timeout_s=0.5))
    assert options["timeout_graceful_shutdown"] == 0.5
    assert uvicorn.Config(app=None, **options).timeout_graceful_shutdown == 0.5


def test_the_full_install_runs_the_images_loop_and_parser():
    """The full venv has uvloop and httptools (through Ray); the image has neither."""
    options = uvicorn_options(Settings())
    assert options["loop"] == "asyncio" and issubclass(options["http"].func, H11Protocol)
