"""Operations the deployment guide expects, on real processes: log files that survive logrotate, a backup
under a stream of submits restored into a new cluster, and result exports."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import duckdb
import httpx

from tests.integration.harness import Cluster, Node, wait_for


def start(cluster: Cluster, data_dir: Path, log_name: str, *extra: str) -> tuple[Node, str, str]:
    """A coordinator on ``data_dir``; returns (node, url, admin key)."""
    node_file = data_dir / "node.json"
    node = cluster.node(["--mode", "coordinator", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir),
                         *extra], cluster.root / log_name)
    cluster.workers.append(node)  # stopped with the cluster

    def ready() -> str | None:
        if node.proc.poll() is not None:
            raise AssertionError(f"coordinator exited:\n{node.output()}")
        info = json.loads(node_file.read_text())
        if info.get("pid") != node.proc.pid:
            return None
        # node.json appears before recovery; /status says when the node (and its admin.key) is ready.
        status = httpx.get(info["url"] + "/status", timeout=5)
        return info["url"] if status.status_code == 200 and status.json().get("ready") else None

    url = wait_for(ready, what="coordinator")
    return node, url, (data_dir / "admin.key").read_text().strip()


def test_log_file_is_reopened_after_logrotate_renames_it(cluster: Cluster) -> None:
    logs = cluster.root / "logs"
    cluster.data_dir.mkdir(parents=True)
    node, url, key = start(cluster, cluster.data_dir, "coordinator.log", "--log-path", str(logs),
                           "--log-format", "json", "--node-id", "c1")
    log_file = logs / "coordinator-c1.log"
    wait_for(lambda: "serving on" in log_file.read_text(), what="first lines in the log file")
    rotated = logs / "coordinator-c1.log.1"
    log_file.rename(rotated)  # what logrotate's default (create) recipe does
    # Any new line will do: a request for an unknown key is logged by the coordinator.
    cluster.url, cluster.admin_key = url, key
    worker = cluster.node(["--mode", "worker", "--coordinator", url, "--worker-id", "after-rotate",
                           "--data-dir", str(cluster.root / "w")], cluster.root / "worker.log",
                          env={"DTF_API_KEY": cluster.worker_key})
    cluster.workers.append(worker)
    line = wait_for(lambda: log_file.exists() and next((json.loads(x) for x in log_file.read_text().splitlines()
                                                        if "after-rotate" in x), None),
                    what="the worker's connection in a new log file")
    assert line["level"] == "info" and line["logger"].startswith("dtf")
    assert "after-rotate" not in rotated.read_text()
    assert node.proc.poll() is None


def test_backup_under_submits_restores_every_acknowledged_task(cluster: Cluster, tmp_path: Path) -> None:
    url = cluster.start_coordinator()
    acked: list[tuple[float, str]] = []
    stop = threading.Event()
    errors: list[str] = []

    def submit_stream() -> None:
        with httpx.Client(headers={"X-API-Key": cluster.admin_key}, timeout=30) as http:
            i = 0
            while not stop.is_set():
                batch = [{"type": "custom", "name": f"t{i}-{j}", "config": {"command": ["true"]}} for j in range(5)]
                i += 1
                response = http.post(url + "/api/tasks", json=batch, params={"allow_unschedulable": "true"})
                if response.status_code != 201:
                    errors.append(response.text)
                    continue
                now = time.monotonic()
                acked.extend((now, t["task_id"]) for t in response.json())

    thread = threading.Thread(target=submit_stream, daemon=True)
    thread.start()
    wait_for(lambda: len(acked) >= 50, what="submissions before the backup")
    backup_dir = tmp_path / "backup"
    began = time.monotonic()
    done = cluster.cli("backup", "--to", str(backup_dir), "--coordinator", url, "--api-key", cluster.admin_key)
    count_at_end = len(acked)
    wait_for(lambda: len(acked) > count_at_end + 10, what="submissions after the backup")  # the stream went on
    stop.set()
    thread.join(timeout=30)
    assert done.returncode == 0, done.stderr
    assert not errors, errors[:3]
    before = [task_id for at, task_id in acked if at < began]
    manifest = json.loads((backup_dir / "backup.json").read_text())
    assert manifest["applied_index"] >= manifest["begin_index"] > 0
    assert set(manifest["files"]) >= {"dtf.duckdb", "state.snapshot", "admin.key"}

    # Restore into a new data dir: a new one-member cluster, no old term or vote.
    restored = tmp_path / "restored"
    result = cluster.cli("restore", "--from", str(backup_dir), "--data-dir", str(restored), "--node-id", "r1",
                         "--json")
    assert result.returncode == 0, result.stderr
    cluster_file = json.loads((restored / "cluster.json").read_text())
    assert cluster_file["members"] == ["r1"] and cluster_file["term"] == 0 and cluster_file["voted_for"] is None
    again = cluster.cli("restore", "--from", str(backup_dir), "--data-dir", str(restored))
    assert again.returncode == 2 and "not empty" in again.stderr

    node, new_url, key = start(cluster, restored, "restored.log", "--node-id", "r1")
    with httpx.Client(headers={"X-API-Key": key}, timeout=30) as http:
        listed = http.get(new_url + "/api/tasks", params={"limit": 100000}).json()
        served = {t["task_id"] for t in listed["tasks"]}
        missing = [t for t in before if t not in served]
        assert not missing, f"{len(missing)} of {len(before)} acknowledged tasks missing after restore"
        assert http.get(new_url + f"/api/tasks/{before[-1]}").status_code == 200
        # CSV export through the restored coordinator: one row per task it holds.
    export = cluster.cli("results", "export", "--table", "distributed_tasks", "--format", "csv", "--output",
                         str(tmp_path / "tasks.csv"), "--coordinator", new_url, "--api-key", key)
    assert export.returncode == 0, export.stderr
    rows = (tmp_path / "tasks.csv").read_text().splitlines()
    assert rows[0].startswith("task_id") or "task_id" in rows[0]
    assert len(rows) - 1 == len(served)
    # Parquet straight from the backup's DuckDB copy, no coordinator needed.
    parquet = tmp_path / "tasks.parquet"
    offline = cluster.cli("results", "export", "--table", "distributed_tasks", "--db",
                          str(backup_dir / "dtf.duckdb"), "--output", str(parquet))
    assert offline.returncode == 0, offline.stderr
    con = duckdb.connect()
    (count,) = con.execute(f"SELECT count(*) FROM read_parquet('{parquet}')").fetchone()
    con.close()
    assert count == manifest["tasks"] >= len(before)
