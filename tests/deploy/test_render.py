"""Every kustomization renders, and what it renders is valid Kubernetes: the built-in kinds
strictly against the API schemas (kubernetes-validate: unknown fields are errors), and the pod
specs that custom resources carry against the same schemas, wrapped as the built-in kinds
they are copied into (KServe and KubeRay build Deployments and Pods from them)."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from tests.deploy.manifests import OVERLAYS, rendered

# The oldest and the newest Kubernetes whose schemas kubernetes-validate bundles.
VERSIONS = (all_versions()[0], all_versions()[-1])
CUSTOM_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "InferenceService": "serving.kserve.io/v1beta1",
    "ServingRuntime": "serving.kserve.io/v1alpha1",
    "RayService": "ray.io/v1",
}
# The InferenceService's model spec is a Container plus these KServe fields.
KSERVE_MODEL_FIELDS = (
    "modelFormat",
    "runtime",
    "protocolVersion",
    "storageUri",
    "storage",
    "runtimeVersion",
)


def validate(resource: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(map(str, error.path))
        pytest.fail(f"{resource['kind']} {resource['metadata']['name']}: {path}: {error.message}")


def test_every_folder_with_a_kustomization_is_rendered():
    assert {"base", "overlays/gpu", "kserve", "ray"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay):
    resources = rendered(overlay)
    assert resources, f"deploy/{overlay} renders nothing"
    for resource in resources:
        assert resource["metadata"].get("name"), resource
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ase"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_are_valid(overlay, version):
    for resource in rendered(overlay):
        if resource["kind"] in CUSTOM_KINDS:
            assert resource["apiVersion"] == CUSTOM_KINDS[resource["kind"]], resource["kind"]
            continue
        # A kind the schemas do not know is an error, not a pass: it must be listed as custom.
        try:
            validate(resource, version)
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{error.message}; a custom resource must be in CUSTOM_KINDS")


def as_pod(pod_spec: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_specs_inside_custom_resources_are_valid(overlay, version):
    for resource in rendered(overlay):
        name = resource["metadata"]["name"]
        if resource["kind"] == "ServingRuntime":
            spec = resource["spec"]
            pod = {"containers": spec["containers"], "volumes": spec.get("volumes", [])}
            validate(as_pod(pod, name), version)
        elif resource["kind"] == "RayService":
            cluster = resource["spec"]["rayClusterConfig"]
            groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
            for group in groups:
                template = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": name},
                    "template": group["template"],
                }
                validate(template, version)
        elif resource["kind"] == "InferenceService":
            container = copy.deepcopy(resource["spec"]["predictor"]["model"])
            for field in KSERVE_MODEL_FIELDS:
                container.pop(field, None)
            validate(
                as_pod({"containers": [{"name": "kserve-container", **container}]}, name), version
            )
