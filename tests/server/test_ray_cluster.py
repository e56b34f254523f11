"""The server on a real local multi-node Ray cluster (tests/server/ray_cluster.py): Ray Serve
replicas of server/ray_app.py, one per node, behind Serve's proxy on 127.0.0.1; their metrics
through Ray's agents into the real Prometheus with monitoring/prometheus-ray.yml; batch
prediction on Ray Data (server/batch_ray.py). One cluster for the module (starting one takes
seconds); the node removal and the autoscaling run last, in that order, as they reshape it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.monitoring.test_prometheus_e2e import Routed, query, substitute, wait_until
from tests.monitoring.test_rules_and_dashboards import DASHBOARDS, RULE_FILES, dashboard_targets
from tests.monitoring.tooling import MONITORING, start_prometheus
from tests.processes import free_port
from tests.server.conftest import REPO, decoded, image_bytes, png_pixels, random_image
from tests.server.ray_cluster import SLOT, LocalCluster, start_cluster

pytestmark = pytest.mark.timeout(240)

TASKS = ("semseg", "parts", "saliency", "normals", "edges")
MAX_BATCH = 8
FAST_AUTOSCALING = {"upscale_delay_s": 0.5, "downscale_delay_s": 2.0, "look_back_period_s": 1.0}


@dataclass
class ServeApp:
    url: str
    cluster: LocalCluster
    routed_per_stream: int  # routed expert tokens one (image, task) pair adds, all layers
    streams_sent: int = 0  # (image, task) pairs answered: the expert counters' total

    def predict(self, body: bytes, tasks: str, **params) -> httpx.Response:
        response = httpx.post(
            f"{self.url}/predict",
            params={"tasks": tasks, **params},
            content=body,
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        self.streams_sent += len(tasks.split(","))
        return response


def settings_for(model_dir: Path, **changes):
    from server.settings import Settings

    return Settings(
        model_dir=model_dir,
        providers="cpu",
        threads=1,
        render_threads=1,
        max_batch=MAX_BATCH,
        max_wait_ms=50,
        memory_budget_mb=256,
        ray_num_cpus=0.5,
        log_level="warning",
        **changes,
    )


def pinned(settings) -> dict:
    """The settings' deployment options, each replica needing a node's one slot."""
    from server.ray_app import deployment_options

    options = deployment_options(settings)
    options["ray_actor_options"]["resources"] = {SLOT: 1}
    options["autoscaling_config"].update(FAST_AUTOSCALING)
    options["health_check_period_s"] = 1.0
    return options


def deploy(settings) -> None:
    from ray import serve

    from server.ray_app import APP_NAME, build_app

    serve.run(build_app(settings, **pinned(settings)), name=APP_NAME, route_prefix="/")


@pytest.fixture(scope="module")
def cluster() -> LocalCluster:
    local = start_cluster()
    yield local
    local.shutdown()


@pytest.fixture(scope="module")
def app(cluster, model_dir) -> ServeApp:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    deploy(settings_for(model_dir, ray_min_replicas=2, ray_max_replicas=2))
    yield ServeApp(f"http://127.0.0.1:{port}", cluster, routed_per_stream(model_dir))
    serve.shutdown()


def ray_config(cluster: LocalCluster) -> dict:
    """monitoring/prometheus-ray.yml with 1 s intervals, reading this cluster's discovery file."""
    config = yaml.safe_load((MONITORING / "prometheus-ray.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(MONITORING / "rules" / "*.yml")]
    job = config["scrape_configs"][0]
    job["file_sd_configs"][0]["files"] = [str(cluster.discovery_file)]
    job["file_sd_configs"][0]["refresh_interval"] = "1s"
    config["scrape_configs"] = [job]
    return config


@pytest.fixture(scope="module")
def prometheus(cluster, tmp_path_factory) -> str:
    running = start_prometheus(ray_config(cluster), tmp_path_factory.mktemp("prometheus-ray"))
    yield running.url
    running.stop()


def by_replica(prometheus: str, expr: str) -> dict[str, float]:
    return {r["metric"]["replica"]: float(r["value"][1]) for r in query(prometheus, expr)}


def routed_per_stream(model_dir: Path) -> int:
    """Each token of a stream goes to k routed experts in every layer."""
    from server.modeldir import load_model_dir

    adapters = load_model_dir(model_dir).adapters
    return adapters.tokens_per_stream * adapters.k * adapters.layers


def settled(prometheus: str, app: ServeApp) -> None:
    """Wait until Prometheus holds every stream answered so far (replica -> Ray's agent ->
    scrape), so that what follows is measured from a known total. Both totals: a replica's
    mirror pass can copy the request counter before the same flush has added the expert
    tokens, and then the expert counters reach Prometheus a scrape later."""
    want = {
        "sum(ase_task_requests_total)": app.streams_sent,
        'sum(ase_expert_tokens_total{kind="routed"})': app.streams_sent * app.routed_per_stream,
    }

    def total(expr: str) -> float:
        got = query(prometheus, expr)  # none before the first stream
        return float(got[0]["value"][1]) if got else 0.0

    def caught_up() -> bool:
        return all(total(expr) == count for expr, count in want.items())

    wait_until(caught_up, 30, f"{app.streams_sent} streams and their expert tokens in Prometheus")


def post_all(app: ServeApp, count: int, tasks: str = "semseg,normals", workers: int = 16) -> None:
    bodies = [image_bytes(random_image(seed)) for seed in range(count)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda body: app.predict(body, tasks), bodies))


def replica_nodes() -> dict[str, str]:
    """Replica id -> the node its actor runs on, from Ray's state API."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.name.rsplit("#", 1)[1]: a.node_id for a in actors if "ASEServer#" in (a.name or "")}


def test_deployment_options_come_from_the_settings(model_dir):
    from server.ray_app import deployment_options
    from server.settings import Settings

    settings = Settings(
        model_dir=model_dir,
        ray_num_cpus=2.5,
        ray_num_gpus=1,
        ray_min_replicas=0,
        ray_max_replicas=6,
        ray_target_ongoing_requests=3,
        ray_max_ongoing_requests=12,
    )
    options = deployment_options(settings)
    assert options["ray_actor_options"] == {"num_cpus": 2.5, "num_gpus": 1}
    scaling = options["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["initial_replicas"], scaling["max_replicas"]) == (
        0,
        1,
        6,
    )
    assert scaling["target_ongoing_requests"] == 3 and options["max_ongoing_requests"] == 12
    assert options["max_queued_requests"] == settings.max_queue
    per_replica = settings.per_ray_actor()  # threads "one per core" become the reserved CPUs
    assert (per_replica.threads, per_replica.render_threads) == (3, 3)


def test_both_replicas_answer_from_both_nodes(app, prometheus):
    settled(prometheus, app)
    before = by_replica(prometheus, 'sum by (replica) (ase_requests_total{endpoint="/predict"})')
    post_all(app, 24)
    settled(prometheus, app)
    after = by_replica(prometheus, 'sum by (replica) (ase_requests_total{endpoint="/predict"})')
    served = {replica: after[replica] - before.get(replica, 0.0) for replica in after}
    assert sum(served.values()) == 24
    assert len(served) == 2 and all(count > 0 for count in served.values()), served
    nodes = replica_nodes()
    assert set(nodes) == set(served)
    assert set(nodes.values()) == app.cluster.node_ids()  # one replica on each node


def test_answers_equal_the_single_servers(app, server):
    for seed in (1, 2):
        body = image_bytes(random_image(seed, height=48, width=64))
        for params in ({"format": "npz"}, {"format": "png", "tasks": "normals"}):
            tasks = params.pop("tasks", ",".join(TASKS))
            plain = httpx.post(
                f"{server.url}/predict",
                params={"tasks": tasks, **params},
                content=body,
                headers={"content-type": "image/png"},
                timeout=30,
            )
            on_ray = app.predict(body, tasks, **params)
            assert plain.status_code == on_ray.status_code == 200, params
            if params["format"] == "npz":  # stored, not deflated: the bytes are the arrays
                assert on_ray.content == plain.content
            else:
                assert np.array_equal(png_pixels(on_ray.content), png_pixels(plain.content))
        plain_json = httpx.post(
            f"{server.url}/predict", content=body, headers={"content-type": "image/png"}, timeout=30
        ).json()
        ray_json = app.predict(body, ",".join(TASKS)).json()
        assert decoded(ray_json.pop("tasks")) == decoded(plain_json.pop("tasks"))
        assert {k: v for k, v in ray_json.items() if k != "timings_ms"} == {
            k: v for k, v in plain_json.items() if k != "timings_ms"
        }


def test_concurrent_requests_are_batched_inside_a_replica(app, prometheus):
    settled(prometheus, app)
    batches = "sum by (replica) (ase_batch_size_count)"
    images = "sum by (replica) (ase_batch_size_sum)"
    before_batches, before_images = by_replica(prometheus, batches), by_replica(prometheus, images)
    post_all(app, 32, workers=32)
    settled(prometheus, app)
    ran = {r: v - before_batches.get(r, 0) for r, v in by_replica(prometheus, batches).items()}
    held = {r: v - before_images.get(r, 0) for r, v in by_replica(prometheus, images).items()}
    assert sum(held.values()) == 32
    # Fewer model calls than images in some replica: requests shared batches there.
    assert any(ran[r] < held[r] for r in held), (ran, held)


MIX = ("semseg,normals", "semseg", "parts,saliency,edges", "semseg,edges", "normals", "edges")
ROUTED_EXPR = 'sum by (layer, task, expert) (ase_expert_tokens_total{kind="routed"})'


def expert_sums(prometheus: str) -> dict[tuple[str, str, str], float]:
    return {
        (r["metric"]["layer"], r["metric"]["task"], r["metric"]["expert"]): float(r["value"][1])
        for r in query(prometheus, ROUTED_EXPR)
    }


def test_expert_counters_summed_over_replicas_equal_the_routed_tokens(app, prometheus):
    """Every request says where its tokens went (router_stats); Prometheus's sums over both
    replicas move by exactly that."""
    settled(prometheus, app)
    before = expert_sums(prometheus)
    routed = Routed()
    bodies = [(image_bytes(random_image(100 + i)), tasks) for i, tasks in enumerate(MIX * 3)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: app.predict(*b, router_stats="true"), bodies))
    for response in responses:
        routed.add(response.json()["router"])
    assert sum(routed.tokens.values()) == routed.streams * app.routed_per_stream  # settled's sum
    settled(prometheus, app)
    moved = {key: value - before.get(key, 0.0) for key, value in expert_sums(prometheus).items()}
    assert {key: value for key, value in moved.items() if value} == {
        key: value for key, value in routed.tokens.items() if value
    }
    replicas = by_replica(prometheus, "sum by (replica) (ase_task_requests_total)")
    assert len(replicas) == 2


def test_rules_and_dashboards_read_the_replicas(app, prometheus):
    """The project's rules, unchanged, evaluate on the replicas' renamed series."""
    settled(prometheus, app)
    records = [
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]
    empty = [record for record in records if not query(prometheus, record)]
    assert not empty, f"recording rules without data: {empty}"
    for path in DASHBOARDS:
        targets = dashboard_targets(json.loads(path.read_text()))
        exprs = [(title, substitute(expr, model="ase-tiny")) for title, expr in targets]

        # Ray's agent evicts a gauge it has not heard from for two export intervals (2 s here:
        # a late export on a busy machine), and Prometheus marks the series stale until the
        # next export: so each panel must have had data, not all of them in the same instant.
        missing = dict(enumerate(exprs))

        def every_panel_seen(missing=missing) -> bool:
            for index, (_, expr) in list(missing.items()):
                if query(prometheus, expr):
                    del missing[index]
            return not missing

        try:
            wait_until(every_panel_seen, 60, f"every panel of {path.name} with data")
        except pytest.fail.Exception:
            pytest.fail(f"{path.name}: panels never with data: {[t for t, _ in missing.values()]}")
    assert query(prometheus, 'up{job="ase-server"} == 1')
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    assert "ASEServerDown" not in {a["labels"]["alertname"] for a in alerts}


def test_a_series_that_never_changes_stays_in_prometheus(app, prometheus):
    """``ase_model_info`` is set once per replica; Ray stops exporting a gauge about 20 s after
    it was last set, so without the mirror's refresh it is in at most ~20 of any 60 scrapes."""
    series = 'count_over_time(ase_model_info{model="ase-tiny"}[60s]) >= 30'
    wait_until(lambda: query(prometheus, series), 120, "ase_model_info in half of 60 scrapes")


def outputs_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def predict_dataset(*args: str) -> subprocess.CompletedProcess:
    """One image per model call: float32 normals move by ~1e-6 with the batch's size, and the
    two runs batch differently (tests/server/test_batch.py)."""
    command = [
        sys.executable,
        "-m",
        "server",
        "predict-dataset",
        *args,
        "--providers",
        "cpu",
        "--threads",
        "1",
        "--max-batch",
        "1",
        "--log-level",
        "warning",
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)


def test_batch_prediction_on_ray_data_equals_the_plain_run(app, model_dir, tmp_path):
    images = tmp_path / "images"
    (images / "more").mkdir(parents=True)
    for seed in range(12):
        folder = images / "more" if seed % 3 else images
        (folder / f"img{seed}.png").write_bytes(image_bytes(random_image(seed, 40, 52)))
    (images / "corrupt.png").write_bytes(image_bytes(random_image(99))[:200])
    plain = predict_dataset(
        str(images), str(tmp_path / "plain"), "--format", "npz", "--model-dir", str(model_dir)
    )
    # On Ray, the same model picked from a repository by name (the default would be the other)
    on_ray = predict_dataset(
        str(images),
        str(tmp_path / "ray"),
        "--format",
        "npz",
        *repository_of_two(model_dir, tmp_path / "repo"),
        "--model",
        "ase-tiny",
        "--ray",
        app.cluster.address,
        "--actors",
        "2",
        "--ray-num-cpus",
        "0.5",
    )
    for run in (plain, on_ray):
        assert run.returncode == 1, run.stderr[-3000:]  # one image failed, the rest written
        assert "12 written, 0 skipped (already there), 1 failed" in run.stdout, run.stdout
        assert "failed: corrupt.png: invalid_image" in run.stderr
    written = outputs_of(tmp_path / "ray")
    assert len(written) == 12 and written == outputs_of(tmp_path / "plain")
    # Both nodes held a model: the pool's actors ran one on each.
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "MapWorker(MapBatches(ModelActor))")])
    assert {a.node_id for a in actors} == app.cluster.node_ids(), actors


def repository_of_two(model_dir: Path, root: Path) -> tuple[str, str]:
    """The tiny model (as ase-tiny) and a fake one whose name comes first (the default model):
    the flags that serve it."""
    from tests.server.fake_model import write_fake_model_dir

    (root / "ase-tiny").mkdir(parents=True)
    (root / "ase-tiny" / "1").symlink_to(model_dir)
    write_fake_model_dir(root / "aaa-fake" / "1")
    return "--model-repository", str(root)


def test_removing_the_worker_node_leaves_the_service_answering(app):
    assert len(set(replica_nodes().values())) == 2
    app.cluster.remove_worker()
    body = image_bytes(random_image(7))
    statuses = [
        httpx.post(
            f"{app.url}/predict",
            params={"tasks": "semseg"},
            content=body,
            headers={"content-type": "image/png"},
            timeout=60,
        ).status_code
        for _ in range(10)
    ]
    assert statuses == [200] * 10
    assert set(replica_nodes().values()) == {app.cluster.cluster.head_node.node_id}


def settled_replicas() -> int | None:
    """How many replicas run once the deployment has settled (none starting or stopping, no
    update under way); ``None`` while it has not."""
    from ray import serve

    from server.ray_app import APP_NAME

    application = serve.status().applications.get(APP_NAME)
    deployment = application.deployments.get("ASEServer") if application else None
    if deployment is None or deployment.status != "HEALTHY":
        return None
    states = deployment.replica_states
    return states.get("RUNNING") if set(states) == {"RUNNING"} else None


def test_bounded_load_scales_from_one_replica_to_two_and_back(app, model_dir):
    app.cluster.add_worker()  # the node removed above: room for a second replica again
    deploy(
        settings_for(
            model_dir, ray_min_replicas=1, ray_max_replicas=2, ray_target_ongoing_requests=2
        )
    )
    wait_until(lambda: settled_replicas() == 1, 60, "one replica")
    stop_load, body = threading.Event(), image_bytes(random_image(3))
    give_up = time.monotonic() + 90

    def load() -> Counter:
        statuses = Counter()
        with httpx.Client(timeout=60) as client:
            while not stop_load.is_set() and time.monotonic() < give_up:
                statuses[
                    client.post(
                        f"{app.url}/predict",
                        params={"tasks": "semseg"},
                        content=body,
                        headers={"content-type": "image/png"},
                    ).status_code
                ] += 1
        return statuses

    with ThreadPoolExecutor(8) as pool:
        loads = [pool.submit(load) for _ in range(8)]
        try:
            wait_until(lambda: settled_replicas() == 2, 90, "a second replica under load")
        finally:
            stop_load.set()
        statuses = sum((future.result() for future in loads), Counter())
    assert set(statuses) == {200}, statuses
    wait_until(lambda: settled_replicas() == 1, 60, "back to one replica once idle")


def test_python_m_server_ray_serves_until_stopped(app, model_dir, tmp_path):
    """The one command: ``python -m server --ray ADDRESS`` deploys the application (here it
    replaces the tests' own), serves through Serve's proxy (the model ``--models`` names from
    a repository of two), and deletes it on SIGTERM."""
    command = [
        sys.executable,
        "-m",
        "server",
        "--ray",
        app.cluster.address,
        *repository_of_two(model_dir, tmp_path / "repo"),
        "--models",
        "ase-tiny",
        "--providers",
        "cpu",
        "--threads",
        "1",
        "--ray-num-cpus",
        "0.5",
        "--ray-max-replicas",
        "1",
        "--log-level",
        "warning",
    ]
    before = set(replica_nodes())
    log = (tmp_path / "ray-server.log").open("w")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def replaced() -> bool:
        replicas = set(replica_nodes())
        return bool(replicas) and not replicas & before and settled_replicas() == 1

    try:
        wait_until(replaced, 90, "the command's own replica")
        response = httpx.post(
            f"{app.url}/predict",
            params={"tasks": "edges", "format": "png"},
            content=image_bytes(random_image(5)),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
        assert response.headers["X-Model-Name"] == "ase-tiny"  # --models: the only one served
        listed = httpx.get(f"{app.url}/v1/models", timeout=30).json()
        assert [m["name"] for m in listed["models"]] == ["ase-tiny"]
        other = httpx.post(
            f"{app.url}/predict?model=aaa-fake", content=image_bytes(random_image(5)), timeout=60
        )
        assert other.status_code == 404 and "serves 'ase-tiny'" in other.text
    finally:
        process.terminate()
        returncode = process.wait(timeout=60)
        log.close()
    assert returncode == 0, (tmp_path / "ray-server.log").read_text()[-3000:]
    from ray import serve

    from server.ray_app import APP_NAME

    assert APP_NAME not in serve.status().applications
