"""The image under the Kubernetes manifests' security context, run by Docker as the kubelet
would: the container's command, environment and memory limit, its user, a read-only root
filesystem, no capabilities, no privilege escalation, and only the emptyDir volumes (/tmp)
writable. It must become ready (the readiness probe's path) and serve.

The settings are read from the manifests themselves (deploy/base, the plain Kubernetes
Deployment; deploy/kserve, the KServe runtime), so a change there is what runs here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.container.engine import docker
from tests.container.stack import COMPOSE_FILE, PROJECT, UP_TIMEOUT_S, wait_until
from tests.monitoring.tooling import REPO
from tests.processes import free_port

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]

SAMPLE = (REPO / "demo" / "samples" / "scene_0.png").read_bytes()
MANIFESTS = {  # file -> the server container's name in it
    "deploy/base/deployment.yaml": "server",
    "deploy/kserve/servingruntime.yaml": "kserve-container",
}
# KServe puts the InferenceService's model resources on the runtime's container.
INFERENCE_SERVICE = REPO / "deploy/kserve/inferenceservice.yaml"


def pod_spec(manifest: dict) -> dict:
    """A Deployment's pod spec, or a ServingRuntime's spec (which holds containers itself)."""
    return (
        manifest["spec"]["template"]["spec"] if "template" in manifest["spec"] else manifest["spec"]
    )


def resources(container: dict) -> dict:
    if "resources" in container:
        return container["resources"]
    return yaml.safe_load(INFERENCE_SERVICE.read_text())["spec"]["predictor"]["model"]["resources"]


def env_value(entry: dict, container: dict) -> str:
    """An env entry's value; a resourceFieldRef to the container's CPU request as the kubelet
    resolves it (whole cores, divisor 1)."""
    if "value" in entry:
        return str(entry["value"])
    field = entry["valueFrom"]["resourceFieldRef"]
    assert field["resource"] == "requests.cpu" and str(field.get("divisor", "1")) == "1"
    return str(resources(container)["requests"]["cpu"])


def docker_run_flags(spec: dict, container: dict) -> list[str]:
    """`docker run` flags for the container's security context, volumes, env and memory."""
    context = security_context(spec, container)
    assert context["runAsNonRoot"] and context["runAsUser"] != 0
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    flags = ["--user", str(context["runAsUser"]), "--read-only"]
    flags += ["--security-opt", "no-new-privileges"]
    flags += [f"--cap-drop={cap}" for cap in context["capabilities"]["drop"]]
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        assert "emptyDir" in volumes[mount["name"]], mount  # the only kind used here
        flags += ["--tmpfs", f"{mount['mountPath']}:exec,mode=1777"]
    for entry in container.get("env", []):
        flags += ["--env", f"{entry['name']}={env_value(entry, container)}"]
    memory = re.fullmatch(r"(\d+)Gi", resources(container)["limits"]["memory"])
    return [*flags, "--memory", f"{memory[1]}g"]


def security_context(spec: dict, container: dict) -> dict:
    return spec.get("securityContext", {}) | container.get("securityContext", {})


@dataclass(frozen=True)
class ManifestRun:
    """A container run as a manifest says."""

    path: str
    spec: dict  # the pod's
    container: dict  # the manifest's
    name: str  # Docker's
    url: str  # its HTTP port

    def logs(self) -> str:
        logs = docker("logs", self.name, check=False)
        return f"--- {self.name} ---\n{logs.stdout}{logs.stderr}"


def run_as_manifest(path: str, image: str) -> ManifestRun:
    """Starts the manifest's server container from ``image``, as the manifest says."""
    spec = pod_spec(yaml.safe_load((REPO / path).read_text()))
    container = next(c for c in spec["containers"] if c["name"] == MANIFESTS[path])
    http = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    port, name = free_port(), f"{PROJECT}-{Path(path).parent.name}"
    command = container.get("command", [])
    entrypoint = ["--entrypoint", command[0]] if command else []
    arguments = [*command[1:], *container.get("args", [])]
    publish = ["-p", f"127.0.0.1:{port}:{http}"]
    docker("rm", "-f", name, check=False)
    flags = docker_run_flags(spec, container)
    docker("run", "-d", "--name", name, *publish, *flags, *entrypoint, image, *arguments)
    return ManifestRun(path, spec, container, name, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def manifest_runs(images) -> dict[str, ManifestRun]:
    """Every manifest's container, started together (each compiles its kernels at start)."""
    image = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["server"]["image"]
    runs = {}
    try:
        for path in sorted(MANIFESTS):
            runs[path] = run_as_manifest(path, image)
        yield runs
    finally:
        for run in runs.values():
            docker("rm", "-f", run.name, check=False)


@pytest.mark.parametrize("path", sorted(MANIFESTS))
def test_image_serves_under_the_manifests_security_context(manifest_runs, path):
    run = manifest_runs[path]
    try:
        probe = f"{run.url}{run.container['readinessProbe']['httpGet']['path']}"
        wait_until(lambda: httpx.get(probe, timeout=5).is_success, UP_TIMEOUT_S, probe)
        headers = {"Content-Type": "image/png"}
        answer = httpx.post(f"{run.url}/predict", content=SAMPLE, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        user = docker("exec", run.name, "id", "-u").stdout.strip()
        assert user == str(security_context(run.spec, run.container)["runAsUser"])
    except AssertionError as error:
        raise AssertionError(f"{error}\n{run.logs()}") from None
