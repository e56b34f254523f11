"""A real local multi-node Ray cluster for the tests: a head and a worker node in processes of
their own (``ray.cluster_utils.Cluster``), 1 CPU each, each with one ``replica_slot`` so that
replicas asking for a slot land one per node. Everything binds to and talks over 127.0.0.1.

The variables below must be in the environment before ``ray`` is first imported (nothing
imports ray at module level before test_ray_cluster.py imports this module; ``require_ray``
checks it) and are inherited by every process of the cluster.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.processes import free_port

RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray takes a node's address from the route to the outside; "0" makes every process of
    # the cluster, and this driver, use 127.0.0.1 instead (loopback only).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Serve's proxy (on the head) would send every request to the head's replica while it has
    # room; the tests want both replicas used, as proxies on two machines would use them.
    "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
    # Autoscaling decisions within seconds, not tens of seconds.
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    # The controller kills a proxy not ready within 5 s (its first try), and serve.start()
    # fails with it: starting uvicorn on a loaded two-core machine took longer.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
}
os.environ.update(RAY_ENVIRONMENT)
SLOT = "replica_slot"
METRICS_REPORT_MS = 1000  # Ray's agents take application metrics every second (default 10)


def require_ray():
    """The ``ray`` module; a failure in CI (``make test`` installs it), a skip elsewhere."""
    try:
        import ray
        import ray.data  # noqa: F401
        import ray.serve  # noqa: F401
    except ImportError as error:
        message = f"Ray is not installed ({error}): pip install -r requirements/full.txt"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from ray._private import ray_constants

    assert not ray_constants.ENABLE_RAY_CLUSTER, "ray was imported before tests/server/ray_cluster"
    return ray


@dataclass
class LocalCluster:
    cluster: object  # ray.cluster_utils.Cluster
    temp_dir: Path
    workers: list = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def discovery_file(self) -> Path:
        """The Prometheus file-SD list of the nodes' metrics agents that Ray keeps up to date."""
        return self.temp_dir / "prom_metrics_service_discovery.json"

    def add_worker(self):
        node = self.cluster.add_node(num_cpus=1, resources={SLOT: 1})
        self.workers.append(node)
        return node

    def remove_worker(self) -> None:
        self.cluster.remove_node(self.workers.pop())

    def node_ids(self) -> set[str]:
        return {self.cluster.head_node.node_id, *(w.node_id for w in self.workers)}

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()
        os.environ.pop("RAY_TMPDIR", None)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def use_for_ray_defaults(temp_dir: Path) -> None:
    """Ray's default temp folder becomes ``temp_dir/ray``, created here. ``Cluster.add_node``
    writes the head's address to ``<default>/ray_current_cluster`` whatever temp dir the nodes
    were given, and does not create the folder: left to its default (``/tmp/ray``) the fixture
    would depend on an earlier Ray run having made it."""
    os.environ["RAY_TMPDIR"] = str(temp_dir)
    (temp_dir / "ray").mkdir(exist_ok=True)


def start_cluster() -> LocalCluster:
    """Head (1 CPU, a slot, the dashboard that writes the discovery file) plus one worker."""
    ray = require_ray()
    from ray.cluster_utils import Cluster

    # Short: Ray's Unix sockets live under it, and their paths may not pass 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    use_for_ray_defaults(temp_dir)
    head = {
        "num_cpus": 1,
        "resources": {SLOT: 1},
        "temp_dir": str(temp_dir),
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(),
        "dashboard_agent_listen_port": free_port(),
        "_system_config": {"metrics_report_interval_ms": METRICS_REPORT_MS},
    }
    local = LocalCluster(Cluster(initialize_head=True, head_node_args=head), temp_dir)
    local.add_worker()
    ray.init(address=local.address, log_to_driver=False)
    return local
