"""Validation messages, requirement matching and assignment planning."""

from __future__ import annotations

import pytest

from dtf_app.coordinator import scheduler
from dtf_app.coordinator.scheduler import ReadyQueue, TaskValidationError, plan_assignments, validate_task

CPU = {"worker_id": "cpu", "hardware": ["cpu"], "tags": [],
       "capabilities": {"memory": {"total_gb": 16}, "cpu": {"cores": 2}, "platform": {"system": "Linux"}}}
GPU = {"worker_id": "gpu", "hardware": ["cpu", "cuda"], "tags": ["fast"],
       "capabilities": {"memory": {"total_gb": 256}, "cpu": {"cores": 64}, "platform": {"os": "linux"},
                        "gpu": {"devices": [{"type": "cuda", "memory_gb": 80, "compute_capability": "8.0"}]}}}


@pytest.mark.parametrize(("doc", "fragment"), [
    ([], "must be a JSON object"),
    ({"type": "nope"}, "task.type must be one of test, benchmark, custom"),
    ({"type": "custom", "config": {"command": ["x"]}, "priority": "high"}, "priority must be an integer"),
    ({"type": "custom", "config": {"command": ["x"]}, "priority": -1}, "priority must be an integer"),
    ({"type": "custom", "config": {"command": ["x"]}, "priority": True}, "priority must be an integer"),
    ({"type": "custom", "config": {"command": "ls -l"}}, "command must be an array of strings"),
    ({"type": "custom", "config": {}}, "needs exactly one of"),
    ({"type": "test", "config": {}}, "test_file is required"),
    ({"type": "benchmark", "config": {"model": "bert", "precision": "fp64"}}, "precision must be one of"),
    ({"type": "benchmark", "config": {"model": "bert", "batch_sizes": [0]}}, "batch_sizes"),
    ({"type": "custom", "config": {"command": ["x"]}, "requirements": {"gpus": 1}}, "unknown key(s) gpus"),
    ({"type": "custom", "config": {"command": ["x"]}, "requirements": {"hardware": ["tpu"]}}, "accepted: cpu"),
    ({"type": "custom", "config": {"command": ["x"]}, "requirements": {"min_memory_gb": "8"}}, "non-negative number"),
    ({"type": "custom", "config": {"command": ["x"]}, "timeout_seconds": 0}, "timeout_seconds"),
    ({"type": "custom", "config": {"command": ["x"]}, "colour": "red"}, "unknown key(s) colour"),
])
def test_validation_messages_say_where_and_what(doc: object, fragment: str) -> None:
    with pytest.raises(TaskValidationError) as info:
        validate_task(doc)
    assert fragment in str(info.value)


def test_validation_fills_defaults() -> None:
    doc = validate_task({"type": "test", "config": {"test_file": "t.py"}, "requirements": {"hardware": "cuda"}})
    assert doc["priority"] == 1 and doc["timeout_seconds"] == 3600 and doc["max_retries"] == 3
    assert doc["requirements"]["hardware"] == ["cuda"]


def test_requirement_matching() -> None:
    req = {"hardware": ["cuda"], "min_gpu_memory_gb": 40, "min_cuda_compute": 7.5, "tags": ["fast"], "os": "linux"}
    assert scheduler.worker_satisfies(GPU, req)
    assert not scheduler.worker_satisfies(CPU, req)
    assert "hardware cuda" in scheduler.unmet_requirements(CPU, req)
    assert not scheduler.worker_satisfies(GPU, {"min_cuda_compute": 9.0})
    assert scheduler.worker_satisfies(CPU, {"min_cpu_cores": 2, "min_memory_gb": 8, "os": "linux"})
    assert not scheduler.worker_satisfies(CPU, {"min_cpu_cores": 4})


def test_infeasibility_reason_names_what_is_missing() -> None:
    assert scheduler.infeasibility_reason([], {"hardware": ["cuda"]}) is None
    reason = scheduler.infeasibility_reason([CPU], {"hardware": ["rocm"]})
    assert reason is not None and "hardware rocm" in reason


def test_plan_orders_by_priority_then_age_and_respects_requirements() -> None:
    tasks = {
        "old-low": {"task_id": "old-low", "priority": 1, "seq": 0, "requirements": {}},
        "new-high": {"task_id": "new-high", "priority": 9, "seq": 1, "requirements": {}},
        "gpu-only": {"task_id": "gpu-only", "priority": 5, "seq": 2, "requirements": {"hardware": ["cuda"]}},
        "new-low": {"task_id": "new-low", "priority": 1, "seq": 3, "requirements": {}},
    }
    queue = ReadyQueue()
    for task in tasks.values():
        queue.push(task)
    plan = plan_assignments(queue, tasks, {"cpu": CPU, "gpu": GPU}, {"cpu": 2, "gpu": 0})
    assert plan == [("new-high", "cpu"), ("old-low", "cpu")]
    queue.discard("new-high")
    queue.discard("old-low")
    plan = plan_assignments(queue, tasks, {"cpu": CPU, "gpu": GPU}, {"cpu": 5, "gpu": 1})
    assert ("gpu-only", "gpu") in plan and ("new-low", "cpu") in plan


def test_ready_queue_large_iteration_is_ordered() -> None:
    queue = ReadyQueue()
    for i in range(500):
        queue.push({"task_id": f"t{i}", "priority": i % 7, "seq": i})
    for i in range(0, 500, 3):
        queue.discard(f"t{i}")
    ids = list(queue.ordered())
    expected = sorted((t for t in range(500) if t % 3), key=lambda t: (-(t % 7), t))
    assert ids == [f"t{t}" for t in expected]


def test_plan_skips_tasks_already_placed_this_round() -> None:
    tasks = {f"t{i}": {"task_id": f"t{i}", "priority": 1, "seq": i, "requirements": {}} for i in range(4)}
    queue = ReadyQueue()
    for task in tasks.values():
        queue.push(task)
    first = plan_assignments(queue, tasks, {"cpu": CPU}, {"cpu": 2})
    second = plan_assignments(queue, tasks, {"cpu": CPU}, {"cpu": 5}, skip={t for t, _ in first})
    assert [t for t, _ in first] == ["t0", "t1"]
    assert [t for t, _ in second] == ["t2", "t3"]


def test_find_cycle() -> None:
    assert scheduler.find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert scheduler.find_cycle({"a": ["x-existing"]}) is None
    assert scheduler.find_cycle({"a": ["a"]}) == ["a", "a"]
    cycle = scheduler.find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]})
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}


def test_integral_floats_are_integers_and_duplicates_fold() -> None:
    doc = validate_task({"type": "benchmark", "priority": 3.0, "max_retries": 1.0,
                         "config": {"model": "bert", "batch_sizes": [1.0, 2], "iterations": 97.0},
                         "requirements": {"hardware": ["cuda", "cuda"], "min_cpu_cores": 2.0}})
    assert doc["priority"] == 3 and isinstance(doc["priority"], int) and doc["max_retries"] == 1
    assert doc["config"]["batch_sizes"] == [1, 2] and doc["config"]["iterations"] == 97
    assert doc["requirements"]["hardware"] == ["cuda"] and doc["requirements"]["min_cpu_cores"] == 2
    with pytest.raises(TaskValidationError):
        validate_task({"type": "custom", "priority": 2.5, "config": {"command": ["x"]}})
