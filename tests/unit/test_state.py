"""The coordinator state machine: transitions, idempotence, retries, dependencies, snapshots."""

from __future__ import annotations

from dtf_app.coordinator.scheduler import validate_task
from dtf_app.coordinator.state import State


def _task(task_id: str, **extra: object) -> dict:
    doc = validate_task({"type": "custom", "config": {"command": ["true"]}, **extra})
    doc["task_id"] = task_id
    doc["batch_id"] = "b1"
    return doc


def _worker(worker_id: str = "w1", slots: int = 4) -> dict:
    return {"op": "RegisterWorker", "time": 1.0, "worker": {
        "worker_id": worker_id, "hostname": "h", "capabilities": {"hardware": ["cpu"]}, "hardware": ["cpu"],
        "tags": [], "simulated": False, "max_concurrent_tasks": slots}}


def _submit(state: State, *tasks: dict) -> list[dict]:
    created, _ = state.apply({"op": "SubmitTasks", "time": 2.0, "tasks": list(tasks)})
    return created


def _assign(state: State, task_id: str, attempt: int, worker: str = "w1", *, start: bool = True) -> list:
    accepted, _ = state.apply({"op": "AssignTasks", "time": 3.0,
                               "assignments": [{"task_id": task_id, "worker_id": worker, "attempt": attempt}]})
    if start:
        state.apply({"op": "StartTasks", "time": 3.1, "items": [{"task_id": task_id, "attempt": attempt}]})
    return accepted


def test_submit_assign_complete_records_once() -> None:
    state = State()
    state.apply(_worker())
    _submit(state, _task("t1"))
    assert state.tasks["t1"]["status"] == "pending"
    assert _assign(state, "t1", 1)
    item = {"task_id": "t1", "attempt": 1, "outcome": "completed", "result": {"status": "success"},
            "start_time": 3.5, "end_time": 4.0}
    recorded, events = state.apply({"op": "CompleteTasks", "time": 4.0, "items": [item]})
    assert recorded == 1
    assert state.tasks["t1"]["status"] == "completed"
    assert {e["kind"] for e in events} == {"task", "history", "result"}
    # The same report again (a worker re-sending after a lost ack) changes nothing.
    recorded, events = state.apply({"op": "CompleteTasks", "time": 5.0, "items": [item]})
    assert recorded == 0 and events == []
    assert state.task_counts()["completed"] == 1


def test_stale_attempt_is_ignored_and_lost_worker_requeues() -> None:
    state = State()
    state.apply(_worker())
    _submit(state, _task("t1", max_retries=1))
    _assign(state, "t1", 1)
    state.apply({"op": "WorkersLost", "time": 5.0, "worker_ids": ["w1"]})
    assert state.tasks["t1"]["status"] == "pending"
    state.apply(_worker("w2"))
    _assign(state, "t1", 2, "w2")
    # A late result of attempt 1 must not complete attempt 2.
    recorded, _ = state.apply({"op": "CompleteTasks", "time": 6.0, "items": [
        {"task_id": "t1", "attempt": 1, "outcome": "completed", "result": {}}]})
    assert recorded == 0 and state.tasks["t1"]["status"] == "running"
    state.apply({"op": "FailTasks", "time": 7.0, "items": [{"task_id": "t1", "attempt": 2, "error": "boom"}]})
    assert state.tasks["t1"]["status"] == "failed"
    assert "gave up after 2 attempts" in state.tasks["t1"]["error"]


def test_dependencies_block_release_and_cascade() -> None:
    state = State()
    state.apply(_worker())
    _submit(state, _task("a"), _task("b", dependencies=["a"]), _task("c", dependencies=["b"]))
    assert [state.tasks[t]["status"] for t in "abc"] == ["pending", "blocked", "blocked"]
    _assign(state, "a", 1)
    state.apply({"op": "CompleteTasks", "time": 4.0, "items": [
        {"task_id": "a", "attempt": 1, "outcome": "completed", "result": {"status": "success"}}]})
    assert state.tasks["b"]["status"] == "pending"
    state.apply({"op": "CancelTask", "time": 5.0, "task_id": "b"})
    assert state.tasks["b"]["status"] == "cancelled"
    assert state.tasks["c"]["status"] == "failed"
    assert "dependency b cancelled" in state.tasks["c"]["error"]


def test_unschedulable_becomes_pending_when_capable_worker_registers() -> None:
    state = State()
    task = _task("g", requirements={"hardware": ["cuda"]})
    task["status"] = "unschedulable"
    _submit(state, task)
    state.apply(_worker())
    assert state.tasks["g"]["status"] == "unschedulable"
    gpu = _worker("gpu1")
    gpu["worker"]["hardware"] = ["cpu", "cuda"]
    state.apply(gpu)
    assert state.tasks["g"]["status"] == "pending"


def test_snapshot_restore_round_trip() -> None:
    state = State()
    state.apply(_worker(), 1)
    _submit(state, _task("a"), _task("b", dependencies=["a"]))
    state.apply({"op": "CreateApiKey", "time": 1.0, "name": "k", "role": "viewer", "key_hash": "x"}, 3)
    restored = State.restore(state.snapshot())
    assert restored.tasks == state.tasks
    assert restored.task_counts() == state.task_counts()
    assert restored.dependents == state.dependents
    assert restored.api_keys == state.api_keys
    assert restored.applied_index == 3


def test_unknown_command_is_skipped_not_fatal() -> None:
    state = State()
    result, events = state.apply({"op": "FromTheFuture", "time": 1.0}, 7)
    assert "unknown command" in result["error"] and events == []
    assert state.applied_index == 7


def test_report_from_another_worker_is_ignored() -> None:
    state = State()
    state.apply(_worker("w1"))
    state.apply(_worker("w2"))
    _submit(state, _task("t1"))
    _assign(state, "t1", 1, "w1")
    item = {"task_id": "t1", "attempt": 1, "outcome": "completed", "result": {}, "worker_id": "w2"}
    recorded, _ = state.apply({"op": "CompleteTasks", "time": 4.0, "items": [item]})
    assert recorded == 0 and state.tasks["t1"]["status"] == "running"
    recorded, _ = state.apply({"op": "CompleteTasks", "time": 4.0, "items": [dict(item, worker_id="w1")]})
    assert recorded == 1 and state.tasks["t1"]["status"] == "completed"


def test_late_result_of_a_taken_back_attempt_is_recorded_if_not_rerun() -> None:
    state = State()
    state.apply(_worker("w1"))
    _submit(state, _task("t1"))
    _assign(state, "t1", 1, "w1")
    state.apply({"op": "WorkersLost", "time": 5.0, "worker_ids": ["w1"]})
    assert state.tasks["t1"]["status"] == "pending"
    item = {"task_id": "t1", "attempt": 1, "outcome": "completed", "result": {"status": "success"}}
    # Only from the worker that ran it...
    recorded, _ = state.apply({"op": "CompleteTasks", "time": 6.0, "items": [dict(item, worker_id="w9")]})
    assert recorded == 0 and state.tasks["t1"]["status"] == "pending"
    recorded, _ = state.apply({"op": "CompleteTasks", "time": 6.0, "items": [dict(item, worker_id="w1")]})
    assert recorded == 1 and state.tasks["t1"]["status"] == "completed"
    assert state.tasks["t1"]["worker_id"] == "w1" and state.tasks["t1"]["attempts"] == 1
    # ...and a late failure report never fails a task that was put back in the queue.
    _submit(state, _task("t2"))
    _assign(state, "t2", 1, "w1")
    state.apply({"op": "WorkersLost", "time": 7.0, "worker_ids": ["w1"]})
    state.apply({"op": "FailTasks", "time": 8.0, "items": [{"task_id": "t2", "attempt": 1, "worker_id": "w1",
                                                           "error": "boom"}]})
    assert state.tasks["t2"]["status"] == "pending"


def test_batch_tasks_may_depend_on_later_tasks_of_the_same_batch() -> None:
    state = State()
    state.apply(_worker())
    _submit(state, _task("late-dependent", dependencies=["base"]), _task("base"))
    assert state.tasks["late-dependent"]["status"] == "blocked"
    assert state.tasks["base"]["status"] == "pending"
    assert state.task_counts()["blocked"] == 1 and state.task_counts()["pending"] == 1


def test_attempt_that_never_started_does_not_count() -> None:
    state = State()
    state.apply(_worker("w1"))
    _submit(state, _task("t1", max_retries=0))
    _assign(state, "t1", 1, "w1", start=False)  # queued on the worker, never started
    _, events = state.apply({"op": "WorkersLost", "time": 5.0, "worker_ids": ["w1"]})
    task = state.tasks["t1"]
    assert task["status"] == "pending" and task["attempts"] == 0
    assert not [e for e in events if e["kind"] == "history"]
    state.apply(_worker("w2"))
    _assign(state, "t1", 1, "w2")  # started this time: losing it now uses up the only attempt
    state.apply({"op": "WorkersLost", "time": 6.0, "worker_ids": ["w2"]})
    assert state.tasks["t1"]["status"] == "failed"


def _enrol(state: State, worker_id: str, digest: str) -> dict:
    result, _ = state.apply({"op": "EnrollWorker", "time": 1.5, "worker_id": worker_id,
                             "credential_hash": digest, "key_name": "workers"})
    return result


def test_enrolment_is_first_come_first_served_and_survives_snapshots() -> None:
    state = State()
    assert _enrol(state, "w1", "hash-a") == {"enrolled": True}
    # The second of two racing enrolments (another credential) is refused; the first one stands.
    assert _enrol(state, "w1", "hash-b") == {"enrolled": False}
    assert state.enrolments["w1"]["credential_hash"] == "hash-a"
    # A retried proposal of the same enrolment is not a conflict.
    assert _enrol(state, "w1", "hash-a") == {"enrolled": True}
    restored = State.restore(state.snapshot())
    assert restored.enrolments == state.enrolments
    # A malformed command is refused, not applied, and does not stop the log.
    bad, _ = state.apply({"op": "EnrollWorker", "time": 2.0, "worker_id": "", "credential_hash": "x"})
    assert "error" in bad and "" not in state.enrolments
    # Snapshots of versions without enrolments restore with none.
    import json

    old = json.loads(state.snapshot())
    del old["enrolments"]
    assert State.restore(json.dumps(old).encode()).enrolments == {}


def test_forget_frees_the_id_and_takes_back_its_attempts() -> None:
    state = State()
    state.apply(_worker("w1"))
    _enrol(state, "w1", "hash-a")
    _submit(state, _task("t1"))
    _assign(state, "t1", 1, "w1")
    result, events = state.apply({"op": "ForgetWorker", "time": 5.0, "worker_id": "w1"})
    assert result == {"forgotten": True}
    assert "w1" not in state.enrolments and state.workers["w1"]["status"] == "offline"
    task = state.tasks["t1"]
    assert task["status"] == "pending" and task["worker_id"] is None and "revoked" in task["error"]
    assert any(e["kind"] == "history" for e in events)
    assert state.apply({"op": "ForgetWorker", "time": 6.0, "worker_id": "w1"})[0] == {"forgotten": False}
    # The id may now enrol again, with another credential.
    assert _enrol(state, "w1", "hash-b") == {"enrolled": True}
