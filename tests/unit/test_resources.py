"""Reservation accounting (coordinator/resources.py) in the state machine and the planner, scaling
advice, and the quarantine rules (quarantine.py) as the state machine applies them."""

from __future__ import annotations

import json

import pytest

from dtf_app.coordinator import quarantine, resources, scheduler
from dtf_app.coordinator.scheduler import TaskValidationError, validate_task
from dtf_app.coordinator.state import State

A100X2 = {"hardware": ["cpu", "cuda"], "cpu": {"cores": 8}, "memory": {"total_gb": 32},
          "gpu": {"devices": [{"index": 0, "type": "cuda", "memory_gb": 40},
                              {"index": 1, "type": "cuda", "memory_gb": 40}]}}


def _worker(worker_id: str = "w1", caps: dict | None = None, slots: int = 8) -> dict:
    caps = caps or A100X2
    return {"op": "RegisterWorker", "time": 1.0, "worker": {
        "worker_id": worker_id, "hostname": "h", "capabilities": caps, "hardware": caps["hardware"],
        "tags": [], "simulated": True, "max_concurrent_tasks": slots}}


def _task(task_id: str, reserve: dict | None = None, **extra: object) -> dict:
    doc = validate_task({"type": "custom", "config": {"command": ["true"]}, "resources": reserve, **extra})
    doc.update(task_id=task_id, batch_id="b1")
    return doc


def _state(*tasks: dict, workers: tuple[dict, ...] = ()) -> State:
    state = State()
    for worker in workers or (_worker(),):
        state.apply(worker)
    state.apply({"op": "SubmitTasks", "time": 2.0, "tasks": list(tasks)})
    return state


def _assign(state: State, *pairs: tuple[str, str]) -> list[dict]:
    accepted, _ = state.apply({"op": "AssignTasks", "time": 3.0, "assignments": [
        {"task_id": t, "worker_id": w, "attempt": state.tasks[t]["attempts"] + 1} for t, w in pairs]})
    return accepted


def _reserved(state: State, worker_id: str = "w1") -> dict:
    return resources.worker_usage(state.workers[worker_id])


# ------------------------------------------------------------------------------------------ validation
def test_resources_are_validated_with_the_task_document() -> None:
    doc = validate_task({"type": "custom", "config": {"command": ["true"]},
                         "resources": {"cpu_cores": 2, "memory_gb": 1.5, "gpus": 2.0}})
    assert doc["resources"] == {"cpu_cores": 2.0, "memory_gb": 1.5, "gpus": 2}
    assert "resources" not in validate_task({"type": "custom", "config": {"command": ["true"]}})
    for bad, message in (({"gpus": 0}, r"task.resources.gpus must be an integer from 1 to 64"),
                         ({"memory_gb": -1}, r"task.resources.memory_gb must be a number above 0"),
                         ({"disk_gb": 1}, r"unknown key\(s\) disk_gb; accepted: cpu_cores, memory_gb"),
                         ([1], r"task.resources must be an object")):
        with pytest.raises(TaskValidationError, match=message):
            validate_task({"type": "custom", "config": {"command": ["true"]}, "resources": bad})


def test_a_reservation_that_can_never_fit_is_infeasible_with_the_reason() -> None:
    workers = [_worker()["worker"]]
    reason = scheduler.infeasibility_reason(workers, {}, {"memory_gb": 64})
    assert reason and "64 GB of memory to reserve (has 32)" in reason
    reason = scheduler.infeasibility_reason(workers, {"hardware": ["cuda"]}, {"gpus": 3})
    assert reason and "3 cuda device(s) to reserve (has 2)" in reason
    assert scheduler.infeasibility_reason(workers, {}, {"gpus": 2, "gpu_memory_gb": 40}) is None


# ------------------------------------------------------------------------------------------ accounting
def test_assign_reserves_and_refuses_what_does_not_fit() -> None:
    state = _state(_task("a", {"memory_gb": 20, "cpu_cores": 4}), _task("b", {"memory_gb": 20}),
                   _task("c", {"memory_gb": 12, "cpu_cores": 4}))
    accepted = _assign(state, ("a", "w1"), ("b", "w1"), ("c", "w1"))
    # b would take memory to 40 of 32 GB: refused in apply, it stays pending (a stale plan never oversubscribes).
    assert [item["task_id"] for item in accepted] == ["a", "c"]
    assert state.tasks["b"]["status"] == "pending" and state.tasks["b"]["attempts"] == 0
    usage = _reserved(state)
    assert usage["memory_gb"] == {"reserved": 32.0, "capacity": 32.0}
    assert usage["cpu_cores"] == {"reserved": 8.0, "capacity": 8.0}


def test_every_end_of_an_attempt_releases() -> None:
    state = _state(*[_task(t, {"memory_gb": 8}, max_retries=2) for t in ("done", "failed", "cancelled", "lost")])
    _assign(state, *[(t, "w1") for t in ("done", "failed", "cancelled", "lost")])
    assert _reserved(state)["memory_gb"]["reserved"] == 32.0
    state.apply({"op": "CompleteTasks", "time": 4.0, "items": [
        {"task_id": "done", "attempt": 1, "outcome": "completed", "result": {"status": "success"}}]})
    state.apply({"op": "FailTasks", "time": 4.0, "items": [{"task_id": "failed", "attempt": 1, "error": "x"}]})
    state.apply({"op": "CancelTask", "time": 4.0, "task_id": "cancelled"})
    assert _reserved(state)["memory_gb"]["reserved"] == 8.0
    state.apply({"op": "WorkersLost", "time": 5.0, "worker_ids": ["w1"]})
    assert _reserved(state)["memory_gb"]["reserved"] == 0.0 and state.workers["w1"]["reserved"] == {}


def test_gpus_are_exclusive_devices_with_the_lowest_free_indices() -> None:
    state = _state(_task("one", {"gpus": 1}, requirements={"hardware": ["cuda"]}),
                   _task("share", {"gpu_memory_gb": 10}), _task("two", {"gpus": 2}),
                   _task("other", {"gpus": 1}))
    accepted = _assign(state, ("one", "w1"), ("share", "w1"), ("two", "w1"), ("other", "w1"))
    by_id = {item["task_id"]: item["reservation"] for item in accepted}
    assert by_id["one"]["gpus"] == [0] and by_id["one"]["gpu_type"] == "cuda"
    # A shared slice of device memory goes on a device nobody holds exclusively.
    assert by_id["share"]["gpus"] == [1] and not by_id["share"]["exclusive"]
    # Two whole devices: none is free of other tasks now; one: device 1 carries a share.
    assert set(by_id) == {"one", "share"}
    assert resources.device_env(by_id["one"]) == {"CUDA_VISIBLE_DEVICES": "0"}
    state.apply({"op": "CompleteTasks", "time": 4.0, "items": [
        {"task_id": "one", "attempt": 1, "outcome": "completed", "result": {}}]})
    (item,) = _assign(state, ("other", "w1"))
    assert item["reservation"]["gpus"] == [0]  # released by "one", taken again


def test_reservations_survive_a_snapshot_and_restore_identically() -> None:
    state = _state(_task("g", {"gpus": 1, "memory_gb": 4}), _task("h", {"gpus": 2}))
    _assign(state, ("g", "w1"))
    copy = State.restore(state.snapshot())
    assert copy.workers["w1"]["reserved"] == state.workers["w1"]["reserved"]
    # Both replicas refuse the same over-asking assignment and choose the same devices later.
    for replica in (state, copy):
        assert _assign(replica, ("h", "w1")) == []
    assert json.dumps(copy.workers["w1"]["reserved"], sort_keys=True) == json.dumps(
        state.workers["w1"]["reserved"], sort_keys=True)


def test_planner_never_oversubscribes_within_one_round() -> None:
    tasks = [_task(f"t{i}", {"memory_gb": 10}) for i in range(10)]
    workers = (_worker("w1"), _worker("w2", {**A100X2, "memory": {"total_gb": 16}}))
    state = _state(*tasks, workers=workers)
    queue = scheduler.ReadyQueue()
    for task in state.tasks.values():
        queue.push(task)
    plan = scheduler.plan_assignments(queue, state.tasks, state.workers, {"w1": 8, "w2": 8})
    placed: dict[str, int] = {}
    for _, worker_id in plan:
        placed[worker_id] = placed.get(worker_id, 0) + 1
    assert placed == {"w1": 3, "w2": 1}  # 30 of 32 GB and 10 of 16 GB, although slots were free
    accepted = _assign(state, *plan)
    assert len(accepted) == len(plan)  # what the leader plans is what apply accepts


# ------------------------------------------------------------------------------------------ utilisation
def test_utilisation_and_recommendation() -> None:
    state = _state(_task("a", {"gpus": 2}), _task("b", {"memory_gb": 4}))
    idle = resources.utilisation(state.workers.values())
    assert idle["overall"] == 0.0
    assert resources.recommend(idle, pending=2, scale_up=0.8, scale_down=0.3) == "steady"  # work waits
    assert resources.recommend(idle, pending=0, scale_up=0.8, scale_down=0.3) == "scale_down"
    _assign(state, ("a", "w1"), ("b", "w1"))
    busy = resources.utilisation(state.workers.values())
    assert busy["ratios"]["gpus"] == 1.0 and busy["ratios"]["memory_gb"] == 0.125
    assert resources.recommend(busy, pending=0, scale_up=0.8, scale_down=0.3) == "scale_up"
    assert resources.recommend(resources.utilisation([]), pending=3, scale_up=0.8, scale_down=0.3) == "scale_up"


# ------------------------------------------------------------------------------------------ quarantine
def _canary_docs(state: State, worker_id: str, attempt: int) -> list[dict]:
    docs = []
    for raw in quarantine.canary_tasks(worker_id, state.workers[worker_id], attempt):
        doc = validate_task(raw, "canary")
        doc["batch_id"] = "c"
        docs.append(doc)
    return docs


def test_quarantine_canary_passes_and_the_worker_returns() -> None:
    state = _state(_task("x"))
    state.apply({"op": "QuarantineWorker", "time": 3.0, "worker_id": "w1", "reason": "critical", "max_attempts": 2})
    worker = state.workers["w1"]
    assert worker["drained"] and worker["quarantine"]["state"] == "quarantined"
    # A stale plan cannot place ordinary work on it.
    assert _assign(state, ("x", "w1")) == []
    docs = _canary_docs(state, "w1", 1)
    assert [d["metadata"]["canary_kind"] for d in docs] == ["cpu", "cuda"]
    assert docs[1]["resources"] == {"gpus": 1}
    state.apply({"op": "StartCanary", "time": 4.0, "worker_id": "w1", "tasks": docs})
    assert worker["quarantine"]["state"] == "canary" and worker["quarantine"]["attempts"] == 1
    ids = [d["task_id"] for d in docs]
    # No other worker meets a canary's requirements: the ordinary planner never places one elsewhere.
    assert not scheduler.worker_satisfies(_worker("w2")["worker"], state.tasks[ids[0]]["requirements"])
    _assign(state, *[(i, "w1") for i in ids])
    state.apply({"op": "CompleteTasks", "time": 5.0, "items": [
        {"task_id": ids[0], "attempt": 1, "outcome": "completed", "result": {"status": "success"}}]})
    assert worker["quarantine"]["state"] == "canary"  # one of two done
    _, events = state.apply({"op": "CompleteTasks", "time": 5.0, "items": [
        {"task_id": ids[1], "attempt": 1, "outcome": "completed", "result": {"status": "success"}}]})
    assert worker["quarantine"] is None and worker["drained"] is False
    assert any(e["kind"] == "worker" for e in events)
    assert _assign(state, ("x", "w1"))


def test_failed_canary_rounds_retire_the_worker_after_max_attempts() -> None:
    state = _state(workers=(_worker("w1", {"hardware": ["cpu"], "cpu": {"cores": 2}}),))
    state.apply({"op": "QuarantineWorker", "time": 3.0, "worker_id": "w1", "reason": "r", "max_attempts": 2})
    for attempt in (1, 2):
        docs = _canary_docs(state, "w1", attempt)
        state.apply({"op": "StartCanary", "time": 4.0, "worker_id": "w1", "tasks": docs})
        _assign(state, (docs[0]["task_id"], "w1"))
        state.apply({"op": "StartTasks", "time": 4.5, "items": [{"task_id": docs[0]["task_id"], "attempt": 1}]})
        state.apply({"op": "FailTasks", "time": 5.0, "items": [
            {"task_id": docs[0]["task_id"], "attempt": 1, "error": "worker error: disk",
             "error_class": "worker_error", "retry": True}]})
    record = state.workers["w1"]["quarantine"]
    assert record["state"] == "retired" and record["attempts"] == 2 and "disk" in record["last_error"]
    assert not quarantine.needs_canary(state.workers["w1"])
    # An operator's resume ends it.
    state.apply({"op": "SetWorkerDrain", "time": 6.0, "worker_id": "w1", "drained": False})
    assert state.workers["w1"]["quarantine"] is None and not state.workers["w1"]["drained"]


def test_infrastructure_failures_are_counted_in_a_row() -> None:
    state = _state(*[_task(f"t{i}", max_retries=0) for i in range(4)])
    # By error class (protocol.INFRASTRUCTURE_ERRORS), the one vocabulary: the text does not matter.
    for i, (error, error_class) in enumerate([("worker error: OSError: disk", "worker_error"),
                                              ("segfault", "crash"), ("no longer runs it", "worker_lost")]):
        _assign(state, (f"t{i}", "w1"))
        state.apply({"op": "FailTasks", "time": 4.0, "items": [
            {"task_id": f"t{i}", "attempt": 1, "error": error, "error_class": error_class, "worker_id": "w1"}]})
    assert state.workers["w1"]["infra_failures"] == 2
    _assign(state, ("t3", "w1"))
    state.apply({"op": "CompleteTasks", "time": 5.0, "items": [
        {"task_id": "t3", "attempt": 1, "outcome": "completed", "result": {}}]})
    assert state.workers["w1"]["infra_failures"] == 0


def test_stop_keeps_work_away_until_the_worker_registers_again() -> None:
    state = _state(_task("x"))
    state.apply({"op": "StopWorker", "time": 3.0, "worker_id": "w1", "restart": True})
    assert state.workers["w1"]["stopping"] == "restart"
    state.apply(_worker())
    assert "stopping" not in state.workers["w1"]
