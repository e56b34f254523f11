"""The image under the Kubernetes manifests' security context, run by Docker as the kubelet
would: the container's command, environment and memory limit, its user, a read-only root
filesystem, no capabilities, no privilege escalation, and only the emptyDir volumes (/tmp)
writable. It must become ready (the readiness probe's path) and serve.

The settings are read from the manifests themselves (deploy/base, the plain Kubernetes
Deployment; deploy/kserve, the KServe runtime), so a change there is what runs here."""

from __future__ import annotations

import re
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


def run_as_manifest(path: str, spec: dict, container: dict, image: str) -> str:
    """Starts the container as the manifest says; the URL of its HTTP port."""
    http = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    port = free_port()
    command = container.get("command", [])
    entrypoint = ["--entrypoint", command[0]] if command else []
    arguments = [*command[1:], *container.get("args", [])]
    flags = docker_run_flags(spec, container)
    name = container_name(path)
    docker("rm", "-f", name, check=False)
    docker(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"127.0.0.1:{port}:{http}",
        *flags,
        *entrypoint,
        image,
        *arguments,
    )
    return f"http://127.0.0.1:{port}"


def container_name(path: str) -> str:
    return f"{PROJECT}-{Path(path).parent.name}"


@pytest.mark.parametrize("path", sorted(MANIFESTS))
def test_image_serves_under_the_manifests_security_context(images, path):
    spec = pod_spec(yaml.safe_load((REPO / path).read_text()))
    container = next(c for c in spec["containers"] if c["name"] == MANIFESTS[path])
    image = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["server"]["image"]
    url, name = run_as_manifest(path, spec, container, image), container_name(path)
    try:
        probe = f"{url}{container['readinessProbe']['httpGet']['path']}"
        wait_until(lambda: httpx.get(probe, timeout=5).is_success, UP_TIMEOUT_S, probe)
        headers = {"Content-Type": "image/png"}
        answer = httpx.post(f"{url}/predict", content=SAMPLE, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        user = docker("exec", name, "id", "-u").stdout.strip()
        assert user == str(security_context(spec, container)["runAsUser"])
    except AssertionError as error:
        logs = docker("logs", name, check=False)
        raise AssertionError(f"{error}\n--- {name} ---\n{logs.stdout}{logs.stderr}") from None
    finally:
        docker("rm", "-f", name, check=False)
