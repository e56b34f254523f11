"""The manifests use the server and image as they really are: probe paths are the app's routes
and behave as probes must, ports and user are the Dockerfile's, images are the ones it builds
(named as docker-compose.yml names them), every ASE_* value is one the settings accept, and the
scraped and scaled-on metrics are ones the server exports. Each fact is read from the code or
the file that owns it."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import PurePosixPath

import httpx
import pytest
import yaml

from server.app import ROUTERS, create_app
from server.metrics import ServerMetrics
from server.modeldir import load_model_dir
from server.settings import DEMO_MODEL_DIR, Settings
from tests.deploy.manifests import (
    OVERLAYS,
    REPO,
    compose_images,
    dockerfile_cmd,
    dockerfile_env,
    dockerfile_exposed,
    dockerfile_uid,
    dockerfile_variants,
    env_of,
    of_kind,
    port_number,
    project_version,
    prometheus_config,
    quantity,
    server_containers,
)

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
# ASE_* variables the manifests set before the server has the setting: harmless until then
# (unknown ASE_* variables are ignored), used once the Open Inference Protocol's gRPC lands.
PENDING_SETTINGS = {"ASE_GRPC_PORT"}
GPU = "nvidia.com/gpu"
RAY_OVERLAY = "ray"


def probe_statuses(paths: set[str]) -> dict[str, int]:
    """GET each path from the real app with an API key set and the model not loaded (no
    lifespan runs): what the kubelet's probes see while a pod starts."""
    app = create_app(Settings(api_key="probe-test-key"))

    async def get_all() -> dict[str, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            return {path: (await client.get(path)).status_code for path in paths}

    return asyncio.run(get_all())


def get_routes() -> set[str]:
    """Every GET path the app serves: its routers' routes (FastAPI keeps included routers as
    objects of their own in ``app.routes``) and the app's own (the OpenAPI pages)."""
    app = create_app(Settings())
    routes = [*app.routes, *(route for router in ROUTERS for route in router.routes)]
    return {r.path for r in routes if "GET" in getattr(r, "methods", ())}


def exported_metrics() -> dict[str, str]:
    """Name -> type of every family the server exports, from its own registry."""
    metrics = ServerMetrics(load_model_dir(DEMO_MODEL_DIR), "CPUExecutionProvider")
    text = metrics.render()[0].decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))


def http_probes(container: dict) -> dict[str, dict]:
    return {kind: container[kind]["httpGet"] for kind in PROBES if kind in container}


def all_server_containers() -> list[tuple[str, dict, dict]]:
    return [(o, pod, c) for o in OVERLAYS for pod, c in server_containers(o)]


def http_containers() -> list[tuple[str, dict, dict]]:
    """The containers where the server itself answers HTTP (not the Ray nodes)."""
    return [(o, p, c) for o, p, c in all_server_containers() if o != RAY_OVERLAY]


# ---- probes ---------------------------------------------------------------------------------


def test_probes_are_get_routes_on_the_http_port():
    routes = get_routes()
    found = http_containers()
    assert found
    for overlay, _, container in found:
        probes = http_probes(container)
        assert {"livenessProbe", "readinessProbe"} <= probes.keys(), (overlay, container["name"])
        for kind, probe in probes.items():
            assert probe["path"] in routes, f"deploy/{overlay} {kind}: no route {probe['path']}"
            assert port_number(container, probe["port"]) == port_number(container, "http")


def test_probes_need_no_key_and_liveness_does_not_wait_for_the_model():
    probes = [http_probes(c) for _, _, c in http_containers()]
    statuses = probe_statuses({p["path"] for kinds in probes for p in kinds.values()})
    for kinds in probes:
        for kind, probe in kinds.items():
            status = statuses[probe["path"]]
            assert status != 401, f"{kind} {probe['path']} needs the API key"
            if kind in ("startupProbe", "livenessProbe"):
                assert status == 200, f"{kind} {probe['path']} must answer before warm-up"
        # Readiness must fail while the model is not loaded and warmed.
        assert statuses[kinds["readinessProbe"]["path"]] == 503


# ---- ports, command, host -------------------------------------------------------------------


def cmd_flag(flag: str) -> str:
    cmd = dockerfile_cmd()
    return cmd[cmd.index(flag) + 1]


def test_image_cmd_port_is_the_exposed_and_default_port():
    port = int(cmd_flag("--port"))
    assert port in dockerfile_exposed()
    assert port == Settings.model_fields["port"].default


def test_http_port_is_the_one_the_server_listens_on():
    program = dockerfile_cmd()[: dockerfile_cmd().index("--host")]
    for overlay, _, container in http_containers():
        env = env_of(container)
        http = port_number(container, "http")
        if "command" in container:  # the image's CMD is replaced: settings come from ASE_*
            assert container["command"] == program and "args" not in container
            assert int(env["ASE_PORT"]) == http, overlay
            assert env["ASE_HOST"] == cmd_flag("--host"), f"deploy/{overlay} binds to loopback"
        else:  # the image's CMD runs: its flags win over ASE_PORT/ASE_HOST
            assert "ASE_PORT" not in env and "ASE_HOST" not in env
            assert http == int(cmd_flag("--port")), overlay


def test_grpc_port_is_the_configured_one():
    for overlay, _, container in http_containers():
        assert port_number(container, "grpc") == int(env_of(container)["ASE_GRPC_PORT"]), overlay


def test_services_target_named_container_ports():
    for overlay in OVERLAYS:
        names = {p["name"] for _, c in server_containers(overlay) for p in c.get("ports", [])}
        for service in of_kind(overlay, "Service"):
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in names, (overlay, port)


# ---- settings -------------------------------------------------------------------------------


def test_every_ase_variable_is_a_setting_with_a_valid_value():
    fields = Settings.model_fields
    for overlay, _, container in all_server_containers():
        for entry in container.get("env", []):
            name = entry["name"]
            if not name.startswith("ASE_") or name in PENDING_SETTINGS:
                continue
            field = name.removeprefix("ASE_").lower()
            assert field in fields, f"deploy/{overlay}: {name} is not a setting"
            if "value" in entry:
                Settings(**{field: entry["value"]})  # raises on a value the server refuses
            else:  # from the container's CPU request: a whole number of cores, rounded up
                source = entry["valueFrom"]["resourceFieldRef"]
                assert source["resource"] == "requests.cpu" and source["divisor"] == "1"
                assert source["containerName"] == container["name"]


def test_gpu_containers_run_the_cuda_providers():
    variants = dockerfile_variants()
    gpu_containers = [
        (o, c)
        for o, _, c in all_server_containers()
        if GPU in c.get("resources", {}).get("limits", {})
    ]
    assert gpu_containers
    for overlay, container in gpu_containers:
        assert quantity(container["resources"]["limits"][GPU]) >= 1
        providers = env_of(container)["ASE_PROVIDERS"]
        assert providers == variants["cuda"]["ASE_PROVIDERS"], overlay
        assert Settings(providers=providers).provider_list[0] == "CUDAExecutionProvider"


# ---- the image ------------------------------------------------------------------------------


def image_variant(image: str) -> str:
    name, _, tag = image.rpartition("/")[2].partition(":")
    version, _, variant = tag.partition("-")
    assert name == "ase-serve" and version == project_version(), image
    return variant


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != RAY_OVERLAY])
def test_images_are_the_ones_the_dockerfile_builds(overlay):
    built = compose_images()
    for _, container in server_containers(overlay):
        gpu = GPU in container.get("resources", {}).get("limits", {})
        variant = image_variant(container["image"])
        assert variant == ("cuda" if gpu else "cpu"), container["image"]
        assert variant in dockerfile_variants()
        assert built[variant] == container["image"], "docker-compose.yml names it differently"


def test_ray_image_is_the_project_image():
    for _, container in server_containers(RAY_OVERLAY):
        assert image_variant(container["image"]) == "ray"


def test_dockerfile_builds_the_ray_image():
    assert "ray" in dockerfile_variants()


# ---- security, resources, shutdown ----------------------------------------------------------


def test_every_server_container_runs_as_the_image_user_without_privileges():
    uid = dockerfile_uid()
    for overlay, pod, container in all_server_containers():
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context.get("runAsNonRoot") is True, (overlay, container["name"])
        assert context.get("runAsUser") == uid, (overlay, container["name"])
        assert context.get("allowPrivilegeEscalation") is False
        assert "ALL" in context.get("capabilities", {}).get("drop", [])


def test_every_server_container_can_write_where_the_image_writes():
    """The image keeps numba's compiled kernels in NUMBA_CACHE_DIR (Dockerfile); under a
    read-only root filesystem it must lie on a writable volume, or numba cannot cache there
    (the server then compiles the kernels at every start). The Ray nodes write there too."""
    cache = PurePosixPath(dockerfile_env()["NUMBA_CACHE_DIR"])
    for overlay, pod, container in all_server_containers():
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        writable = [
            mount["mountPath"]
            for mount in container.get("volumeMounts", [])
            if "emptyDir" in volumes[mount["name"]] and not mount.get("readOnly")
        ]
        assert any(cache.is_relative_to(path) for path in writable), (overlay, container["name"])


def replica_resources() -> list[tuple[str, dict]]:
    """Resources of every pod kind that runs a replica. KServe merges the InferenceService's
    model resources into its runtime's container; Ray's head runs no replica."""
    found = []
    for overlay, _, container in all_server_containers():
        if "resources" in container and container["name"] != "ray-head":
            found.append((f"{overlay} {container['name']}", container["resources"]))
    for overlay in OVERLAYS:
        for service in of_kind(overlay, "InferenceService"):
            model = service["spec"]["predictor"]["model"]
            found.append((f"{overlay} InferenceService", model["resources"]))
    return found


def test_replicas_have_one_memory_size_with_request_equal_to_limit():
    sizes = set()
    found = replica_resources()
    assert {where.split()[0] for where, _ in found} == set(OVERLAYS)
    for where, resources in found:
        request, limit = resources["requests"]["memory"], resources["limits"]["memory"]
        assert quantity(request) == quantity(limit), where
        sizes.add(quantity(limit))
        cpu_limit = resources["limits"].get("cpu")
        if cpu_limit is not None:
            assert quantity(cpu_limit) >= quantity(resources["requests"]["cpu"])
    assert len(sizes) == 1, f"replica pods of different sizes: {sizes}"


def test_grace_period_covers_the_drain():
    drain = Settings.model_fields["shutdown_timeout_s"].default
    for overlay in OVERLAYS:
        for deployment in of_kind(overlay, "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            pause = 0
            for container in pod["containers"]:
                command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
                if command.get("command", [""])[0] == "sleep":
                    pause = max(pause, float(command["command"][1]))
            assert pod["terminationGracePeriodSeconds"] > drain + pause, overlay


def test_disruptions_leave_a_replica():
    for overlay in OVERLAYS:
        for budget in of_kind(overlay, "PodDisruptionBudget"):
            for hpa in of_kind(overlay, "HorizontalPodAutoscaler"):
                assert budget["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"], overlay


# ---- metrics --------------------------------------------------------------------------------


def ase_job() -> dict:
    config = prometheus_config()
    return next(j for j in config["scrape_configs"] if j["job_name"].startswith("ase"))


def test_scaled_on_metric_is_a_gauge_the_server_exports():
    exported = exported_metrics()
    for overlay in OVERLAYS:
        for hpa in of_kind(overlay, "HorizontalPodAutoscaler"):
            for metric in hpa["spec"]["metrics"]:
                assert exported.get(metric["pods"]["metric"]["name"]) == "gauge"


def test_scrapes_match_the_prometheus_config():
    job, routes = ase_job(), get_routes()
    interval = prometheus_config()["global"]["scrape_interval"]
    for overlay in OVERLAYS:
        services = {s["metadata"]["name"] for s in of_kind(overlay, "Service")}
        for monitor in of_kind(overlay, "ServiceMonitor"):
            assert job["job_name"] in services, "the job label is the Service's name"
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["path"] == job["metrics_path"] and endpoint["path"] in routes
                assert endpoint["interval"] == interval
        for monitor in of_kind(overlay, "PodMonitor"):
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint["interval"] == interval
                jobs = [
                    r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"
                ]
                assert jobs == [job["job_name"]]


def test_ray_metric_names_are_renamed_to_the_servers():
    """Ray prefixes application metrics with ray_; the PodMonitor must undo exactly that."""
    exported = exported_metrics()
    for monitor in of_kind(RAY_OVERLAY, "PodMonitor"):
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            (rename,) = [r for r in endpoint["metricRelabelings"] if r["targetLabel"] == "__name__"]
            pattern = re.compile(rename["regex"])  # Prometheus anchors it at both ends
            for name in exported:
                match = pattern.fullmatch(f"ray_{name}")
                assert match and match.expand(rename["replacement"].replace("$", "\\")) == name
                assert pattern.fullmatch(name) is None  # plain names pass unchanged


# ---- Ray Serve ------------------------------------------------------------------------------


def ray_applications() -> list[dict]:
    services = of_kind(RAY_OVERLAY, "RayService")
    assert services
    return [a for s in services for a in yaml.safe_load(s["spec"]["serveConfigV2"])["applications"]]


def test_ray_serve_port_is_the_nodes_serve_port():
    for service in of_kind(RAY_OVERLAY, "RayService"):
        port = yaml.safe_load(service["spec"]["serveConfigV2"])["http_options"]["port"]
        for _, container in server_containers(RAY_OVERLAY):
            assert port_number(container, "serve") == port


def test_ray_object_store_fits_its_shared_memory():
    for service in of_kind(RAY_OVERLAY, "RayService"):
        cluster = service["spec"]["rayClusterConfig"]
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            store = quantity(group["rayStartParams"]["object-store-memory"])
            pod = group["template"]["spec"]
            mounts = {
                m["name"]
                for c in pod["containers"]
                for m in c.get("volumeMounts", [])
                if m["mountPath"] == "/dev/shm"
            }
            (shm,) = [v for v in pod["volumes"] if v["name"] in mounts]
            assert shm["emptyDir"]["medium"] == "Memory"
            assert store <= quantity(shm["emptyDir"]["sizeLimit"])


def test_ray_import_path_names_the_ray_app():
    (application,) = ray_applications()
    module, _, attribute = application["import_path"].partition(":")
    assert module.startswith("server.") and attribute.isidentifier(), application["import_path"]
    source = REPO.joinpath(*module.split(".")).with_suffix(".py")
    if not source.is_file():
        pytest.skip(f"{source.relative_to(REPO)} is not written yet (the Ray Serve application)")
    tree = ast.parse(source.read_text())
    bound = {
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name)
    }
    assert attribute in bound, f"{source.relative_to(REPO)} binds no top-level {attribute!r}"
