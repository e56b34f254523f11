"""A model repository served by real ``python -m server`` processes on 127.0.0.1, with the
official client, tritonclient 2.73, over REST and gRPC: the repository index, load and unload,
inference by model name and version, the errors (unknown model or version, a broken model, the
API key, control outside explicit mode); ``/predict?model=&version=`` and ``/v1/models``; and a
swap under load in poll and in explicit mode (no request fails, every answer names a version
that was ready and carries that version's maps, RSS back near its level once the old version
is gone), a broken version dropped in while the old one serves."""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.processes import free_port
from tests.server.conftest import BASE_FLAGS, PYTHON, REPO, ServerProcess, image_bytes, random_image
from tests.server.fake_model import write_fake_model_dir
from tests.server.test_camera import rss_bytes
from tests.server.test_model_control import break_graph

KEY = "repository-key"
HTTP_KEY, GRPC_KEY = {"X-API-Key": KEY}, {"x-api-key": KEY}
BODY = image_bytes(random_image(4, height=32, width=32))
BALLAST_MB = 64  # each version of the swapped model: its weights' memory is what must come back


def start(root: Path, logs: Path, *flags: str) -> ServerProcess:
    port, grpc_port = free_port(), free_port()
    command = [PYTHON, "-m", "server", "--model-repository", str(root), "--port", str(port)]
    command += ["--grpc-port", str(grpc_port), "--api-key", KEY, *BASE_FLAGS, *flags]
    server = ServerProcess.start(command, port, logs / f"repo-{port}.log", "/readyz", 60, cwd=REPO)
    server.grpc = f"127.0.0.1:{grpc_port}"
    return server


def drop_in(root: Path, name: str, version: str, damage=None, **fake) -> Path:
    """A version written beside the repository's folders (then ``damage``d), then renamed into
    place: a poll sees all of it or nothing (the README's advice)."""
    incoming = root / name / f".incoming-{version}"
    write_fake_model_dir(incoming, **fake)
    if damage is not None:
        damage(incoming)
    return incoming.rename(root / name / version)


def http(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url[7:], network_timeout=60)


def grpc(server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc)


def image_input(module):
    tensor = module.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([BODY], dtype=object))
    return tensor


def infer(client, module, name: str, version: str = "") -> tuple[str, bytes]:
    """(the version that answered, its semseg map's bytes)."""
    outputs = [module.InferRequestedOutput("semseg")]
    headers = dict(HTTP_KEY if module is httpclient else GRPC_KEY)
    result = client.infer(name, [image_input(module)], version, outputs, headers=headers)
    response = result.get_response()
    answered = response["model_version"] if isinstance(response, dict) else response.model_version
    return answered, result.as_numpy("semseg").tobytes()


def index(server) -> dict[tuple[str, str], tuple[str, str]]:
    with http(server) as client:
        rows = client.get_model_repository_index(headers=dict(HTTP_KEY))
    return {
        (row["name"], row.get("version", "")): (row.get("state", ""), row.get("reason", ""))
        for row in rows
    }


def predict(server, **params) -> httpx.Response:
    return httpx.post(
        f"{server.url}/predict",
        params={"tasks": "semseg", **params},
        content=BODY,
        headers={"Content-Type": "image/png", **HTTP_KEY},
        timeout=60,
    )


def wait_for(condition, what: str, timeout_s: float = 120) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, f"not in {timeout_s} s: {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def explicit(tmp_path_factory, logs):
    """Explicit mode; ``fake`` (version 1) loaded at start (--models), ``two`` (two tasks,
    version 1, a bare directory) and ``broken`` only on disk."""
    root = tmp_path_factory.mktemp("explicit") / "repo"
    write_fake_model_dir(root / "fake" / "1", seed=1)
    write_fake_model_dir(root / "two", tasks=("semseg", "edges"), seed=5)
    write_fake_model_dir(root / "broken" / "1", seed=6)
    break_graph(root / "broken" / "1")
    server = start(root, logs, "--model-control-mode", "explicit", "--models", "fake")
    server.root = root
    yield server
    server.stop()


def test_index_load_infer_and_unload_with_tritonclient_over_rest_and_grpc(explicit):
    assert index(explicit) == {
        ("broken", ""): ("", ""),
        ("fake", "1"): ("READY", ""),
        ("two", ""): ("", ""),
    }
    with http(explicit) as rest, grpc(explicit) as rpc:
        assert "model_repository" in rest.get_server_metadata(headers=dict(HTTP_KEY))["extensions"]
        rest.load_model("two", headers=dict(HTTP_KEY))
        assert rpc.is_model_ready("two", "1", headers=GRPC_KEY)
        rows = rpc.get_model_repository_index(headers=GRPC_KEY, as_json=True)["models"]
        assert {"name": "two", "version": "1", "state": "READY"} in rows
        assert infer(rest, httpclient, "two", "1")[0] == infer(rpc, grpcclient, "two")[0] == "1"
        drop_in(explicit.root, "fake", "2", seed=2)
        rpc.load_model("fake", headers=GRPC_KEY)  # returns once version 2 is ready
        two = {
            infer(client, module, "fake")
            for client, module in ((rest, httpclient), (rpc, grpcclient))
        }
        assert {version for version, _ in two} == {"2"}
        assert rest.get_model_metadata("fake", headers=dict(HTTP_KEY))["versions"] == ["2"]
        rpc.unload_model("two", headers=GRPC_KEY)
        assert not rest.is_model_ready("two", headers=dict(HTTP_KEY))
    wait_for(lambda: index(explicit)[("fake", "1")] == ("UNAVAILABLE", "unloaded"), "fake 1 gone")
    assert index(explicit)[("two", "1")] == ("UNAVAILABLE", "unloaded")


def test_errors_name_what_is_served_and_why_a_load_failed(explicit):
    with http(explicit) as rest, grpc(explicit) as rpc:
        for client, module in ((rest, httpclient), (rpc, grpcclient)):
            with pytest.raises(
                InferenceServerException, match="unknown model 'nope'; this server serves 'fake'"
            ) as error:
                infer(client, module, "nope")
            assert error.value.status() in ("404", "StatusCode.NOT_FOUND")
            with pytest.raises(
                InferenceServerException, match="no version '9' ready; it serves"
            ) as error:
                infer(client, module, "fake", "9")
            assert error.value.status() in ("404", "StatusCode.NOT_FOUND")
            headers = dict(HTTP_KEY if module is httpclient else GRPC_KEY)
            with pytest.raises(InferenceServerException, match="ONNX Runtime cannot load") as error:
                client.load_model("broken", headers=headers)
            assert error.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
            with pytest.raises(InferenceServerException, match="no model 'gone' in the repository"):
                client.load_model("gone", headers=headers)
            with pytest.raises(InferenceServerException, match="not supported"):
                client.load_model("fake", headers=headers, config="{}")
            with pytest.raises(InferenceServerException) as error:
                client.get_model_repository_index()  # no key
            assert error.value.status() in ("401", "StatusCode.UNAUTHENTICATED")
    state, reason = index(explicit)[("broken", "1")]
    assert state == "UNAVAILABLE" and "ONNX Runtime cannot load" in reason
    assert "model broken version 1 failed to load" in explicit.log.read_text()


def test_predict_chooses_by_model_and_version_and_v1_models_lists_them(explicit):
    with httpx.Client(base_url=explicit.url, headers=HTTP_KEY, timeout=30) as client:
        listed = client.get("/v1/models").json()
        served = {(m["name"], m["version"]) for m in listed["models"]}
        assert ("fake", max(v for n, v in served if n == "fake")) in served
        assert listed["default_model"] == "fake" and all(m["checkpoint"] for m in listed["models"])
    answer = predict(explicit, model="fake")
    assert answer.status_code == 200 and answer.json()["model"]["name"] == "fake"
    assert answer.headers["X-Model-Name"] == "fake"
    missing = predict(explicit, model="fake", version="42")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_version"
    assert "it serves version" in missing.json()["error"]["message"]
    unknown = predict(explicit, model="nope")
    assert (
        unknown.status_code == 404
        and "this server serves 'fake'" in unknown.json()["error"]["message"]
    )


def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path, logs):
    root = tmp_path / "repo"
    write_fake_model_dir(root / "fake" / "1")
    server = start(root, logs)
    try:
        with http(server) as rest:
            with pytest.raises(
                InferenceServerException, match="not allowed: .*--model-control-mode none"
            ) as error:
                rest.unload_model("fake", headers=dict(HTTP_KEY))
            assert error.value.status() == "503"
            assert rest.is_model_ready("fake", headers=dict(HTTP_KEY))
        with httpx.Client(base_url=server.url, headers=HTTP_KEY) as client:
            paths = client.get("/openapi.json").json()["paths"]
        assert "/v2/repository/index" in paths and not any(p.endswith("/load") for p in paths)
    finally:
        server.stop()


class Stream:
    """Requests one after another from two threads, /predict and gRPC, until stopped (at most
    ``limit`` each): every answer's status, the version it names and its map."""

    def __init__(self, server, limit: int = 5000) -> None:
        self.server, self.limit = server, limit
        self.stop = threading.Event()
        self.answers: list[tuple[str, str, str, bytes]] = []  # (protocol, outcome, version, map)
        self.pool = ThreadPoolExecutor(2)
        self.running = [self.pool.submit(self._rest), self.pool.submit(self._grpc)]

    def _rest(self) -> None:
        with httpx.Client(base_url=self.server.url, headers=HTTP_KEY, timeout=60) as client:
            for _ in range(self.limit):
                if self.stop.is_set():
                    return
                answer = client.post(
                    "/predict",
                    params={"tasks": "semseg"},
                    content=BODY,
                    headers={"Content-Type": "image/png"},
                )
                if answer.status_code != 200:
                    self.answers.append(("rest", str(answer.status_code), "", answer.content))
                    continue
                body = answer.json()
                data = base64.b64decode(body["tasks"]["semseg"]["data"])
                self.answers.append(("rest", "ok", body["model"]["version"], data))

    def _grpc(self) -> None:
        with grpc(self.server) as client:
            for _ in range(self.limit):
                if self.stop.is_set():
                    return
                try:
                    version, data = infer(client, grpcclient, "fake")
                except InferenceServerException as error:
                    self.answers.append(("grpc", str(error), "", b""))
                    continue
                self.answers.append(("grpc", "ok", version, data))

    def finish(self) -> list[tuple[str, str, str, bytes]]:
        self.stop.set()
        for running in self.running:
            running.result()
        self.pool.shutdown()
        return self.answers


def references(server) -> dict[str, bytes]:
    """Each protocol's semseg answer for BODY from the version serving now."""
    answer = predict(server)
    with grpc(server) as client:
        return {
            "rest": base64.b64decode(answer.json()["tasks"]["semseg"]["data"]),
            "grpc": infer(client, grpcclient, "fake")[1],
        }


def swap_under_load(server, root: Path, swap) -> None:
    """Version 1 serves; ``swap()`` brings version 2 in while the stream runs; then: no failure,
    each answer names version 1 or 2 and carries that version's map, both were seen, and RSS
    went up by about one version's weights and came back near its level before."""
    old = references(server)
    pid = server.process.pid
    before = rss_bytes(pid)
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")  # the peak (VmHWM) from here on
    stream = Stream(server)
    try:
        wait_for(lambda: len(stream.answers) >= 20, "answers from version 1")
        swap()
        wait_for(
            lambda: index(server).get(("fake", "1")) == ("UNAVAILABLE", "unloaded"),
            "version 1 unloaded",
        )
        answered = len(stream.answers)
        wait_for(lambda: len(stream.answers) >= answered + 20, "answers after the swap")
    finally:
        answers = stream.finish()
    peak = rss_bytes(pid, "VmHWM")
    new = references(server)
    outcomes = Counter(outcome for _, outcome, _, _ in answers)
    assert outcomes == {"ok": len(answers)}, outcomes
    seen = Counter(version for _, _, version, _ in answers)
    assert set(seen) == {"1", "2"}, seen
    assert all(old[p] != new[p] for p in old)  # the two versions' maps differ
    for protocol, _, version, data in answers:
        assert data == (old if version == "1" else new)[protocol], (protocol, version)
    ballast = BALLAST_MB << 20
    assert peak >= before + 0.8 * ballast, (before >> 20, peak >> 20)  # both were loaded
    wait_for(lambda: rss_bytes(pid) <= before + 0.25 * ballast, "RSS back near its level", 30)


def test_swap_under_load_in_poll_mode_and_a_broken_version_dropped_in(tmp_path, logs):
    root = tmp_path / "repo"
    write_fake_model_dir(root / "fake" / "1", seed=1, ballast_mb=BALLAST_MB)
    server = start(root, logs, "--model-control-mode", "poll", "--repository-poll-s", "0.2")
    try:
        before = references(server)
        broken = drop_in(root, "fake", "3", damage=break_graph, seed=3)
        wait_for(lambda: index(server).get(("fake", "3"), ("",))[0] == "UNAVAILABLE", "3 refused")
        state, reason = index(server)[("fake", "3")]
        assert "ONNX Runtime cannot load" in reason and index(server)[("fake", "1")][0] == "READY"
        assert references(server) == before  # version 1 still answers
        assert "model fake version 3 failed to load" in server.log.read_text()
        for path in broken.iterdir():
            path.unlink()
        broken.rmdir()  # gone again: the policy's newest is 1
        swap_under_load(
            server, root, lambda: drop_in(root, "fake", "2", seed=2, ballast_mb=BALLAST_MB)
        )
    finally:
        server.stop()


def test_swap_under_load_in_explicit_mode(tmp_path, logs):
    root = tmp_path / "repo"
    write_fake_model_dir(root / "fake" / "1", seed=1, ballast_mb=BALLAST_MB)
    server = start(root, logs, "--model-control-mode", "explicit")

    def swap() -> None:
        write_fake_model_dir(root / "fake" / "2", seed=2, ballast_mb=BALLAST_MB)
        with http(server) as client:
            client.load_model("fake", headers=dict(HTTP_KEY))

    try:
        swap_under_load(server, root, swap)
    finally:
        server.stop()
