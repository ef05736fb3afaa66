"""The multi-device orchestrator with real processes: a coordinator (or three) and three workers on loopback.

An orchestrated benchmark is split across three workers and merged; a cancel cascades to every subtask
and kills the processes that run them; and both hold across a SIGKILL of the leader mid-run, because
the parent and its subtasks live in the replicated state.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

from tests.integration.harness import Cluster, HACluster, wait_for

SLEEPY_TEST = """
import os, pathlib, time

def test_sleeps():
    pathlib.Path(__file__).with_suffix(".pid").write_text(str(os.getpid()))
    time.sleep({seconds})
"""


def _sleepy_files(root: Path, prefix: str, count: int, seconds: float) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = root / f"test_{prefix}_{i}.py"
        path.write_text(SLEEPY_TEST.format(seconds=seconds))
        paths.append(str(path))
    return paths


def _pid_gone(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return True
    return False


def _tiny_benchmark(batch_sizes: list[int]) -> dict[str, Any]:
    # The source design's flat task_data: model_name and config keys beside the task's own.
    return {"type": "benchmark", "model_name": "prajjwal1/bert-tiny", "batch_sizes": batch_sizes,
            "iterations": 3, "warmup": 1, "sequence_length": 8, "max_retries": 1}


async def _next(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] == kind:
            return message


async def test_a_benchmark_is_split_across_three_workers_and_merged(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    for name in ("w1", "w2", "w3"):
        await trio.to_thread.run_sync(lambda n=name: cluster.start_worker(n, slots=1))
    await trio.to_thread.run_sync(lambda: cluster.wait_workers(3, timeout=60))
    url = cluster.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(url, extra_headers=[(b"X-API-Key", cluster.admin_key.encode())]) as ws:
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "orchestrated_task_updates"}))
        assert (await _next(ws, "subscribe_response"))["status"] == "ok"
        # The websocket request of the source design, answered once the orchestration is durable.
        await ws.send_message(json.dumps({"type": "orchestrate_task", "request_id": "req-1", "strategy": "data_parallel",
                                          "task_data": _tiny_benchmark([1, 2, 4])}))
        answer = await _next(ws, "orchestrate_task_response")
        assert answer["request_id"] == "req-1" and answer["success"] is True, answer
        assert answer["message"] == "Task orchestrated with strategy: data_parallel"
        parent_id = answer["task_id"]
        pushes: list[dict[str, Any]] = []
        with trio.fail_after(240):
            while not pushes or pushes[-1]["status"] == "in_progress":
                push = await _next(ws, "orchestrated_task_update")
                assert push["task_id"] == parent_id
                pushes.append(push)
    assert pushes[-1]["status"] == "completed" and pushes[-1]["completion_percentage"] == 100
    percentages = [p["completion_percentage"] for p in pushes]
    assert percentages == sorted(percentages) and {0, 33, 66} & set(percentages)
    assert all(len(p["subtasks"]) == 3 and {"subtask_id", "status"} <= set(p["subtasks"][0]) for p in pushes)
    assert any(s["status"] == "running" for p in pushes for s in p["subtasks"])

    doc = cluster.api("GET", f"/api/orchestrated_task/{parent_id}").json()
    assert doc["status"] == "completed" and doc["strategy"] == "data_parallel"
    subtasks = [cluster.task(s["subtask_id"]) for s in doc["subtasks"]]
    # Each subtask is a task of the cluster, with its parent; one per worker, each with its batch size.
    assert all(t["status"] == "completed" and t["parent_id"] == parent_id for t in subtasks)
    assert sorted(t["worker_id"] for t in subtasks) == ["w1", "w2", "w3"]
    assert sorted(t["config"]["batch_sizes"][0] for t in subtasks) == [1, 2, 4]
    merged = doc["result"]
    assert merged["status"] == "success" and merged["workers"] == ["w1", "w2", "w3"]
    assert merged["metrics"]["configurations"] == 3 and merged["metrics"]["benchmarks_count"] == 3
    best = max(subtasks, key=lambda t: t["result"]["metrics"]["best_throughput"])
    assert merged["metrics"]["best_throughput"] == best["result"]["metrics"]["best_throughput"]
    assert merged["metrics"]["best_throughput_batch_size"] == best["config"]["batch_sizes"][0]
    # The real measurement rows of every subtask are in DuckDB under its result id.
    for part in merged["subtasks"]:
        rows = cluster.api("GET", f"/api/results/{part['result_id']}").json()["benchmarks"]
        assert [r["batch_size"] for r in rows] == part["shard"]["batch_sizes"]
    listed = cluster.api("GET", "/api/orchestrated_tasks", params={"status": "completed"}).json()
    assert [o["task_id"] for o in listed["orchestrated_tasks"]] == [parent_id] and listed["total"] == 1


def test_cancel_cascades_to_every_subtask_and_stops_their_processes(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_coordinator()
    for name in ("w1", "w2", "w3"):
        cluster.start_worker(name, slots=1)
    cluster.wait_workers(3, timeout=60)
    files = _sleepy_files(tmp_path / "suite", "cancel", 3, 600)
    created = cluster.api("POST", "/api/orchestrate", json={
        "strategy": "data_parallel", "name": "long suite",
        "task_data": {"type": "test", "config": {"test_file": files}, "max_retries": 0}})
    assert created.status_code == 201, created.text
    parent = created.json()
    assert parent["status"] == "in_progress" and len(parent["subtasks"]) == 3
    wait_for(lambda: all(Path(f).with_suffix(".pid").exists() for f in files), 120, what="3 subtasks running")
    doc = cluster.api("GET", f"/api/orchestrated_task/{parent['task_id']}").json()
    assert [s["status"] for s in doc["subtasks"]] == ["running"] * 3
    assert sorted(s["worker_id"] for s in doc["subtasks"]) == ["w1", "w2", "w3"]

    cancelled = cluster.api("POST", "/api/cancel_orchestrated_task", json={"task_id": parent["task_id"]})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert [s["status"] for s in cancelled.json()["subtasks"]] == ["cancelled"] * 3
    # The workers were told: the pytest processes are killed and every slot is free again.
    wait_for(lambda: all(_pid_gone(Path(f).with_suffix(".pid")) for f in files), 60, what="subtask processes killed")
    wait_for(lambda: all(w["running"] == 0 for w in cluster.api("GET", "/api/workers").json()["workers"]), 60,
             what="workers idle")
    again = cluster.api("POST", "/api/cancel_orchestrated_task", json={"task_id": parent["task_id"]})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_finished"
    # A subtask is reported like any task, under the source design's route too; other tasks are not subtasks.
    plain = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    refused = cluster.api("POST", f"/api/subtasks/{plain['task_id']}/complete", json={})
    assert refused.status_code == 404 and "no subtask" in refused.json()["error"]["message"]
    # Bad requests are told what is accepted.
    bad = cluster.api("POST", "/api/orchestrate", json={"task_data": {"type": "benchmark", "model_name": "bert"},
                                                        "strategy": "pipeline"})
    assert bad.status_code == 400 and "data_parallel" in bad.json()["error"]["message"]
    custom = cluster.api("POST", "/api/orchestrate", json={
        "task_data": {"type": "custom", "config": {"command": ["true"]}}, "strategy": "function_parallel"})
    assert custom.status_code == 422 and custom.json()["error"]["code"] == "cannot_split"



def _orchestrated(ha: HACluster, parent_id: str) -> dict[str, Any] | None:
    leader = ha.leader()
    if leader is None:
        return None
    response = ha.api("GET", leader, f"/api/orchestrated_task/{parent_id}")
    return response.json() if response.status_code == 200 else None


def test_orchestrations_survive_a_leader_failover_mid_run(ha: HACluster, tmp_path: Path) -> None:
    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    worker_key = ha.api("POST", leader, "/api/keys", json={"name": "orch-workers", "role": "worker"}).json()["key"]
    for name in ("w1", "w2", "w3"):
        ha.start_worker(name, worker_key, slots=2)
    wait_for(lambda: len([w for w in ha.api("GET", ha.leader() or leader, "/api/workers").json()["workers"]
                          if w["status"] == "online"]) == 3, 90, what="3 workers online")
    short = _sleepy_files(tmp_path / "suite", "short", 3, 6)
    long = _sleepy_files(tmp_path / "suite", "long", 3, 600)
    ids = {}
    for label, files in (("short", short), ("long", long)):
        response = ha.api("POST", leader, "/api/orchestrate", json={
            "strategy": "data_parallel", "task_id": f"orch-{label}",
            "task_data": {"type": "test", "config": {"test_file": files}}})
        assert response.status_code == 201, response.text
        ids[label] = response.json()["task_id"]
    wait_for(lambda: all(Path(f).with_suffix(".pid").exists() for f in short + long), 120, what="6 subtasks running")

    ha.nodes[leader].kill(signal.SIGKILL)
    ha.nodes[leader].wait()
    survivors = [i for i in ha.ids if i != leader]
    new_leader = ha.wait_leader(survivors, timeout=90)
    assert new_leader != leader
    # The new leader knows both orchestrations; the short one finishes and is merged by it.
    done = wait_for(lambda: (d := _orchestrated(ha, ids["short"])) and d["status"] != "in_progress" and d, 180,
                    what="the short orchestration to finish after the failover")
    assert done["status"] == "completed", done
    assert done["result"]["metrics"]["passed"] == 3 and done["result"]["subtasks_completed"] == 3
    assert {s["status"] for s in done["subtasks"]} == {"completed"}
    # Every follower applied the same parent (replicated, not leader-local).
    for node_id in survivors:
        view = wait_for(lambda n=node_id: (r := ha.api("GET", n, f"/api/orchestrated_task/{ids['short']}",
                                                       params={"stale": "true"}).json())["status"] == "completed" and r,
                        60, what=f"{node_id} to apply the merge")
        assert view["result"] == done["result"]

    # The long one is still running under the new leader; cancelling it there cascades.
    current = _orchestrated(ha, ids["long"])
    assert current is not None and current["status"] == "in_progress"
    leader_now = ha.wait_leader(survivors)
    cancelled = ha.api("POST", leader_now, "/api/cancel_orchestrated_task", json={"task_id": ids["long"]})
    assert cancelled.status_code == 200, cancelled.text
    assert [s["status"] for s in cancelled.json()["subtasks"]] == ["cancelled"] * 3
    wait_for(lambda: all(_pid_gone(Path(f).with_suffix(".pid")) for f in long), 90,
             what="the long subtasks' processes killed after the failover")
