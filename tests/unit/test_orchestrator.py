"""The multi-device orchestrator's planning and merging, and its commands in the state machine."""

from __future__ import annotations

from typing import Any

import pytest

from dtf_app.coordinator import orchestrator
from dtf_app.coordinator.orchestrator import OrchestrationError, OrchestrationUnprocessable
from dtf_app.coordinator.state import State


def _worker(worker_id: str, hardware: tuple[str, ...] = ("cpu",), **extra: Any) -> dict[str, Any]:
    return {"worker_id": worker_id, "hardware": list(hardware), "capabilities": {"hardware": list(hardware)},
            "tags": [], "max_concurrent_tasks": 1, **extra}


def _register(state: State, *workers: dict[str, Any]) -> None:
    for worker in workers:
        state.apply({"op": "RegisterWorker", "time": 1.0, "worker": worker})


def _orchestrate(state: State, body: dict[str, Any], workers: list[dict[str, Any]], parent_id: str = "o1") -> dict:
    parsed = orchestrator.parse_request(body)
    pieces = orchestrator.plan(parsed["task"], parsed["strategy"], workers, subtask_count=parsed["subtask_count"])
    parent, subtasks = orchestrator.build(parsed, parent_id, pieces)
    result, _ = state.apply({"op": "Orchestrate", "time": 10.0, "orchestration": parent, "tasks": subtasks})
    return result


def _run(state: State, task_id: str, worker_id: str, result: dict[str, Any] | None = None, *,
         fail: str | None = None, time: float = 20.0) -> None:
    attempt = state.tasks[task_id]["attempts"] + 1
    state.apply({"op": "AssignTasks", "time": time, "assignments": [
        {"task_id": task_id, "worker_id": worker_id, "attempt": attempt}]})
    state.apply({"op": "StartTasks", "time": time, "items": [{"task_id": task_id, "attempt": attempt}]})
    if fail is not None:
        state.apply({"op": "FailTasks", "time": time + 1, "items": [
            {"task_id": task_id, "attempt": attempt, "worker_id": worker_id, "error": fail, "retry": False}]})
    else:
        state.apply({"op": "CompleteTasks", "time": time + 1, "items": [
            {"task_id": task_id, "attempt": attempt, "worker_id": worker_id, "outcome": "completed",
             "result": result or {"status": "success", "metrics": {}}}]})


def _bench_result(batch: int, throughput: float, latency: float, memory: float) -> dict[str, Any]:
    return {"status": "success", "execution_time": 1.5, "environment": {"backend": "numpy", "device": "cpu"},
            "metrics": {"configurations": 1, "configurations_failed": 0, "best_throughput": throughput,
                        "best_throughput_batch_size": batch, "best_throughput_precision": "fp32",
                        "min_latency_ms": latency, "max_memory_peak_mb": memory},
            "benchmarks": [{"batch_size": batch, "throughput": throughput}]}


BENCH = {"task_data": {"type": "benchmark", "model_name": "bert-base-uncased", "batch_sizes": [1, 2, 4, 8, 16]}}


# ---------------------------------------------------------------------------------------------- requests
def test_the_flat_task_data_of_the_source_design_is_a_benchmark_config() -> None:
    parsed = orchestrator.parse_request({"task_data": {"type": "benchmark", "model_name": "bert-base-uncased",
                                                       "functions": ["latency", "memory"], "priority": 7},
                                         "strategy": "function_parallel"})
    assert parsed["strategy"] == "function_parallel"
    assert parsed["task"]["config"] == {"model": "bert-base-uncased", "functions": ["latency", "memory"]}
    assert parsed["task"]["priority"] == 7 and parsed["name"] == "benchmark bert-base-uncased"


@pytest.mark.parametrize(("body", "words"), [
    ({"strategy": "data_parallel"}, "task_data must be an object"),
    ({**BENCH, "strategy": "model_parallel"}, "strategy must be one of data_parallel"),
    ({**BENCH, "subtask_count": 0}, "subtask_count must be an integer from 1"),
    ({"task_data": {"type": "benchmark", "model_name": "bert", "model": "t5"}}, "exactly one of model_name"),
    ({"task_data": {"type": "benchmark", "model_name": "bert", "colour": 1}}, "unknown key(s) colour"),
    ({"task_data": {"type": "custom", "command": ["true"]}}, "flat form, which is a benchmark's"),
    ({"task_data": {"type": "benchmark", "model_name": "bert", "batch_sizes": [0]}}, "task_data.config.batch_sizes"),
    ({**BENCH, "extra": 1}, "unknown key(s) extra"),
])
def test_bad_requests_say_what_is_wrong(body: dict[str, Any], words: str) -> None:
    with pytest.raises(OrchestrationError, match=None) as info:
        orchestrator.parse_request(body)
    assert words in str(info.value)
    assert not isinstance(info.value, OrchestrationUnprocessable)


# ---------------------------------------------------------------------------------------------- planning
def test_data_parallel_deals_batch_sizes_over_the_capable_workers() -> None:
    parsed = orchestrator.parse_request(BENCH)
    workers = [_worker("w1"), _worker("w2"), _worker("w3")]
    pieces = orchestrator.plan(parsed["task"], "data_parallel", workers)
    assert [p["config"]["batch_sizes"] for p in pieces] == [[1, 2], [4, 8], [16]]
    assert all(p["config"]["model"] == "bert-base-uncased" for p in pieces)
    # An explicit count wins; never more shards than items.
    assert len(orchestrator.plan(parsed["task"], "data_parallel", workers, subtask_count=5)) == 5
    assert len(orchestrator.plan(parsed["task"], "data_parallel", workers, subtask_count=9)) == 5
    # Workers that cannot run it do not count.
    gpu_only = {**parsed["task"], "requirements": {"hardware": ["cuda"]}}
    assert len(orchestrator.plan(gpu_only, "data_parallel", [*workers, _worker("g", ("cpu", "cuda"))])) == 1


def test_data_parallel_splits_a_tests_files_and_refuses_custom_tasks() -> None:
    parsed = orchestrator.parse_request({"task_data": {"type": "test", "config": {
        "test_file": ["a.py", "b.py", "c.py"]}}, "subtask_count": 2})
    pieces = orchestrator.plan(parsed["task"], "data_parallel", [], subtask_count=2)
    assert [p["config"]["test_file"] for p in pieces] == [["a.py", "b.py"], "c.py"]
    custom = orchestrator.parse_request({"task_data": {"type": "custom", "config": {"command": ["true"]}}})
    with pytest.raises(OrchestrationUnprocessable, match="no data to split"):
        orchestrator.plan(custom["task"], "data_parallel", [])


def test_function_parallel_makes_one_subtask_per_function() -> None:
    parsed = orchestrator.parse_request({"task_data": {"type": "benchmark", "model_name": "t5-small"},
                                         "strategy": "function_parallel"})
    pieces = orchestrator.plan(parsed["task"], "function_parallel", [])
    assert [p["config"]["functions"] for p in pieces] == [["latency"], ["throughput"], ["memory"]]
    test = orchestrator.parse_request({"task_data": {"type": "test", "config": {"test_file": "x.py"}}})
    with pytest.raises(OrchestrationUnprocessable, match="function_parallel"):
        orchestrator.plan(test["task"], "function_parallel", [])


def test_hardware_parallel_covers_each_kind_present_once() -> None:
    parsed = orchestrator.parse_request({"task_data": {"type": "custom", "config": {"command": ["true"]}},
                                         "strategy": "hardware_parallel"})
    workers = [_worker("w1"), _worker("w2", ("cpu", "cuda")), _worker("w3", ("cpu", "rocm")),
               _worker("w4", ("cpu", "cuda"))]
    pieces = orchestrator.plan(parsed["task"], "hardware_parallel", workers)
    assert [p["requirements"]["hardware"] for p in pieces] == [["cpu"], ["cuda"], ["rocm"]]
    with pytest.raises(OrchestrationUnprocessable, match="none is connected"):
        orchestrator.plan(parsed["task"], "hardware_parallel", [])


def test_drained_or_disconnected_workers_are_not_planned_for() -> None:
    workers = {"w1": _worker("w1"), "w2": _worker("w2", drained=True), "w3": _worker("w3")}
    assert [w["worker_id"] for w in orchestrator.available_workers(workers, ["w1", "w2"])] == ["w1"]


# ---------------------------------------------------------------------------------------------- state
def test_subtasks_are_tasks_and_the_parent_merges_their_results() -> None:
    state = State()
    workers = [_worker("w1"), _worker("w2"), _worker("w3")]
    _register(state, *workers)
    result = _orchestrate(state, {**BENCH, "task_data": {**BENCH["task_data"], "batch_sizes": [1, 2, 4]}}, workers)
    ids = result["orchestration"]["subtask_ids"]
    assert ids == ["o1-1", "o1-2", "o1-3"]
    assert all(state.tasks[i]["status"] == "pending" and state.tasks[i]["parent_id"] == "o1" for i in ids)
    parent = state.orchestrations["o1"]
    assert (parent["status"], parent["completion_percentage"]) == ("in_progress", 0)
    _run(state, "o1-1", "w1", _bench_result(1, 100.0, 10.0, 50.0))
    assert (parent["status"], parent["completion_percentage"]) == ("in_progress", 33)
    _run(state, "o1-2", "w2", _bench_result(2, 300.0, 7.0, 80.0))
    _run(state, "o1-3", "w3", _bench_result(4, 250.0, 16.0, 120.0))
    assert (parent["status"], parent["completion_percentage"]) == ("completed", 100)
    merged = parent["result"]
    assert merged["status"] == "success" and merged["workers"] == ["w1", "w2", "w3"]
    assert merged["metrics"]["best_throughput"] == 300.0 and merged["metrics"]["best_throughput_batch_size"] == 2
    assert merged["metrics"]["min_latency_ms"] == 7.0 and merged["metrics"]["max_memory_peak_mb"] == 120.0
    assert merged["metrics"]["configurations"] == 3 and merged["metrics"]["benchmarks_count"] == 3
    assert [p["shard"] for p in merged["subtasks"]] == [{"batch_sizes": [1]}, {"batch_sizes": [2]},
                                                        {"batch_sizes": [4]}]
    assert parent["end_time"] == 21.0
    # A retried proposal of the same orchestration answers with the first one.
    again = _orchestrate(state, BENCH, workers)
    assert again["orchestration"] is parent and len(state.tasks) == 3


def test_a_failed_subtask_fails_the_parent_with_partial_results() -> None:
    state = State()
    workers = [_worker("w1"), _worker("w2")]
    _register(state, *workers)
    _orchestrate(state, {"task_data": {"type": "benchmark", "model_name": "vit", "batch_sizes": [1, 2]}}, workers)
    _run(state, "o1-1", "w1", _bench_result(1, 10.0, 1.0, 1.0))
    _run(state, "o1-2", "w2", fail="config.model boom")
    parent = state.orchestrations["o1"]
    assert parent["status"] == "failed" and "o1-2 failed: config.model boom" in parent["error"]
    assert parent["result"]["status"] == "partial" and parent["result"]["subtasks_completed"] == 1


def test_cancel_cascades_to_every_unfinished_subtask_and_lists_the_running_ones() -> None:
    state = State()
    workers = [_worker("w1"), _worker("w2"), _worker("w3")]
    _register(state, *workers)
    _orchestrate(state, {**BENCH, "subtask_count": 3}, workers)
    _run(state, "o1-1", "w1", _bench_result(1, 10.0, 1.0, 1.0))
    state.apply({"op": "AssignTasks", "time": 30.0, "assignments": [{"task_id": "o1-2", "worker_id": "w2", "attempt": 1}]})
    result, events = state.apply({"op": "CancelOrchestration", "time": 31.0, "task_id": "o1", "reason": "stop"})
    assert result["stopped"] == [{"task_id": "o1-2", "worker_id": "w2", "attempts": 1}]
    assert [state.tasks[i]["status"] for i in ("o1-1", "o1-2", "o1-3")] == ["completed", "cancelled", "cancelled"]
    parent = state.orchestrations["o1"]
    assert (parent["status"], parent["completion_percentage"], parent["error"]) == ("cancelled", 100, "stop")
    assert parent["result"]["subtasks_completed"] == 1
    assert {e["task"]["task_id"] for e in events if e["kind"] == "task"} == {"o1-2", "o1-3"}
    # A second cancel changes nothing; a late result for the cancelled attempt is ignored.
    assert state.apply({"op": "CancelOrchestration", "time": 32.0, "task_id": "o1"})[1] == []
    state.apply({"op": "CompleteTasks", "time": 33.0, "items": [
        {"task_id": "o1-2", "attempt": 1, "worker_id": "w2", "outcome": "completed", "result": {}}]})
    assert state.tasks["o1-2"]["status"] == "cancelled" and parent["status"] == "cancelled"


def test_retries_of_a_subtask_keep_the_parent_in_progress_and_snapshots_keep_it() -> None:
    state = State()
    workers = [_worker("w1"), _worker("w2")]
    _register(state, *workers)
    _orchestrate(state, {**BENCH, "subtask_count": 2}, workers)
    state.apply({"op": "AssignTasks", "time": 20.0, "assignments": [{"task_id": "o1-1", "worker_id": "w1", "attempt": 1}]})
    state.apply({"op": "StartTasks", "time": 20.0, "items": [{"task_id": "o1-1", "attempt": 1}]})
    state.apply({"op": "WorkersLost", "time": 21.0, "worker_ids": ["w1"], "reason": "lost"})
    assert state.tasks["o1-1"]["status"] == "pending" and state.orchestrations["o1"]["status"] == "in_progress"
    restored = State.restore(state.snapshot())
    assert restored.orchestrations == state.orchestrations
    _run(restored, "o1-1", "w2", _bench_result(1, 5.0, 1.0, 1.0))
    _run(restored, "o1-2", "w2", _bench_result(8, 9.0, 2.0, 1.0))
    assert restored.orchestrations["o1"]["status"] == "completed"
    assert restored.orchestrations["o1"]["result"]["metrics"]["best_throughput"] == 9.0


def test_function_and_hardware_parallel_merges_keep_each_part() -> None:
    state = State()
    workers = [_worker("w1"), _worker("w2", ("cpu", "cuda"))]
    _register(state, *workers)
    _orchestrate(state, {"task_data": {"type": "benchmark", "model_name": "bert"}, "strategy": "function_parallel"},
                 workers)
    for i, fn in enumerate(("latency", "throughput", "memory"), 1):
        _run(state, f"o1-{i}", "w1", _bench_result(1, float(i), float(i), float(i)))
        assert state.tasks[f"o1-{i}"]["config"]["functions"] == [fn]
    assert sorted(state.orchestrations["o1"]["result"]["by_function"]) == ["latency", "memory", "throughput"]
    _orchestrate(state, {"task_data": {"type": "test", "config": {"test_file": "t.py"}},
                         "strategy": "hardware_parallel"}, workers, parent_id="o2")
    assert [state.tasks[f"o2-{i}"]["requirements"]["hardware"] for i in (1, 2)] == [["cpu"], ["cuda"]]
    _run(state, "o2-1", "w1", {"status": "success", "metrics": {"passed": 3, "failed": 0}})
    _run(state, "o2-2", "w2", {"status": "failure", "metrics": {"passed": 2, "failed": 1}})
    merged = state.orchestrations["o2"]["result"]
    assert merged["metrics"] == {"passed": 5, "failed": 1} and merged["status"] == "failure"
    assert merged["by_hardware"]["cuda"]["worker_id"] == "w2"


def test_the_push_has_the_source_design_shape() -> None:
    state = State()
    workers = [_worker("w1")]
    _register(state, *workers)
    _orchestrate(state, {**BENCH, "subtask_count": 2}, workers)
    push = orchestrator.update_push(state.orchestrations["o1"], state.tasks, 7)
    assert push["type"] == "orchestrated_task_update" and push["status"] == "in_progress"
    assert push["completion_percentage"] == 0 and push["index"] == 7
    assert push["subtasks"] == [{"subtask_id": "o1-1", "status": "pending"}, {"subtask_id": "o1-2", "status": "pending"}]
    assert push["timestamp"].endswith("Z")
