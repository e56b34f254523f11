"""Prometheus config, rules and their promtool unit tests; Grafana provisioning and dashboards
refer only to metrics the server exports (contract 5) or that the rules record."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.monitoring.tooling import MONITORING, require_binary

RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yml"))
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))

CONTRACT_METRICS = {
    "ase_requests_total",
    "ase_request_duration_seconds",
    "ase_queue_wait_seconds",
    "ase_inference_duration_seconds",
    "ase_batch_size",
    "ase_batch_streams",
    "ase_queue_depth",
    "ase_model_info",
    "ase_expert_tokens_total",
    "ase_stream_tokens_total",
    "ase_shared_gate_mass_total",
    "ase_task_requests_total",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"\b((?:[a-z_]+:)?ase_[a-z_]+(?::[a-z0-9_]+)?|up)\b(?!\s*\()")


def promtool(*args: str) -> subprocess.CompletedProcess:
    command = [require_binary("promtool"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=MONITORING)


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def dashboard_targets(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query, rows' nested panels included."""
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []))
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def known_metric(name: str, recorded: set[str]) -> bool:
    base = name.removesuffix("_total")
    for suffix in HISTOGRAM_SUFFIXES:
        base = base.removesuffix(suffix)
    return (
        name in recorded
        or name == "up"
        or name in CONTRACT_METRICS
        or (base in CONTRACT_METRICS or f"{base}_total" in CONTRACT_METRICS)
    )


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-ray.yml"])
def test_promtool_check_config(config):
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    # The config loads every rule file through its relative glob.
    for path in RULE_FILES:
        assert path.name in result.stdout


def test_ray_config_differs_only_in_the_server_job():
    """monitoring/prometheus-ray.yml (Ray Serve replicas, tests/server/test_ray_cluster.py) keeps
    prometheus.yml's intervals, labels, rules and jobs; its server job has the same name, so
    the rules' and dashboards' job selectors hold."""
    plain, ray = (
        yaml.safe_load((MONITORING / name).read_text())
        for name in ("prometheus.yml", "prometheus-ray.yml")
    )
    assert {k: v for k, v in ray.items() if k != "scrape_configs"} == {
        k: v for k, v in plain.items() if k != "scrape_configs"
    }
    jobs = [[job["job_name"] for job in config["scrape_configs"]] for config in (plain, ray)]
    assert jobs[0] == jobs[1]
    assert ray["scrape_configs"][1:] == plain["scrape_configs"][1:]


def test_promtool_check_rules():
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_promtool_unit_tests():
    assert len(RULE_TESTS) >= 2
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_unit_tests_cover_every_alert():
    alerts = {
        rule["alert"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert {"ASERouterCollapsed", "ASEDeadExperts", "ASEHighLatency", "ASEQueueFull"} <= alerts
    tested = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts <= tested, f"alerts never shown firing in a unit test: {alerts - tested}"


def test_rules_use_only_contract_metrics():
    recorded = recorded_names()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                for name in METRIC_NAME.findall(rule["expr"]):
                    assert known_metric(name, recorded), f"{path.name}: unknown metric {name}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_use_known_metrics_and_datasource(path):
    dashboard = json.loads(path.read_text())
    datasource_uids = {
        source["uid"]
        for file in (MONITORING / "grafana" / "provisioning" / "datasources").glob("*.yml")
        for source in yaml.safe_load(file.read_text())["datasources"]
    }
    recorded = recorded_names()
    targets = dashboard_targets(dashboard)
    assert len(targets) >= 8
    for title, expr in targets:
        names = METRIC_NAME.findall(expr)
        assert names, f"{title}: no metric in {expr}"
        for name in names:
            assert known_metric(name, recorded), f"{title}: unknown metric {name}"
    panel_ids = [p["id"] for p in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in datasource_uids, panel["title"]


def test_expert_load_dashboard_has_the_issue_panels():
    dashboard = json.loads((MONITORING / "grafana/dashboards/ase-expert-load.json").read_text())
    assert dashboard["title"] == "ASE expert load"
    exprs = " ".join(expr for _, expr in dashboard_targets(dashboard))
    for needed in (
        "ase_expert_load_share",
        "balancedness",
        "_cv:",
        "entropy",
        "shared_gate_share",
        "ase_expert_dead",
        "ase_requests_total",
        "ase_request_duration_seconds_bucket",
        "ase_queue_depth",
        "ase_batch_size",
    ):
        assert needed in exprs, needed
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"model", "version", "task", "layer"} <= set(variables)
    assert not variables["model"]["multi"] and not variables["version"]["multi"]  # one picked
    for title, expr in dashboard_targets(dashboard):  # every panel reads the model picked
        assert 'model="$model"' in expr, title
        if "layer_task" in expr:  # routers: one version's (each has its own)
            assert 'version="$version"' in expr, title
    matrix = [p for p in dashboard["panels"] if p.get("repeat") == "task" and p["type"] == "table"]
    assert matrix and matrix[0]["transformations"][0]["options"]["rowField"] == "layer"


def test_dashboard_provider_points_at_the_mounted_dashboards():
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/ase.yml").read_text())[
        "providers"
    ][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
