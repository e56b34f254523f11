"""The custom resources carry the fields their documentation requires, and refer to each other
correctly. No CRD schema is available offline, so the required fields are named here, each
with where it is documented:

- InferenceService, ServingRuntime: KServe's API types (``pkg/apis/serving/v1beta1/predictor.go``,
  ``predictor_model.go``; ``v1alpha1/servingruntime_types.go``) and its custom-runtime docs.
- RayService: KubeRay's API types (``ray-operator/apis/ray/v1/rayservice_types.go``,
  ``raycluster_types.go``) and Ray Serve's config file schema (``applications``).
- ServiceMonitor, PodMonitor: the Prometheus Operator's API reference (``selector`` required).
- The HPA's metric source: the Prometheus adapter's rule format (its ``docs/config.md``:
  discovery, association, naming, querying) in the Helm chart's ``rules.custom`` values.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, OVERLAYS, of_kind, rendered
from tests.monitoring.tooling import require_binary

PROTOCOLS = ("v1", "v2", "grpc-v1", "grpc-v2")  # KServe's InferenceServiceProtocol values
PREDICTOR_IMPLEMENTATIONS = (
    "model",
    "containers",
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "huggingface",
    "pmml",
    "lightgbm",
    "paddle",
)
KSERVE_CONTAINER = "kserve-container"  # the predictor container's name KServe looks for
RAW_MODES = ("RawDeployment", "Standard")  # KServe 0.16 renamed the first to the second
REQUIRED = {
    "InferenceService": ("spec.predictor",),
    "ServingRuntime": (
        "spec.containers[].name",
        "spec.containers[].image",
        "spec.supportedModelFormats[].name",
    ),
    "RayService": (
        "spec.serveConfigV2",
        "spec.rayClusterConfig.headGroupSpec.rayStartParams",
        "spec.rayClusterConfig.headGroupSpec.template.spec.containers[].name",
        "spec.rayClusterConfig.workerGroupSpecs[].groupName",
        "spec.rayClusterConfig.workerGroupSpecs[].minReplicas",
        "spec.rayClusterConfig.workerGroupSpecs[].maxReplicas",
        "spec.rayClusterConfig.workerGroupSpecs[].rayStartParams",
        "spec.rayClusterConfig.workerGroupSpecs[].template.spec.containers[].name",
    ),
    "ServiceMonitor": ("spec.selector", "spec.endpoints[].port"),
    "PodMonitor": ("spec.selector", "spec.podMetricsEndpoints[].port"),
}
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
ADAPTER_RULE_FIELDS = ("seriesQuery", "resources", "name", "metricsQuery")


def values_at(document, path: str) -> list:
    """Values at a dotted path; ``name[]`` steps into every item of a list."""
    found = [document]
    for step in path.split("."):
        each = step.endswith("[]")
        key = step.removesuffix("[]")
        found = [item[key] for item in found if isinstance(item, dict) and key in item]
        if each:
            found = [element for value in found for element in value]
    return found


def present(value) -> bool:
    return value is not None and value != "" and value != []


def resources_of(kind: str) -> list[tuple[str, dict]]:
    return [(overlay, doc) for overlay in OVERLAYS for doc in of_kind(overlay, kind)]


def matches(selector: dict, labels: dict) -> bool:
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


@pytest.mark.parametrize("kind", REQUIRED)
def test_required_fields_are_present(kind):
    found = resources_of(kind)
    assert found, f"no {kind} under deploy/"
    for overlay, resource in found:
        for path in REQUIRED[kind]:
            values = values_at(resource, path)
            assert values and all(map(present, values)), f"deploy/{overlay} {kind}: {path}"


# ---- KServe ---------------------------------------------------------------------------------


def runtime_for(overlay: str, service: dict) -> dict:
    name = service["spec"]["predictor"]["model"]["runtime"]
    runtimes = {r["metadata"]["name"]: r for r in of_kind(overlay, "ServingRuntime")}
    assert name in runtimes, f"InferenceService names runtime {name!r}, not in deploy/{overlay}"
    return runtimes[name]


def test_inference_service_is_one_v2_model_on_our_runtime():
    for overlay, service in resources_of("InferenceService"):
        predictor = service["spec"]["predictor"]
        chosen = [key for key in PREDICTOR_IMPLEMENTATIONS if key in predictor]
        assert chosen == ["model"], f"exactly one predictor implementation, got {chosen}"
        model = predictor["model"]
        assert model["modelFormat"]["name"]
        assert model["protocolVersion"] == "v2"
        runtime = runtime_for(overlay, service)["spec"]
        assert model["protocolVersion"] in runtime["protocolVersions"]
        assert set(runtime["protocolVersions"]) <= set(PROTOCOLS)
        formats = {(f["name"], f.get("version")) for f in runtime["supportedModelFormats"]}
        assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
        assert not runtime.get("disabled", False)
        assert predictor.get("minReplicas", 1) <= predictor.get("maxReplicas", 1)


def test_runtime_serves_several_ports_only_outside_knative():
    for overlay, service in resources_of("InferenceService"):
        runtime = runtime_for(overlay, service)["spec"]
        names = [c["name"] for c in runtime["containers"]]
        assert KSERVE_CONTAINER in names
        container = runtime["containers"][names.index(KSERVE_CONTAINER)]
        if len(container.get("ports", [])) > 1:  # Knative exposes one container port only
            annotations = service["metadata"].get("annotations", {})
            mode = annotations.get("serving.kserve.io/deploymentMode")
            assert mode in RAW_MODES, f"{len(container['ports'])} ports need a raw deployment"


def test_runtime_metrics_annotation_names_the_http_port():
    for _, runtime in resources_of("ServingRuntime"):
        annotations = runtime["spec"].get("annotations", {})
        container = next(c for c in runtime["spec"]["containers"] if c["name"] == KSERVE_CONTAINER)
        ports = {p["containerPort"] for p in container["ports"]}
        assert int(annotations["prometheus.kserve.io/port"]) in ports


# ---- KubeRay --------------------------------------------------------------------------------


def serve_config(service: dict) -> dict:
    assert isinstance(service["spec"]["serveConfigV2"], str), "serveConfigV2 is a YAML string"
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def test_ray_service_applications_and_groups():
    for _, service in resources_of("RayService"):
        applications = serve_config(service)["applications"]
        assert applications
        for application in applications:
            assert application["name"] and application["import_path"]
            assert application.get("route_prefix", "/").startswith("/")
        cluster = service["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for group in groups:  # map[string]string in KubeRay's types
            assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group
        names = [g["groupName"] for g in cluster["workerGroupSpecs"]]
        assert len(names) == len(set(names))
        for group in cluster["workerGroupSpecs"]:
            replicas = group.get("replicas", group["minReplicas"])
            assert group["minReplicas"] <= replicas <= group["maxReplicas"], group["groupName"]


# ---- Prometheus Operator --------------------------------------------------------------------


def test_service_monitor_selects_a_service_port():
    for overlay, monitor in resources_of("ServiceMonitor"):
        selector = monitor["spec"]["selector"]
        services = [
            s for s in of_kind(overlay, "Service") if matches(selector, s["metadata"]["labels"])
        ]
        assert services, f"deploy/{overlay}: the ServiceMonitor selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for service in services:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_pod_monitor_selects_a_pod_port():
    for overlay, monitor in resources_of("PodMonitor"):
        selected = []
        for service in of_kind(overlay, "RayService"):
            cluster = service["spec"]["rayClusterConfig"]
            for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
                template = group["template"]
                if matches(monitor["spec"]["selector"], template["metadata"].get("labels", {})):
                    selected.append(template["spec"])
        assert selected, f"deploy/{overlay}: the PodMonitor selects no pods"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for pod in selected:
                ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
                assert endpoint["port"] in ports


# ---- the HPA's metric source: the Prometheus adapter -----------------------------------------


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def exposed_name(rule: dict) -> str:
    return rule["name"]["as"]


def test_adapter_rules_have_every_part():
    rules = adapter_rules()
    assert rules
    for rule in rules:
        assert all(present(rule.get(field)) for field in ADAPTER_RULE_FIELDS), rule
        resources = rule["resources"]
        assert "overrides" in resources or "template" in resources
        # A pods metric needs the series tied to its namespace and pod.
        mapped = {v["resource"] for v in resources.get("overrides", {}).values()}
        assert {"namespace", "pod"} <= mapped


def test_every_hpa_pods_metric_is_served_by_a_rule():
    served = {exposed_name(rule) for rule in adapter_rules()}
    hpas = resources_of("HorizontalPodAutoscaler")
    assert hpas
    for overlay, hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered(overlay)}
        assert (target["kind"], target["name"]) in kinds, f"deploy/{overlay}: {target}"
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] == "Pods", "only the adapter's pods metrics are provided"
            assert metric["pods"]["metric"]["name"] in served


def test_adapter_queries_are_promql(tmp_path):
    """The adapter's Go templates filled in as it fills them, checked by promtool."""
    fill = {
        "<<.Series>>": "ase_queue_depth",
        "<<.GroupBy>>": "pod",
        "<<.LabelMatchers>>": 'namespace="ase",pod=~"ase-server-a|ase-server-b"',
    }
    expressions = []
    for rule in adapter_rules():
        query = rule["metricsQuery"]
        for placeholder, value in fill.items():
            query = query.replace(placeholder, value)
        assert "<<" not in query, query
        expressions += [rule["seriesQuery"], query]
    records = [{"record": f"adapter:query_{i}", "expr": e} for i, e in enumerate(expressions)]
    rules = {"groups": [{"name": "adapter", "rules": records}]}
    path = tmp_path / "adapter_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
