"""The sources' configs start real nodes, file unchanged (or only the database line, as its error says).

Only what cannot hold on a test machine is overridden by flags or environment variables: host, port,
data and log paths, the coordinator URL and the key.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.integration.harness import Cluster, Node, _env, wait_for

SOURCES = Path(__file__).resolve().parents[1] / "fixtures" / "sources"
LOCAL = ["--host", "127.0.0.1", "--port", "0"]


def start_coordinator(cluster: Cluster, config: Path, env: dict[str, str] | None = None,
                      extra: tuple[str, ...] = ()) -> Node:
    """A coordinator from ``config``, with the harness's bookkeeping (url, admin key) filled in."""
    data = cluster.data_dir
    node = cluster.node(["--mode", "coordinator", "--config", str(config), *LOCAL, "--data-dir", str(data),
                         "--log-path", str(cluster.root / "coord-logs"), *extra], cluster.root / "coordinator.log",
                        env=env)
    cluster.coordinator = node

    def ready() -> str | None:
        if node.proc.poll() is not None:
            raise AssertionError(f"coordinator exited early:\n{node.output()}")
        info = json.loads((data / "node.json").read_text())
        if info.get("pid") != node.proc.pid:
            return None
        # node.json appears before recovery: /status says when the node (and its admin.key) is ready.
        status = httpx.get(info["url"] + "/status", timeout=5)
        return info["url"] if status.status_code == 200 and status.json().get("ready") else None

    cluster.url = wait_for(ready, what="coordinator to serve")
    cluster.admin_key = (data / "admin.key").read_text().strip()
    return node


def run_one_task(cluster: Cluster) -> None:
    created = cluster.submit({"type": "custom", "name": "hello", "config": {"command": [sys.executable, "-c",
                                                                                     "print('ok')"]}})
    assert created.status_code == 201, created.text
    task = cluster.wait_task(created.json()["task_id"])
    assert task["status"] == "completed", task


def test_guide_json_configs_start_a_coordinator_and_a_worker(cluster: Cluster, tmp_path: Path) -> None:
    # Unchanged, the guide's coordinator.json stops at its PostgreSQL line and says what to write.
    refused = subprocess.run([sys.executable, "-m", "dtf_app", "--mode", "coordinator", "--config",
                              str(SOURCES / "coordinator.json"), *LOCAL, "--data-dir", str(tmp_path / "x")],
                             capture_output=True, text=True, env=_env(), timeout=60)
    assert refused.returncode == 2 and '"type": "duckdb"' in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    config = tmp_path / "coordinator.json"
    config.write_text((SOURCES / "coordinator.json").read_text().replace('"type": "postgresql"', '"type": "duckdb"'))

    coordinator = start_coordinator(cluster, config)
    out = coordinator.output()
    assert "starting as a one-member Raft cluster" in out  # high_availability.enabled, no peers
    assert out.count("section 'redis' ignored") == 1
    # logging.format = json: every line of the log file is a JSON object.
    log_file = cluster.root / "coord-logs" / "coordinator.log"
    lines = wait_for(lambda: log_file.exists() and log_file.read_text().splitlines(), what="coordinator log file")
    assert all(json.loads(line)["level"] for line in lines)

    worker = cluster.node(["--mode", "worker", "--config", str(SOURCES / "worker.json"), "--coordinator",
                           cluster.url, "--data-dir", str(cluster.root / "w"), "--db-path",
                           str(cluster.root / "w" / "worker.duckdb"), "--log-path", str(cluster.root / "w-logs"),
                           "--hostname", "guide-host"],
                          cluster.root / "worker.log", env={"DTF_API_KEY": cluster.worker_key})
    cluster.workers.append(worker)
    online = cluster.wait_workers(1)
    assert online[0]["hostname"] == "guide-host"
    run_one_task(cluster)
    assert any((cluster.root / "w-logs").glob("*.log"))


def test_design_yaml_configs_start_a_coordinator_and_a_worker_on_the_workers_port(cluster: Cluster) -> None:
    # coordinator.yaml unchanged: ${JWT_SECRET} from the environment; its workers_port (8081) opens a second
    # listener, moved to a free port here; the dashboard port is reported as not available.
    db_file = cluster.root / "benchmark_db.duckdb"  # the file's relative ./benchmark_db.duckdb, moved
    start_coordinator(cluster, SOURCES / "coordinator.yaml", env={"JWT_SECRET": "test-secret",
                                                                  "DTF_WORKERS_PORT": "0"},
                      extra=("--db-path", str(db_file)))
    out = cluster.coordinator.output()
    assert "server.dashboard_port ignored" in out
    assert db_file.exists() and not (cluster.data_dir / "dtf.duckdb").exists()
    workers_url = wait_for(lambda: re.search(r"also serving on (http://127\.0\.0\.1:\d+)",
                                             cluster.coordinator.output()), what="workers port").group(1)
    assert workers_url != cluster.url

    # worker.yaml unchanged: ${WORKER_API_KEY} from the environment, the URL pointed at this machine.
    worker = cluster.node(["--mode", "worker", "--config", str(SOURCES / "worker.yaml"), "--data-dir",
                           str(cluster.root / "w")], cluster.root / "worker.log",
                          env={"WORKER_API_KEY": cluster.worker_key, "COORDINATOR_URL": workers_url})
    cluster.workers.append(worker)
    (online,) = cluster.wait_workers(1)
    assert online["worker_id"] == "worker-1"
    assert online["capabilities"]["labels"] == {"name": "GPU Worker 1", "hardware_id": "nvidia-a100"}
    listed = cluster.cli("workers", "list", "--coordinator", cluster.url, "--api-key", cluster.admin_key)
    assert listed.returncode == 0 and "[nvidia-a100]" in listed.stdout and "GPU Worker 1" in listed.stdout
    run_one_task(cluster)


def test_kubernetes_variables_make_a_member_that_waits_for_a_majority(tmp_path: Path) -> None:
    """The StatefulSet's variables as written: pod 0 of 3 joins the cluster and, alone, waits for the
    others (in one line every few seconds), accepting no writes. tests/integration/test_ha.py starts
    all three on loopback addresses."""
    env = {"COORDINATOR_ID": "dtf-ha-coordinator-0", "ENABLE_HIGH_AVAILABILITY": "true",
           "DTF_CLUSTER_SECRET": "source-configs-test-secret-0123",
           "HIGH_AVAILABILITY_PEERS": "dtf-ha-coordinator-0.dtf-ha-coordinator-headless:8080,"
                                      "dtf-ha-coordinator-1.dtf-ha-coordinator-headless:8080,"
                                      "dtf-ha-coordinator-2.dtf-ha-coordinator-headless:8080"}
    node = Node(["--mode", "coordinator", *LOCAL, "--data-dir", str(tmp_path / "d")], tmp_path / "pod0.log",
                env={**env, "DTF_STATE_DIR": str(tmp_path / "state")})
    try:
        wait_for(lambda: "no leader yet" in node.output(), 90, what="the waiting line")
        assert "member of a 3-node cluster" in node.output()
        assert node.proc.poll() is None
    finally:
        node.stop()
    assert "Traceback" not in node.output()
