"""The queue policy and the load balancer through real processes: a coordinator and workers on
127.0.0.1 (simulated hardware profiles where it matters), tasks that really run.

- aging: a priority-0 task starts while a flood of priority-100 tasks is still arriving;
- preemption: a running low-priority task is given back for an urgent one and runs again without
  spending a retry (max_retries 0);
- error classes: a missing test file fails at once with its reason; a timeout is retried (with backoff);
- balancer strategies: each one's placement on a fixed scenario, and packed with GPU reservations.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import Cluster, wait_for

SLEEP = {"type": "custom", "config": {"command": ["sleep", "0.4"]}}


def _start(cluster: Cluster, **env: str) -> None:
    cluster.start_coordinator(env={f"DTF_{k.upper()}": v for k, v in env.items()})


def test_low_priority_task_starts_under_a_flood_of_high_priority_ones(cluster: Cluster) -> None:
    # 20 points a second: a priority-0 task reaches the top after 5 s of waiting.
    _start(cluster, aging_rate="20")
    cluster.start_worker("w1", slots=1, simulate="cpu-only.json")
    cluster.wait_workers(1)
    stop = threading.Event()
    submitted: list[str] = []

    def flood() -> None:
        # Far more top-priority work than one slot can run: ~10 tasks a second of 0.4 s each.
        with httpx.Client(base_url=cluster.url, headers={"X-API-Key": cluster.admin_key}, timeout=30) as client:
            while not stop.is_set():
                created = client.post("/api/tasks", json=[{**SLEEP, "priority": 100}] * 3)
                if created.status_code == 201:
                    submitted.extend(t["task_id"] for t in created.json())
                stop.wait(0.3)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        # The flood is on (the slot busy, a backlog queued) before the priority-0 task arrives.
        wait_for(lambda: len(submitted) >= 9 and cluster.api("GET", "/api/status").json()["queue_depth"] >= 3,
                 60, what="a backlog of priority-100 tasks")
        low = cluster.submit({**SLEEP, "priority": 0, "name": "low"}).json()
        # While it waits, the API and `dtf tasks show` say why.
        waiting = wait_for(lambda: (t := cluster.task(low["task_id"]))["status"] == "pending"
                           and t.get("wait_reason") and t, 60, what="a wait reason")
        assert waiting["wait"]["code"] in ("no_capable_worker_free", "behind"), waiting["wait"]
        shown = cluster.cli("tasks", "show", low["task_id"], "--coordinator", cluster.url,
                            env={"DTF_API_KEY": cluster.admin_key})
        assert shown.returncode == 0 and "waiting:" in shown.stdout, shown.stdout + shown.stderr
        started = wait_for(lambda: (t := cluster.task(low["task_id"]))["status"] in ("running", "completed")
                           and t, 180, what="the priority-0 task to start under the flood")
    finally:
        stop.set()
        thread.join(timeout=30)
    # It started while the flood was still queued: top-priority tasks submitted after it but before it
    # started were still waiting behind it.
    assert started["wait_reason"] is None
    start = started["start_time"]
    later = [cluster.task(t) for t in submitted]
    overtaken = [t for t in later if low["create_time"] < t["create_time"] < start
                 and (t["start_time"] is None or t["start_time"] > start)]
    assert overtaken, "no priority-100 task was waiting when the priority-0 one started"
    assert cluster.wait_task(low["task_id"], timeout=120)["status"] == "completed"


def test_preemption_requeues_without_spending_a_retry(cluster: Cluster) -> None:
    _start(cluster, preemption_threshold="50")
    cluster.start_worker("w1", slots=1, simulate="nvidia-t4.json")
    cluster.wait_workers(1)
    # The first attempt would run for a minute; a rerun ends at once. max_retries 0: a retry spent
    # on the preemption would fail it.
    script = 'if [ "$DTF_ATTEMPT" = 1 ]; then sleep 60; fi; echo done'
    victim = cluster.submit({"type": "custom", "priority": 1, "max_retries": 0,
                             "config": {"command": ["sh", "-c", script]}}).json()
    wait_for(lambda: cluster.task(victim["task_id"])["status"] == "running", 60, what="the victim to run")
    urgent = cluster.submit({"type": "custom", "priority": 90, "requirements": {"hardware": ["cuda"]},
                             "config": {"command": ["true"]}}).json()
    done = cluster.wait_task(urgent["task_id"], timeout=120)
    assert done["status"] == "completed" and done["worker_id"] == "w1"
    after = cluster.wait_task(victim["task_id"], timeout=120)
    assert after["status"] == "completed", after
    assert after["preemptions"] == 1 and after["attempts"] == 2 and after["max_retries"] == 0
    attempts = cluster.api("GET", f"/api/tasks/{victim['task_id']}/attempts").json()
    statuses = [a["status"] for a in attempts["attempts"]]
    assert "preempted" in statuses and "completed" in statuses, attempts


def test_non_retryable_error_fails_once_with_its_reason(cluster: Cluster, tmp_path: Path) -> None:
    _start(cluster, retry_backoff="0.2")
    cluster.start_worker("w1", slots=2)
    cluster.wait_workers(1)
    missing = cluster.submit({"type": "test", "max_retries": 3,
                              "config": {"test_file": "no/such/test_file.py"}}).json()
    slow = cluster.submit({"type": "custom", "max_retries": 1, "timeout_seconds": 0.5,
                           "config": {"command": ["sleep", "30"]}}).json()
    failed = cluster.wait_task(missing["task_id"], timeout=120)
    assert failed["status"] == "failed" and failed["attempts"] == 1 and failed["error_class"] == "missing_file"
    assert "does not exist on this worker" in failed["error"] and "not retried" in failed["error"]
    # A timeout is another matter: retried (after its backoff) until max_retries is spent.
    timed_out = cluster.wait_task(slow["task_id"], timeout=120)
    assert timed_out["status"] == "failed" and timed_out["attempts"] == 2 and timed_out["error_class"] == "timeout"
    assert "timed out" in timed_out["error"] and "gave up after 2 attempts" in timed_out["error"]


def _run_and_place(cluster: Cluster, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    created = cluster.submit(tasks).json()
    return [cluster.wait_task(t["task_id"], timeout=120) for t in created]


LONG = {"type": "custom", "config": {"command": ["sleep", "2"]}}


@pytest.mark.parametrize("strategy", ["packed", "least_loaded", "fair_share"])
def test_balancer_strategy_placement(cluster: Cluster, strategy: str) -> None:
    _start(cluster, balancer_strategy=strategy)
    for name in ("w-a", "w-b", "w-c"):
        cluster.start_worker(name, slots=4)
    cluster.wait_workers(3)
    tasks = [{**LONG, "submitter": "alice"}, {**LONG, "submitter": "alice"}, {**LONG, "submitter": "alice"},
             {**LONG, "submitter": "bob"}, {**LONG, "submitter": "bob"}, {**LONG, "submitter": "bob"}]
    done = _run_and_place(cluster, tasks)
    assert {t["status"] for t in done} == {"completed"}
    placed = [t["worker_id"] for t in done]
    if strategy == "packed":
        # Fill the first worker (4 slots), then the next.
        assert placed.count("w-a") == 4 and placed.count("w-b") == 2 and "w-c" not in placed
    else:
        # Spread: two per worker; fair_share also spreads each submitter's over the workers.
        assert sorted(placed.count(w) for w in ("w-a", "w-b", "w-c")) == [2, 2, 2]
        if strategy == "fair_share":
            for who in ("alice", "bob"):
                assert len({t["worker_id"] for t in done if t["submitter"] == who}) == 3
    # Worker load is in the API's worker view and in /metrics.
    view = cluster.api("GET", "/api/workers/w-a").json()
    assert "load" in view and view["performance_metrics"]["slots"] == 4
    metrics = cluster.api("GET", "/metrics").text
    assert 'dtf_worker_load{worker_id="w-a"}' in metrics


def test_balancer_performance_aware_prefers_the_faster_worker(cluster: Cluster) -> None:
    _start(cluster, balancer_strategy="performance_aware")
    # "a-slow" sorts first, so any tie-break would pick it: only the history sends work to "b-fast".
    cluster.start_worker("a-slow", slots=1)
    cluster.start_worker("b-fast", slots=1)
    cluster.wait_workers(2)
    script = 'if [ "$DTF_WORKER_ID" = a-slow ]; then sleep 1.5; fi; true'
    task = {"type": "custom", "config": {"command": ["sh", "-c", script]}}
    warm = _run_and_place(cluster, [task, task])
    assert {t["worker_id"] for t in warm} == {"a-slow", "b-fast"}  # both idle: one each, history for both
    for _ in range(3):
        (one,) = _run_and_place(cluster, [task])
        assert one["worker_id"] == "b-fast"


def test_packed_placement_composes_with_gpu_reservations(cluster: Cluster) -> None:
    # Reservations and the balancer are one planning pass: ``packed`` fills the first worker only as far
    # as its unreserved devices go. Each simulated MI250 box has 2 ROCm devices and 8 slots, so the third
    # one-GPU task goes to the second box at once rather than waiting for a device on the first.
    _start(cluster, balancer_strategy="packed")
    for name in ("w-a", "w-b"):
        cluster.start_worker(name, slots=8, simulate="amd-mi250.json")
    cluster.wait_workers(2)
    gpu_task = {**LONG, "requirements": {"hardware": ["rocm"]}, "resources": {"gpus": 1}}
    done = _run_and_place(cluster, [gpu_task, gpu_task, gpu_task, LONG])
    assert {t["status"] for t in done} == {"completed"}, [(t["task_id"], t.get("error")) for t in done]
    gpu, cpu = done[:3], done[3]
    assert sorted(t["worker_id"] for t in gpu) == ["w-a", "w-a", "w-b"]
    assert sorted(t["reservation"]["gpus"][0] for t in gpu if t["worker_id"] == "w-a") == [0, 1]
    # A task that reserves nothing still packs onto the first worker: only slots bound it there.
    assert cpu["worker_id"] == "w-a"
