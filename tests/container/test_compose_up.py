"""`docker compose up server prometheus` for real, checked as a user would: the server healthy
by its image's own HEALTHCHECK and answering, Prometheus discovering it by DNS and scraping it,
the rules loaded and recording after traffic; then the API-key variant (the scrape with its
credentials, as monitoring/prometheus.yml's comment says) with a model directory of the user's
mounted by ASE_MODEL_PATH; a mistyped ASE_MODEL_PATH; `down -v`.

The tests run in this order, on one stack (tests/container/conftest.py)."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx
import pytest
import yaml

from tests.container.engine import docker
from tests.container.stack import PROJECT, Stack, wait_until
from tests.monitoring.test_dockerfile import stage_lines
from tests.monitoring.tooling import MONITORING, REPO

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

SAMPLE = (REPO / "demo" / "samples" / "scene_0.png").read_bytes()
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
SCRAPE_WAIT_S = 120  # the project's 15 s scrape and evaluation intervals, several times over


def rules(kind: str) -> list[str]:
    """The names of every recording rule (``kind="record"``) or alert in monitoring/rules/."""
    groups = [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]
    return [rule[kind] for group in groups for rule in group["rules"] if kind in rule]


def predict(url: str, **headers: str) -> httpx.Response:
    headers = {"Content-Type": "image/png", **headers}
    return httpx.post(f"{url}/predict", content=SAMPLE, headers=headers, timeout=60)


def scraped_since(stack: Stack, moment: float) -> bool:
    """Prometheus scraped every ase-server target, successfully, after ``moment`` (epoch s)."""
    targets = stack.targets("ase-server")
    return bool(targets) and all(
        t["health"] == "up" and epoch(t["lastScrape"]) > moment for t in targets
    )


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def default_stack(stack: Stack) -> Stack:
    stack.up("server", "prometheus")
    return stack


def test_server_is_healthy_by_its_images_healthcheck(default_stack):
    assert default_stack.inspect("server", "{{.State.Health.Status}}") == "healthy"
    configured = json.loads(default_stack.inspect("server", "{{json .Config.Healthcheck.Test}}"))
    dockerfile = stage_lines("runtime", "HEALTHCHECK")[0].split(" CMD ", 1)[1]
    assert configured == ["CMD", *json.loads(dockerfile)]  # the image's, not compose's
    assert default_stack.inspect("prometheus", "{{.State.Health.Status}}") == "healthy"


def test_map_kernels_come_from_the_image(default_stack):
    """numba caches where the image's user can write, the build filled that cache, and the
    warm-up loaded every kernel from it: nothing new written there."""
    container = default_stack.container("server")
    assert "cannot cache" not in docker("logs", container).stderr
    indexes = docker("exec", container, "find", "/tmp/numba-cache", "-name", "*.nbi").stdout
    assert "resample._fill_bilinear" in indexes
    changed = docker("diff", container).stdout.splitlines()
    assert not [line for line in changed if "/tmp/numba-cache/" in line], changed


def test_predict_answers(default_stack):
    answer = predict(default_stack.server, Accept="application/json")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"]["name"] == "ase-photo" and body["provider"] == "CPUExecutionProvider"
    assert set(body["tasks"]) == {"semseg", "parts", "saliency", "normals", "edges"}


def test_prometheus_discovers_and_scrapes_the_server(default_stack):
    def up_targets() -> list[dict]:
        return [t for t in default_stack.targets("ase-server") if t["health"] == "up"]

    targets = wait_until(up_targets, SCRAPE_WAIT_S, "an ase-server target up")
    server_ip = default_stack.inspect(
        "server", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    )
    assert [t["scrapeUrl"] for t in targets] == [f"http://{server_ip}:8000/metrics"]
    assert default_stack.query('up{job="ase-server"}')[0]["value"][1] == "1"


def test_rules_load_and_record_after_traffic(default_stack):
    groups = httpx.get(f"{default_stack.prometheus}/api/v1/rules", timeout=10).json()
    loaded = [rule for group in groups["data"]["groups"] for rule in group["rules"]]
    assert sorted(r["name"] for r in loaded if r["type"] == "recording") == sorted(rules("record"))
    assert sorted(r["name"] for r in loaded if r["type"] == "alerting") == sorted(rules("alert"))
    # Two rounds of traffic, each followed by a scrape: every counter then has two samples
    # (on the demo image, all five tasks), and the second is larger.
    for _ in range(2):
        assert all(predict(default_stack.server).status_code == 200 for _ in range(30))
        wait_until(partial(scraped_since, default_stack, time.time()), SCRAPE_WAIT_S, "a scrape")

    def without_data() -> list[str]:
        return [name for name in rules("record") if not default_stack.query(name)]

    wait_until(lambda: not without_data(), SCRAPE_WAIT_S, "data in every recording rule")
    unhealthy = httpx.get(f"{default_stack.prometheus}/api/v1/rules", timeout=10).json()
    health = {r["name"]: r["health"] for g in unhealthy["data"]["groups"] for r in g["rules"]}
    assert set(health.values()) == {"ok"}, health


def scrape_with_key(workdir: Path, key: str) -> Path:
    """What monitoring/prometheus.yml tells a user with ASE_API_KEY to do: the key in a file
    mounted next to it, its commented `authorization` block uncommented. Returns the compose
    override file that mounts both (the only change to the stack)."""
    (workdir / "ase_api_key").write_text(key)
    lines = (MONITORING / "prometheus.yml").read_text().splitlines()
    start = lines.index("    # authorization:")
    for index in range(start, start + 3):
        lines[index] = lines[index].replace("    # ", "    ", 1)
    config = workdir / "prometheus.yml"
    config.write_text("\n".join(lines) + "\n")
    scrape = yaml.safe_load(config.read_text())["scrape_configs"][0]
    assert scrape["authorization"]["credentials_file"] == "/etc/prometheus/ase_api_key"
    mounts = [
        {"type": "bind", "source": str(workdir / name), "target": f"/etc/prometheus/{name}"}
        for name in ("prometheus.yml", "ase_api_key")
    ]
    override = workdir / "compose.api-key.yml"
    override.write_text(yaml.safe_dump({"services": {"prometheus": {"volumes": mounts}}}))
    return override


@pytest.fixture(scope="module")
def keyed_stack(default_stack, tmp_path_factory) -> Stack:
    """The same stack with ASE_API_KEY set and a model directory of the user's mounted."""
    workdir = tmp_path_factory.mktemp("user")
    workdir.chmod(0o755)  # Prometheus runs as `nobody` and reads the key file from here
    model = workdir / "my-model"
    shutil.copytree(REPO / "demo" / "model", model)
    metadata = json.loads((model / "metadata.json").read_text())
    (model / "metadata.json").write_text(json.dumps(metadata | {"name": "ase-mine"}))
    key = secrets.token_hex(16)
    default_stack.env |= {"ASE_API_KEY": key, "ASE_MODEL_PATH": str(model)}
    default_stack.files.append(scrape_with_key(workdir, key))
    default_stack.up("server", "prometheus")
    return default_stack


def test_api_key_guards_predict_and_metrics(keyed_stack):
    key = keyed_stack.env["ASE_API_KEY"]
    assert predict(keyed_stack.server).status_code == 401
    assert predict(keyed_stack.server, **{"X-API-Key": key}).status_code == 200
    assert httpx.get(f"{keyed_stack.server}/metrics", timeout=10).status_code == 401


def test_prometheus_scrapes_with_the_key(keyed_stack):
    started = epoch(keyed_stack.inspect("prometheus", "{{.State.StartedAt}}"))
    wait_until(lambda: scraped_since(keyed_stack, started), SCRAPE_WAIT_S, "a scrape with the key")
    assert [t["lastError"] for t in keyed_stack.targets("ase-server")] == [""]


def test_mounted_model_directory_is_served(keyed_stack):
    headers = {"X-API-Key": keyed_stack.env["ASE_API_KEY"]}
    models = httpx.get(f"{keyed_stack.server}/v1/models", headers=headers, timeout=10).json()
    assert models["default_model"] == "ase-mine"
    assert [model["name"] for model in models["models"]] == ["ase-mine"]
    mounts = json.loads(keyed_stack.inspect("server", "{{json .Mounts}}"))
    mounted = {(m["Source"], m["Destination"], m["RW"]) for m in mounts}
    assert mounted == {(keyed_stack.env["ASE_MODEL_PATH"], "/models/user", False)}


def exit_codes(container: str, since: float) -> list[str]:
    """The container's exit codes since ``since`` (epoch seconds), one per exit, from the
    engine's die events. Not ``docker wait``: with ``restart: unless-stopped`` it answered 0 once,
    having met the container restarted (the log held the error of the exit before)."""
    events = docker(
        "events",
        *("--since", f"{since:.3f}", "--until", f"{time.time():.3f}"),
        *("--filter", f"container={container}", "--filter", "event=die"),
        *("--format", "{{.Actor.Attributes.exitCode}}"),
    )
    return events.stdout.split()


def test_mistyped_model_path_stops_the_server_with_a_clear_message(keyed_stack, tmp_path):
    """Compose v2 creates the missing folder (docker-compose.yml says why it is left so); the
    server exits at once, naming what is wrong."""
    mistyped = tmp_path / "my-modle"
    keyed_stack.env["ASE_MODEL_PATH"] = str(mistyped)
    started = time.time()
    keyed_stack.compose("up", "-d", "server")
    server = keyed_stack.container("server")
    codes = wait_until(lambda: exit_codes(server, started), 120, "the server's first exit")
    logs = docker("logs", server).stderr
    assert codes[0] == "2" and "model directory /models/user is empty" in logs, logs[-2000:]
    keyed_stack.compose("stop", "server")
    assert mistyped.is_dir() and not any(mistyped.iterdir())


def test_down_removes_the_containers_and_volumes(keyed_stack):
    keyed_stack.down()
    label = f"label=com.docker.compose.project={PROJECT}"
    assert docker("ps", "-aq", "--filter", label).stdout.strip() == ""
    assert docker("volume", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert docker("network", "ls", "-q", "--filter", label).stdout.strip() == ""
