"""Resource reservations, scaling advice, the health monitor and worker control, on real processes.

Workers advertise simulated hardware profiles (``--simulate-hardware``, assets/hardware/): there is no
GPU here, so the devices are the profile's, and a GPU task proves what it was given by printing the
device variables it runs with. Everything else is real: the coordinator, the workers, the tasks'
processes, the autoscale hook's process and the DuckDB file.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.integration.harness import Cluster, HACluster, wait_for

PRINT_DEVICES = ("import os, sys, time; print('DEVICES', os.environ.get('CUDA_VISIBLE_DEVICES'), "
                 "os.environ.get('HIP_VISIBLE_DEVICES'), flush=True); time.sleep(float(sys.argv[1]))")


@pytest.fixture
def ha(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HACluster]:
    cluster = HACluster(tmp_path)
    yield cluster
    cluster.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-5000:]}")


def _gpu_task(i: int, kind: str, seconds: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"type": "custom", "task_id": f"gpu-{kind}-{i}", "config": {
            "command": [sys.executable, "-c", PRINT_DEVICES, str(seconds)],
            # The reservation wins over what the task's own env says.
            "env": {"CUDA_VISIBLE_DEVICES" if kind == "cuda" else "HIP_VISIBLE_DEVICES": "7"}},
            "requirements": {"hardware": [kind]}, "resources": {"gpus": 1}, **extra}


def _overlaps(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one time."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    live = peak = 0
    for _, step in points:
        live += step
        peak = max(peak, live)
    return peak


def test_a_burst_never_oversubscribes_memory_or_gpus(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("amd", slots=8, simulate="amd-mi250.json")  # 2 ROCm devices, 512 GB
    cluster.start_worker("nv", slots=8, simulate="nvidia-a100.json")  # 1 CUDA device, 512 GB
    cluster.wait_workers(2)
    burst = [_gpu_task(i, "rocm") for i in range(5)] + [_gpu_task(i, "cuda") for i in range(3)]
    # 200 GB each: at most two at a time on a 512 GB worker, though slots are free.
    burst += [{"type": "custom", "task_id": f"mem-{i}", "config": {"command": [sys.executable, "-c",
               "import time; time.sleep(1.0)"]}, "requirements": {"hardware": ["rocm"]},
               "resources": {"memory_gb": 200, "cpu_cores": 1}} for i in range(5)]
    response = cluster.submit(burst)
    assert response.status_code == 201, response.text
    tasks = [cluster.wait_task(doc["task_id"], timeout=180) for doc in burst]
    assert all(t["status"] == "completed" and t["result"]["status"] == "success" for t in tasks), \
        [(t["task_id"], t["status"], t.get("error")) for t in tasks]
    by_device: dict[tuple[str, int], list[tuple[float, float]]] = {}
    memory: list[tuple[float, float]] = []
    for task in tasks:
        span = (_epoch(task["start_time"]), _epoch(task["end_time"]))
        reservation = task["reservation"]
        if task["task_id"].startswith("gpu-"):
            kind = task["task_id"].split("-")[1]
            assert task["worker_id"] == ("amd" if kind == "rocm" else "nv")
            (device,) = reservation["gpus"]
            by_device.setdefault((task["worker_id"], device), []).append(span)
            # The task saw exactly its reserved device, in its type's variable, whatever its env asked.
            expected = f"DEVICES {device if kind == 'cuda' else None} {device if kind == 'rocm' else None}"
            assert expected in task["result"]["output"], (task["task_id"], reservation, task["result"]["output"])
        else:
            assert task["worker_id"] == "amd" and reservation["memory_gb"] == 200
            memory.append(span)
    assert set(by_device) == {("amd", 0), ("amd", 1), ("nv", 0)}
    for device, spans in by_device.items():
        assert _overlaps(spans) == 1, (device, spans)  # one task per device at any time
    assert _overlaps(memory) <= 2, memory
    # Everything was released.
    for worker in cluster.api("GET", "/api/workers").json()["workers"]:
        usage = worker["resources"]
        assert usage["gpus"]["reserved"] == 0 and usage["memory_gb"]["reserved"] == 0, worker["worker_id"]
    # A task that could never fit is refused with the reason.
    refused = cluster.submit({"type": "custom", "config": {"command": ["true"]}, "resources": {"memory_gb": 4096}})
    assert refused.status_code == 422 and "4096 GB of memory to reserve" in refused.text


def _device_spans(tasks: list[dict[str, Any]]) -> dict[tuple[str, int], list[tuple[float, float]]]:
    spans: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for task in tasks:
        (device,) = task["reservation"]["gpus"]
        spans.setdefault((task["worker_id"], device), []).append((_epoch(task["start_time"]), _epoch(task["end_time"])))
        assert f"DEVICES None {device}" in task["result"]["output"], (task["task_id"], task["result"]["output"])
    return spans


def test_reservations_hold_across_a_leader_failover(ha: HACluster) -> None:
    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    worker_key = ha.api("POST", leader, "/api/keys", json={"name": "gpu-workers", "role": "worker"}).json()["key"]
    ha.start_worker("amd", worker_key, slots=6, simulate="amd-mi250.json")
    wait_for(lambda: any(w["connected"] for w in ha.api("GET", ha.leader() or leader, "/api/workers").json()["workers"]),
             90, what="the worker online")
    ids = [t["task_id"] for t in ha.submit_anywhere([_gpu_task(i, "rocm", seconds=4) for i in range(5)])]
    # Two run (one per device), three wait for a device although four slots are free.
    wait_for(lambda: sum(1 for i in ids if (ha.task(i) or {}).get("status") == "running") == 2, 90,
             what="two GPU tasks running")
    ha.nodes[leader].kill(signal.SIGKILL)
    ha.nodes[leader].wait()
    survivors = [i for i in ha.ids if i != leader]
    ha.wait_leader(survivors, timeout=90)
    tasks = [wait_for(lambda i=i: (t := ha.task(i)) and t["status"] in ("completed", "failed") and t, 240,
                      what=f"{i} to finish after the failover") for i in ids]
    assert all(t["status"] == "completed" for t in tasks), [(t["task_id"], t.get("error")) for t in tasks]
    # The new leader knew which devices were held: never two tasks on one device at a time.
    for device, spans in _device_spans(tasks).items():
        assert _overlaps(spans) == 1, (device, spans)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


HOOK = """import sys, json
doc = json.load(sys.stdin)
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(doc) + "\\n")
"""


def test_autoscale_hook_gets_the_recommendation_when_utilisation_crosses(cluster: Cluster, tmp_path: Path) -> None:
    hook, calls = tmp_path / "hook.py", tmp_path / "calls.jsonl"
    hook.write_text(HOOK)
    # Also a test-only threshold for the coordinator's own health: any memory use is critical.
    cluster.start_coordinator(env={"DTF_EVALUATION_INTERVAL": "0.5",
                                   "DTF_AUTOSCALE_HOOK": f"{sys.executable} {hook} {calls}",
                                   "DTF_HEALTH_CHECK_INTERVAL": "0.5", "DTF_HEALTH_MEMORY_CRITICAL": "0"})
    cluster.start_worker("w1", slots=2)
    cluster.wait_workers(1)
    ids = [cluster.submit({"type": "custom", "config": {"name": "sleep", "kwargs": {"seconds": 4}}}).json()["task_id"]
           for _ in range(2)]

    def recommendations() -> list[dict[str, Any]]:
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    up = wait_for(lambda: [r for r in recommendations() if r["recommendation"] == "scale_up"], 60,
                  what="a scale_up call of the hook")[0]
    assert up["utilisation"] >= 0.8 and up["ratios"]["slots"] == 1.0 and up["workers"] == 1
    assert up["thresholds"] == {"scale_up": 0.8, "scale_down": 0.3} and up["previous"] != "scale_up"
    for task_id in ids:
        cluster.wait_task(task_id)
    down = wait_for(lambda: [r for r in recommendations() if r["recommendation"] == "scale_down"
                             and r["timestamp"] > up["timestamp"]], 60, what="a scale_down call after the burst")
    # Called on crossings only, not on every evaluation (there were many in between).
    api = cluster.api("GET", "/api/scaling/recommendations").json()
    assert len(api["recommendations"]) > len(recommendations()) and api["hook_calls"] == len(recommendations())
    assert [r["recommendation"] for r in recommendations()].count("scale_up") == 1 and down
    assert "dtf_scaling_recommendation" in cluster.api("GET", "/metrics").text
    node_alerts = [a for a in cluster.api("GET", "/api/health/alerts").json()["recent"] if a.get("source") == "node"]
    assert any(a["metric"] == "memory_percent" and a["level"] == "critical" and a["threshold"] == 0
               for a in node_alerts), node_alerts
    cluster.coordinator.stop()
    with duckdb.connect(str(cluster.data_dir / "dtf.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT recommendation, hook_called FROM scaling_recommendations ORDER BY timestamp").fetchall()
        alert_rows = con.execute("SELECT source_kind, metric, level FROM health_alerts").fetchall()
    assert ("scale_up", True) in rows and len(rows) >= len(api["recommendations"])
    assert ("node", "memory_percent", "critical") in alert_rows


async def _health_alert(cluster: Cluster, got: list[dict[str, Any]]) -> None:
    url = cluster.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(url, extra_headers=[(b"X-API-Key", cluster.admin_key.encode())]) as ws:
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "health_alerts", "filter": {"worker": "w1"}}))
        with trio.fail_after(90):
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "health_alert":
                    got.append(message)
                    return


def test_critical_health_drains_and_quarantines_then_a_canary_brings_it_back(cluster: Cluster) -> None:
    cluster.start_coordinator()
    pushes: list[dict[str, Any]] = []

    async def watch() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_health_alert, cluster, pushes)
            await trio.sleep(1.0)  # subscribed before the worker's first heartbeat
            # A test-only threshold: any CPU use is critical for this worker.
            await trio.to_thread.run_sync(lambda: cluster.start_worker(
                "w1", simulate="nvidia-a100.json", env={"DTF_HEALTH_CPU_CRITICAL": "0"}))

    trio.run(watch)
    (alert,) = pushes
    assert alert["worker"] == "w1" and alert["metric"] == "cpu_percent" and alert["level"] == "critical"
    assert alert["threshold"] == 0 and isinstance(alert["value"], float)
    worker = wait_for(lambda: (w := cluster.api("GET", "/api/workers/w1").json())["quarantine"] and w, 60,
                      what="w1 quarantined")
    assert worker["drained"] and worker["quarantine"]["state"] == "quarantined"
    assert "critical health" in worker["quarantine"]["reason"]
    # No work goes to it while it is out.
    held = cluster.submit({"type": "custom", "task_id": "held", "config": {"command": ["true"]}}).json()
    assert cluster.task(held["task_id"])["status"] == "pending"
    # The machine is "fixed": restarted with the normal thresholds. It passes a canary of each kind it claims.
    cluster.workers[-1].stop()
    cluster.start_worker("w1", simulate="nvidia-a100.json")
    back = wait_for(lambda: (w := cluster.api("GET", "/api/workers/w1").json())["quarantine"] is None
                    and w.get("connected") and w, 120, what="w1 back after its canary round")
    assert back["drained"] is False and back["recovered"]["attempts"] == 1
    canaries = [cluster.task(f"canary-w1-1-{kind}") for kind in ("cpu", "cuda")]
    assert all(t["status"] == "completed" and t["worker_id"] == "w1" for t in canaries), canaries
    assert canaries[1]["reservation"]["gpus"] == [0]
    assert cluster.wait_task("held", timeout=60)["worker_id"] == "w1"
    alerts = cluster.api("GET", "/api/health/alerts").json()
    assert any(a["worker"] == "w1" and a["level"] == "critical" for a in alerts["recent"] if "worker" in a)
    cluster.stop()
    cluster.coordinator.stop()
    with duckdb.connect(str(cluster.data_dir / "dtf.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT source_kind, source_id, metric, level, threshold FROM health_alerts "
                           "WHERE source_kind = 'worker'").fetchall()
    assert ("worker", "w1", "cpu_percent", "critical", 0.0) in rows


def test_workers_restart_and_stop_from_the_cli(cluster: Cluster) -> None:
    url = cluster.start_coordinator()
    node = cluster.start_worker("w1")
    first = cluster.wait_workers(1)[0]
    auth = ("--coordinator", url, "--api-key", cluster.admin_key)
    drained = cluster.cli("workers", "drain", "w1", *auth, "--json")
    assert drained.returncode == 0 and json.loads(drained.stdout)["drained"] is True
    resumed = cluster.cli("workers", "resume", "w1", *auth)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    restarted = cluster.cli("workers", "restart", "w1", *auth)
    assert restarted.returncode == 0, restarted.stderr
    # Same process id (a new program image), registered again: the stop flag is gone.
    wait_for(lambda: "restarting:" in node.output(), 60, what="the worker to restart")
    again = wait_for(lambda: (w := cluster.api("GET", "/api/workers/w1").json()).get("connected")
                     and not w.get("stopping") and w["registration_time"] == first["registration_time"]
                     and w["last_heartbeat"] and w, 60, what="w1 connected again")
    assert node.proc.poll() is None and again["connected"]
    task = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(task["task_id"])["status"] == "completed"
    stopped = cluster.cli("workers", "stop", "w1", *auth)
    assert stopped.returncode == 0 and "told to stop" in stopped.stdout
    assert node.wait(timeout=60) == 0  # finished, left cleanly
    unknown = cluster.cli("workers", "stop", "nobody", *auth)
    assert unknown.returncode != 0 and "no worker 'nobody'" in unknown.stderr


def test_infrastructure_failures_in_a_row_quarantine_a_worker(cluster: Cluster) -> None:
    url = cluster.start_coordinator(env={"DTF_HEALTH_FAILURE_THRESHOLD": "2", "DTF_HEALTH_RECOVERY_ATTEMPTS": "0"})
    cluster.start_worker("w1", slots=1)
    cluster.wait_workers(1)
    # The worker's own disk layout breaks: its work directory is a file, so no task can get a directory.
    work = cluster.worker_dir("w1") / "work"
    if work.is_dir():
        shutil.rmtree(work)
    work.write_text("not a directory")
    ids = [cluster.submit({"type": "custom", "config": {"command": ["true"]}, "max_retries": 0}).json()["task_id"]
           for _ in range(2)]
    for task_id in ids:
        assert "worker error: NotADirectoryError" in cluster.wait_task(task_id)["error"]
    worker = wait_for(lambda: (w := cluster.api("GET", "/api/workers/w1").json())["quarantine"] and w, 60,
                      what="w1 quarantined")
    assert worker["quarantine"]["reason"] == "2 infrastructure failures in a row" and worker["drained"]
    # recovery_attempts 0: no canary round; it stays out until an operator resumes it.
    assert cluster.api("GET", "/api/workers/w1").json()["quarantine"]["attempts"] == 0
    resumed = cluster.cli("workers", "resume", "w1", "--coordinator", url, "--api-key", cluster.admin_key, "--json")
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["quarantine"] is None
    work.unlink()  # repaired
    task = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(task["task_id"])["status"] == "completed"
