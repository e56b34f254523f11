"""End to end with a real Prometheus: the project's own config and rules, the scrape target
rewritten to a live server on 127.0.0.1 serving a tiny contract-conforming model.

A known mix of requests (router_stats=true, so every response says where its tokens went) is
sent after a warm-up whose scrape creates every series. Then every recording rule and every
dashboard query is evaluated through Prometheus's HTTP API: each returns data, the raw expert
counters equal the summed responses exactly, and the recorded load shares, dead experts and
gate shares agree with them (rate() extrapolates each series slightly differently, hence a
tolerance derived from the scrape interval on the rate-based ones).
"""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.monitoring.test_rules_and_dashboards import DASHBOARDS, RULE_FILES, dashboard_targets
from tests.monitoring.tooling import MONITORING, REPO, start_prometheus
from tests.processes import free_port
from tests.server.conftest import start_server
from tests.server.fake_model import write_fake_model_dir

pytestmark = pytest.mark.timeout(120)

LAYERS = 2
EXPERTS, SHARED = 16, 1
# One image per request; every request names its tasks. Five requests cover all five tasks
# with different counts, so per-task totals differ.
MIX = ("semseg,normals", "semseg", "parts,saliency,edges", "semseg,edges", "normals", "edges")
RATE_TOLERANCE = 0.15  # rate() may extrapolate one series by up to half a scrape (1 s) more
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1s",
    "$task": "semseg",
    "$layer": "1",
    "$endpoint": "/predict",
    "$model": "ase-fake",  # tests/server/fake_model.py's, served as a repository of one
    "$version": "1",
}


def wait_until(check, timeout: float, what: str, interval: float = 0.25):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    model_dir = write_fake_model_dir(
        tmp_path_factory.mktemp("model"), experts=EXPERTS, shared=SHARED, layers=LAYERS
    )
    running = start_server(model_dir, tmp_path_factory.mktemp("server"))
    yield running.url
    running.stop()


def scrape_config_for(server_port: int, rules_glob: str) -> dict:
    """The project's prometheus.yml with 1 s intervals and the server job aimed at the test."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [rules_glob]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    server_job = jobs["ase-server"]
    server_job.pop("dns_sd_configs")
    server_job["static_configs"] = [{"targets": [f"127.0.0.1:{server_port}"]}]
    config["scrape_configs"] = [server_job]
    return config


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory) -> Iterator[str]:
    config = scrape_config_for(int(server.rsplit(":", 1)[1]), str(MONITORING / "rules" / "*.yml"))
    running = start_prometheus(config, tmp_path_factory.mktemp("prometheus"))
    yield running.url
    running.stop()


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict]:
    """An instant query, now or at unix time ``at``."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    response = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def scalar(prometheus: str, expr: str) -> float | None:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else None


def png(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((40, 56, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(server: str, tasks: str, seed: int) -> dict:
    response = httpx.post(
        f"{server}/predict",
        params={"tasks": tasks, "router_stats": "true"},
        content=png(seed),
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["router"]


def streams_scraped(prometheus: str, expected: int) -> bool:
    return scalar(prometheus, "sum(ase_task_requests_total)") == expected


class Routed:
    """Expert tokens, stream tokens and shared gate mass summed over responses."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, str, str], float] = defaultdict(float)
        self.stream_tokens: dict[tuple[str, str], float] = defaultdict(float)
        self.gate_mass: dict[tuple[str, str], float] = defaultdict(float)
        self.streams = 0

    def add(self, router: dict) -> None:
        for task, stats in router.items():
            self.streams += 1
            per_layer = stats["tokens_per_layer"]
            for layer, row in enumerate(stats["expert_tokens"]):
                key = (str(layer), task)
                self.stream_tokens[key] += per_layer
                self.gate_mass[key] += stats["shared_gate_share"][layer] * per_layer
                for expert, count in enumerate(row):
                    if expert not in stats["shared_experts"]:
                        self.tokens[(str(layer), task, str(expert))] += count

    def share(self, layer: str, task: str, expert: str) -> float:
        total = sum(v for (l, t, _), v in self.tokens.items() if (l, t) == (layer, task))
        return self.tokens[(layer, task, expert)] / total


@pytest.fixture(scope="module")
def traffic(server, prometheus) -> dict[str, Routed]:
    """Warm-up (all tasks, creates every series), a scrape, then the known mix, then scrapes
    and rule evaluations that include it."""
    wait_until(lambda: query(prometheus, 'up{job="ase-server"} == 1'), 15, "a first scrape")
    total, mix = Routed(), Routed()
    total.add(predict(server, "semseg,parts,saliency,normals,edges", seed=100))
    wait_until(lambda: streams_scraped(prometheus, total.streams), 15, "the warm-up scrape")
    for seed, tasks in enumerate(MIX):
        router = predict(server, tasks, seed)
        total.add(router)
        mix.add(router)
    wait_until(lambda: streams_scraped(prometheus, total.streams), 15, "the mix scrape")
    # A few more scrapes and evaluations: every rate() then spans >= 5 samples of the mix.
    time.sleep(5)
    return {"total": total, "mix": mix}


def test_all_rules_load_and_evaluate_cleanly(prometheus, traffic):
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    expected = sum(
        len(group["rules"])
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
    )
    assert len(rules) == expected
    bad = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not bad
    # Seconds of traffic: every alert is at most pending (their `for` is minutes).
    assert all(r["state"] != "firing" for r in rules if r["type"] == "alerting")


def test_collapse_alert_pends_exactly_where_one_expert_takes_most_tokens(prometheus, traffic):
    """The fake router routes 16 tokens by patch colour, so some layers do collapse."""
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    pending = {
        (a["labels"]["layer"], a["labels"]["task"])
        for a in alerts
        if a["labels"]["alertname"] == "ASERouterCollapsed"
    }
    fractions = query(prometheus, "layer_task:ase_expert_token_fraction:max_rate5m")
    collapsed = {
        (s["metric"]["layer"], s["metric"]["task"]) for s in fractions if float(s["value"][1]) > 0.9
    }
    assert pending == collapsed
    others = {a["labels"]["alertname"] for a in alerts} - {"ASERouterCollapsed"}
    assert not others, others


@pytest.mark.parametrize(
    "record",
    [
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    ],
)
def test_every_recording_rule_returns_data(prometheus, traffic, record):
    rule = next(
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if rule.get("record") == record
    )
    assert query(prometheus, record), f"{record} recorded nothing"
    assert query(prometheus, rule["expr"]), f"{record}: its expression returns nothing"


def substitute(expr: str, **values: str) -> str:
    """``expr`` with Grafana's variables replaced (``values``: other values, e.g. model=...)."""
    chosen = {**GRAFANA_VARIABLES, **{f"${name}": value for name, value in values.items()}}
    for variable, value in sorted(chosen.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + variable[1:] + "}", value).replace(variable, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_returns_data(prometheus, traffic, path):
    dashboard = json.loads(path.read_text())
    empty = [
        (title, expr)
        for title, expr in dashboard_targets(dashboard)
        if not query(prometheus, substitute(expr))
    ]
    assert not empty, f"queries without data: {empty}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_variables_find_values(prometheus, traffic, path):
    """Grafana's ``label_values(metric, label)`` is the series API's label values."""
    for variable in json.loads(path.read_text())["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        selector, label = substitute(match.group(1).replace('=~"$task"', '=~".+"')), match[2]
        response = httpx.get(
            f"{prometheus}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10
        )
        values = set(response.json()["data"])
        if label == "task":
            assert values == {task for (_, task) in traffic["total"].stream_tokens}
        elif label == "layer":
            assert values == {str(layer) for layer in range(LAYERS)}
        else:
            assert GRAFANA_VARIABLES[f"${label}"] in values


def test_raw_expert_counters_equal_routed_tokens(prometheus, traffic):
    total = traffic["total"]
    routed = 'sum by (layer, task, expert) (ase_expert_tokens_total{kind="routed"})'
    result = query(prometheus, routed)
    got = {
        (r["metric"]["layer"], r["metric"]["task"], r["metric"]["expert"]): float(r["value"][1])
        for r in result
    }
    assert got == dict(total.tokens)
    assert len(got) == LAYERS * 5 * (EXPERTS - SHARED)
    shared = query(prometheus, 'ase_expert_tokens_total{kind="shared"}')
    assert {r["metric"]["expert"] for r in shared} == {str(EXPERTS - SHARED)}
    streams = query(prometheus, "sum by (layer, task) (ase_stream_tokens_total)")
    assert {(r["metric"]["layer"], r["metric"]["task"]): float(r["value"][1]) for r in streams} == (
        dict(total.stream_tokens)
    )


def test_recorded_load_shares_follow_the_mix(prometheus, traffic):
    mix = traffic["mix"]
    result = query(prometheus, "layer_task_expert:ase_expert_load_share:ratio_rate5m")
    assert len(result) == len(mix.tokens)
    for series in result:
        key = (series["metric"]["layer"], series["metric"]["task"], series["metric"]["expert"])
        expected, got = mix.share(*key), float(series["value"][1])
        if expected == 0:
            assert got == 0, key
        else:
            assert abs(got / expected - 1) <= RATE_TOLERANCE, (key, got, expected)
    sums = query(
        prometheus, "sum by (layer, task) (layer_task_expert:ase_expert_load_share:ratio_rate5m)"
    )
    assert all(math.isclose(float(s["value"][1]), 1.0, rel_tol=1e-9) for s in sums)


def test_dead_experts_are_the_unrouted_ones(prometheus, traffic):
    mix = traffic["mix"]
    expected = {key for key, count in mix.tokens.items() if count == 0}
    assert expected, "the fake router leaves some experts idle; the check needs at least one"
    dead = query(prometheus, "layer_task_expert:ase_expert_dead:bool1h == 1")
    got = {(s["metric"]["layer"], s["metric"]["task"], s["metric"]["expert"]) for s in dead}
    assert got == expected
    counts = query(prometheus, "layer_task:ase_expert_dead:count1h")
    for series in counts:
        layer, task = series["metric"]["layer"], series["metric"]["task"]
        assert float(series["value"][1]) == sum(1 for k in expected if k[:2] == (layer, task))


def test_balance_statistics_match_the_recorded_shares(prometheus, traffic):
    """Balancedness, CV and entropy recomputed here from the shares Prometheus recorded."""
    # Every query reads the same finished rule evaluation: one group evaluates every second,
    # so at "now" a new evaluation could land between two queries (the rates move with time).
    at = time.time() - 2.5
    shares: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in query(prometheus, "layer_task_expert:ase_expert_load_share:ratio_rate5m", at):
        shares[(s["metric"]["layer"], s["metric"]["task"])].append(float(s["value"][1]))

    def recorded(name: str) -> dict[tuple[str, str], float]:
        return {
            (s["metric"]["layer"], s["metric"]["task"]): float(s["value"][1])
            for s in query(prometheus, name, at)
        }

    balance = recorded("layer_task:ase_expert_load_balancedness:ratio_rate5m")
    cv = recorded("layer_task:ase_expert_load_cv:ratio_rate5m")
    entropy = recorded("layer_task:ase_expert_load_entropy:normalized_rate5m")
    assert set(balance) == set(cv) == set(entropy) == set(shares)
    now = query(prometheus, "layer_task:ase_expert_load_balancedness:ratio_rate5m")
    assert now and set(shares) == {(s["metric"]["layer"], s["metric"]["task"]) for s in now}
    for key, values in shares.items():
        v = np.asarray(values)
        positive = v[v > 0]
        assert math.isclose(balance[key], v.mean() / v.max(), rel_tol=1e-9)
        assert math.isclose(cv[key], v.std() / v.mean(), rel_tol=1e-9)
        expected_entropy = -(positive * np.log(positive)).sum() / math.log(len(v))
        assert math.isclose(entropy[key], expected_entropy, rel_tol=1e-9)
        assert 0 < balance[key] <= 1 and 0 <= entropy[key] <= 1


def test_shared_gate_share_follows_the_mix(prometheus, traffic):
    mix = traffic["mix"]
    result = query(prometheus, "layer_task:ase_shared_gate_share:ratio_rate5m")
    assert len(result) == len(mix.stream_tokens)
    for series in result:
        key = (series["metric"]["layer"], series["metric"]["task"])
        expected = mix.gate_mass[key] / mix.stream_tokens[key]
        assert abs(float(series["value"][1]) / expected - 1) <= RATE_TOLERANCE, key


def test_image_health_check_passes_against_the_server(server):
    """The Dockerfile's HEALTHCHECK command, aimed at the live server."""
    dockerfile = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK"))
    command = json.loads(line.split("CMD", 1)[1])
    assert command[0] == "python"
    port = server.rsplit(":", 1)[1]

    def aimed_at(target_port: int) -> list[str]:
        return [sys.executable, *(a.replace(":8000/", f":{target_port}/") for a in command[1:])]

    assert subprocess.run(aimed_at(int(port)), timeout=10).returncode == 0
    # ... and the same command fails when nothing listens there.
    dead = subprocess.run(aimed_at(free_port()), timeout=10, capture_output=True)
    assert dead.returncode != 0


def test_test_config_keeps_the_project_jobs_and_rules(tmp_path):
    """The rewritten config differs from monitoring/prometheus.yml only in intervals and target."""
    config = scrape_config_for(8000, str(Path("rules") / "*.yml"))
    original = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    server_job = next(j for j in original["scrape_configs"] if j["job_name"] == "ase-server")
    assert config["scrape_configs"][0]["metrics_path"] == server_job["metrics_path"]
    assert config["rule_files"] == original["rule_files"]
