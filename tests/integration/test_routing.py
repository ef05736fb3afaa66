"""Hardware-aware routing with simulated hardware profiles (flagged as simulated)."""

from __future__ import annotations

from tests.integration.harness import Cluster


def test_cuda_task_never_reaches_cpu_worker_and_impossible_is_refused(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("cpu1", simulate="cpu-only.json", slots=4)
    cluster.start_worker("gpu1", simulate="nvidia-a100.json", slots=1)
    workers = {w["worker_id"]: w for w in cluster.wait_workers(2)}
    assert workers["gpu1"]["simulated"] is True
    assert "cuda" in workers["gpu1"]["hardware"] and "cuda" not in workers["cpu1"]["hardware"]

    gpu_tasks = [{"type": "custom", "requirements": {"hardware": ["cuda"], "min_gpu_memory_gb": 40},
                  "config": {"command": ["true"]}} for _ in range(4)]
    cpu_tasks = [{"type": "custom", "config": {"command": ["true"]}} for _ in range(4)]
    created = cluster.submit(gpu_tasks + cpu_tasks).json()
    for task in created[:4]:
        assert cluster.wait_task(task["task_id"])["worker_id"] == "gpu1"
    for task in created[4:]:
        assert cluster.wait_task(task["task_id"])["status"] == "completed"

    refused = cluster.submit({"type": "custom", "requirements": {"hardware": ["rocm"]}, "config": {"command": ["true"]}})
    assert refused.status_code == 422
    assert "rocm" in refused.json()["error"]["message"]
    parked = cluster.submit({"type": "custom", "requirements": {"hardware": ["rocm"]}, "config": {"command": ["true"]}},
                            allow_unschedulable="true")
    assert parked.status_code == 201 and parked.json()["status"] == "unschedulable"
    cluster.start_worker("amd1", simulate="amd-mi250.json", slots=1)
    task = cluster.wait_task(parked.json()["task_id"], timeout=60)
    assert task["status"] == "completed" and task["worker_id"] == "amd1"


def test_idle_slots_are_filled_before_any_worker_queues_extra_tasks(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("big", slots=2)
    cluster.start_worker("small", slots=1)
    cluster.wait_workers(2)
    created = cluster.submit([{"type": "custom", "config": {"command": ["sleep", "8"]}} for _ in range(3)]).json()
    running = [cluster.wait_task(t["task_id"], states=("running",), timeout=20) for t in created]
    assert sorted(t["worker_id"] for t in running) == ["big", "big", "small"]
