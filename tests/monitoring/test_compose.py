"""docker-compose.yml validates offline with both Compose generations, mounts only paths that
exist in the repository, pins its images and ships no default Grafana password."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.monitoring.tooling import REPO, compose_v1, compose_v2

COMPOSE_FILE = REPO / "docker-compose.yml"
PINNED_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")


def compose_env(**extra: str) -> dict[str, str]:
    """The environment without any of the stack's own settings, so defaults are what is checked."""
    prefixes = ("ASE_", "GRAFANA_", "PROMETHEUS_", "COMPOSE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return env | extra


def run_compose(binary: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    command = [binary, "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(
        command, cwd=REPO, env=compose_env(**env), capture_output=True, text=True, timeout=60
    )


def resolved_config(profile: str | None = "gpu") -> dict:
    """The stack as Compose v2 resolves it: defaults filled in, paths absolute."""
    profile_args = ("--profile", profile) if profile else ()
    result = run_compose(
        compose_v2(), *profile_args, "config", "--format", "json", GRAFANA_ADMIN_PASSWORD="t"
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("profile", [None, "gpu"])
@pytest.mark.parametrize("which", ["v1", "v2"])
def test_compose_file_validates(which, profile):
    binary = compose_v1() if which == "v1" else compose_v2()
    profile_args = ("--profile", profile) if profile else ()
    result = run_compose(binary, *profile_args, "config", "-q", GRAFANA_ADMIN_PASSWORD="t")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("which", ["v1", "v2"])
def test_grafana_password_is_required(which):
    binary = compose_v1() if which == "v1" else compose_v2()
    result = run_compose(binary, "config", "-q")
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stdout + result.stderr


def test_services_and_profiles():
    default = resolved_config(profile=None)["services"]
    with_gpu = resolved_config(profile="gpu")["services"]
    assert set(default) == {"server", "prometheus", "grafana"}
    assert set(with_gpu) == set(default) | {"server-gpu"}
    devices = with_gpu["server-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert with_gpu["server-gpu"]["build"]["args"]["VARIANT"] == "cuda"
    assert with_gpu["server"]["build"]["args"]["VARIANT"] == "cpu"


def test_every_bind_mount_exists_in_the_repo():
    services = resolved_config()["services"]
    binds = [
        (name, volume["source"])
        for name, service in services.items()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    ]
    assert len(binds) >= 5  # model, prometheus.yml, rules, provisioning, dashboards
    for name, source in binds:
        assert source.startswith(str(REPO)), f"{name} mounts {source} from outside the repo"
        assert os.path.exists(source), f"{name} mounts {source}, which does not exist"


def test_images_are_pinned_and_state_is_persistent():
    config = resolved_config()
    for name, service in config["services"].items():
        image = service["image"]
        assert not image.endswith(":latest") and ":" in image, f"{name}: unpinned {image}"
        if "build" not in service:
            assert PINNED_TAG.match(image), f"{name}: {image} is not pinned to a version"
    volumes = {
        service_name: {v["target"] for v in service.get("volumes", []) if v["type"] == "volume"}
        for service_name, service in config["services"].items()
    }
    assert "/prometheus" in volumes["prometheus"]
    assert "/var/lib/grafana" in volumes["grafana"]


def test_health_checks_and_ports():
    services = resolved_config()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    # The servers' health check is the image's HEALTHCHECK (tests/monitoring/test_dockerfile.py).
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    published = {
        name: {(p["host_ip"], p["target"]) for p in service["ports"]}
        for name, service in services.items()
    }
    assert published["server"] == {("127.0.0.1", 8000)}
    assert published["prometheus"] == {("127.0.0.1", 9090)}
    assert published["grafana"] == {("127.0.0.1", 3000)}
    for name in ("server", "server-gpu"):
        assert "ase-server" in services[name]["networks"]["default"]["aliases"]
