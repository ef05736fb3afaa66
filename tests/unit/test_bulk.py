"""Big batches in slices: dependency order across commands, chunked encoding, the sliced submit, the
liveness loop not blaming workers for the coordinator's own stalls nor for outcomes waiting for their
commit, and the task log bounds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio

from dtf_app import protocol as proto
from dtf_app.config import Settings
from dtf_app.coordinator import bulk, scheduler, tasklogs
from dtf_app.coordinator.intake import WorkerConn
from dtf_app.coordinator.service import Coordinator


def test_dependency_order_moves_only_what_must_move() -> None:
    ids = ["a", "b", "c", "d", "e"]
    assert bulk.dependency_order(ids, {}) == ids
    # a waits for d (later in the batch): d, and what d waits for, come first; the rest keep their order.
    assert bulk.dependency_order(ids, {"a": ["d"], "d": ["e", "outside"]}) == ["e", "d", "a", "b", "c"]
    assert bulk.dependency_order(ids, {"c": ["a"]}) == ids


async def test_dumps_in_slices_is_plain_json() -> None:
    data = [{"i": i, "s": "x" * (i % 7)} for i in range(2345)]
    assert json.loads(await bulk.dumps(data, every=100)) == data
    assert json.loads(await bulk.dumps({"one": 1})) == {"one": 1}
    assert await bulk.dumps([], every=100) == "[]"


@pytest.mark.parametrize("text", [
    '[]', ' [ ] ', '[1, 2 ,3]', '[{"a": [1, {"b": null}]}, "x\\u00e9", 1.5e3, true]\n', '{"tasks": [1]}', '"s"',
    '[1, x]', '[1 2]', '[1,]', '[', '[1', '[1] 2', '[1]]', '[NaN]', '["\\ud800"]', '',
])
async def test_sliced_loads_is_json_loads(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "SLICED_PARSE_BYTES", 0)
    raw = text.encode()
    try:
        expected: object = json.loads(raw)
    except json.JSONDecodeError as exc:
        expected = (exc.msg, exc.pos)
    try:
        got: object = await bulk.loads(raw)
    except json.JSONDecodeError as exc:
        got = (exc.msg, exc.pos)
    assert got == expected


async def test_sliced_loads_big_body() -> None:
    data = [{"type": "custom", "config": {"command": ["true", str(i)]}} for i in range(20_000)]
    raw = json.dumps(data).encode()
    assert len(raw) > bulk.SLICED_PARSE_BYTES
    assert await bulk.loads(raw) == data


async def test_sliced_snapshot_is_the_snapshot(tmp_path: Path) -> None:
    from dtf_app.coordinator.state import State

    state = State()
    assert await bulk.encode_snapshot(state) == state.snapshot()
    state.apply({"op": "SubmitTasks", "time": 1.0, "tasks": [
        dict(scheduler.validate_task({"type": "custom", "config": {"command": ["true"]}}), task_id=f"t{i}",
             batch_id="b") for i in range(1234)]}, 1)
    state.apply({"op": "CreateApiKey", "time": 2.0, "name": "k", "role": "admin", "key_hash": "h"}, 2)
    assert await bulk.encode_snapshot(state, every=100) == state.snapshot()
    assert State.restore(await bulk.encode_snapshot(state)).task_counts() == state.task_counts()


async def test_sliced_submit_keeps_order_and_cross_command_dependencies(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "SUBMIT_COMMAND_TASKS", 100)
    coord = Coordinator(Settings(data_dir=str(tmp_path)))
    coord.load()
    async with trio.open_nursery() as nursery:
        await nursery.start(coord.store.run)
        await nursery.start(coord.replicator.run)
        docs = [scheduler.validate_task({"type": "custom", "task_id": f"t{i}", "config": {"command": ["true"]},
                                         "dependencies": ["t450"] if i == 3 else []}) for i in range(500)]
        created = await coord.submit(docs)
        assert [t["task_id"] for t in created] == [f"t{i}" for i in range(500)]  # the answer keeps input order
        assert coord.state.tasks["t3"]["status"] == "blocked"  # its dependency came in a later slice
        assert coord.state.tasks["t450"]["status"] == "pending"
        assert coord.state.task_counts()["total"] == 500
        with pytest.raises(scheduler.TaskConflictError, match=r"tasks\[1\].task_id 't7' already exists"):
            await coord.submit([scheduler.validate_task({"type": "custom", "task_id": x,
                                                         "config": {"command": ["true"]}}) for x in ("new", "t7")])
        assert "new" not in coord.state.tasks
        nursery.cancel_scope.cancel()
    coord.store.close()
    coord.replicator.close()


async def test_liveness_does_not_count_a_stalled_loop_against_workers(tmp_path: Path) -> None:
    coord = Coordinator(Settings(data_dir=str(tmp_path), worker_timeout=2.0))
    send, _receive = trio.open_memory_channel[dict](10)
    conn = WorkerConn("w", 1, send)
    coord.conns["w"] = conn
    proposed: list[list[dict]] = []

    async def propose(commands: list[dict]) -> list[None]:
        proposed.append(commands)
        return [None] * len(commands)

    coord.propose = propose  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(coord.duties.liveness_loop)
        await trio.sleep(0.3)
        conn.last_seen = time.monotonic()
        time.sleep(4.0)  # the whole process stalls (as a huge batch once did); no heartbeat is read
        await trio.sleep(0.3)
        assert "w" in coord.conns and not proposed  # not declared lost for the coordinator's own stall
        with trio.fail_after(30):  # now really silent: lost after worker_timeout
            while not proposed:
                await trio.sleep(0.1)
        assert proposed[0][0]["op"] == "WorkersLost" and proposed[0][0]["worker_ids"] == ["w"]
        nursery.cancel_scope.cancel()


async def test_an_outcome_waiting_for_its_commit_is_not_a_task_the_worker_lost(tmp_path: Path) -> None:
    """A result that arrived but whose commit is slow (a huge batch ahead of it) is accounted for: the
    liveness loop must not fail it as "no longer runs it" (a worker_lost failure counts against the
    worker's health). A task that really went missing is failed in the same pass, which shows the pass
    looked at both."""
    coord = Coordinator(Settings(data_dir=str(tmp_path), worker_timeout=60.0, heartbeat_interval=0.1))
    send, _receive = trio.open_memory_channel[dict](10)
    conn = WorkerConn("w", 2, send)
    coord.conns["w"] = conn
    coord.state.workers["w"] = {"worker_id": "w", "status": "online", "assigned": {"done": 1, "missing": 1}}
    for task_id in ("done", "missing"):
        coord.state.tasks[task_id] = {"task_id": task_id, "status": "assigned", "attempts": 1, "start_time": None,
                                      "timeout_seconds": 3600.0}
        conn.assigned_at[task_id] = time.monotonic()
    proposed: list[list[dict]] = []

    async def propose(commands: list[dict]) -> list[None]:
        proposed.append(commands)
        return [None] * len(commands)

    coord.propose = propose  # type: ignore[method-assign]
    # The outcome arrives; the results loop is not running, as if its commit were stuck behind a big one.
    coord.intake.message(conn, {"type": proto.RESULTS, "items": [
        {"task_id": "done", "attempt": 1, "outcome": "completed", "result": {"status": "success"}}]})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(coord.duties.liveness_loop)
        with trio.fail_after(60):
            while not proposed:
                conn.last_seen = time.monotonic()  # heartbeats keep coming
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    failed = [item["task_id"] for commands in proposed for command in commands if command["op"] == "FailTasks"
              for item in command["items"]]
    assert failed == ["missing"], proposed


def test_task_logs_bounds_per_task_and_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    logs = tasklogs.TaskLogs()
    kept = logs.add("w", "t", ["a" * 50_000, 5, "b"])
    assert kept == ["a" * proto.LOG_LINE_MAX_CHARS + proto.LOG_TRUNCATED, "b"] and logs.dropped["malformed"] == 1
    for _ in range(100):
        logs.add("w", "t", ["c" * 3000] * 50)
    tail = logs.get("t")
    assert len(tail) <= tasklogs.LOG_LINES_KEPT
    assert sum(len(line) for line in tail) <= tasklogs.LOG_TASK_MAX_BYTES
    assert logs.total_bytes() == sum(len(line) for line in tail)
    monkeypatch.setattr(tasklogs, "LOG_WORKER_MAX_BYTES", tasklogs.LOG_TASK_MAX_BYTES + 10_000)
    logs.add("w", "u", ["d" * 3000] * 50)  # a second task: the worker's budget is shared
    assert logs.total_bytes() <= tasklogs.LOG_WORKER_MAX_BYTES
    assert logs.pop("t") is not None and logs.pop("u") is not None
    assert logs.total_bytes() == 0 and len(logs) == 0
