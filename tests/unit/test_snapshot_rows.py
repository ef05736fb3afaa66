"""Store rows rebuilt from a snapshot equal the rows the applied entries wrote (real DuckDB files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from dtf_app.coordinator import snapshot_rows
from dtf_app.coordinator.scheduler import validate_task
from dtf_app.coordinator.state import State
from dtf_app.store.writer import Store

COMPARED = {
    "distributed_tasks": "SELECT * FROM distributed_tasks ORDER BY task_id",
    "worker_nodes": "SELECT * FROM worker_nodes ORDER BY worker_id",
    "results": "SELECT * FROM results ORDER BY result_id",
    "leadership_history": "SELECT * FROM leadership_history ORDER BY term",
}


def _history() -> list[dict[str, Any]]:
    """Commands of a small run: a worker, three tasks (one completed with output, one failed for good,
    one still pending), a leader election."""
    tasks = []
    for i, retries in ((1, 3), (2, 0), (3, 3)):
        doc = validate_task({"type": "custom", "name": f"t{i}", "config": {"command": ["true"]},
                             "max_retries": retries})
        doc.update(task_id=f"t{i}", batch_id="b1")
        tasks.append(doc)
    worker = {"worker_id": "w1", "hostname": "h", "capabilities": {"hardware": ["cpu"]}, "hardware": ["cpu"],
              "tags": [], "simulated": False, "max_concurrent_tasks": 4}
    outcome = {"task_id": "t1", "attempt": 1, "outcome": "completed", "start_time": 3.5, "end_time": 4.0,
               "result": {"status": "success", "metrics": {"passed": 3}, "execution_time": 0.5,
                          "environment": {"python": "3.11"}, "raw_data": {"returncode": 0}, "output": "ok\n"}}
    return [
        {"op": "LeaderElected", "time": 1.0, "node_id": "c1", "term": 1},
        {"op": "RegisterWorker", "time": 1.5, "worker": worker},
        {"op": "SubmitTasks", "time": 2.0, "tasks": tasks},
        {"op": "AssignTasks", "time": 3.0, "assignments": [{"task_id": t, "worker_id": "w1", "attempt": 1}
                                                           for t in ("t1", "t2")]},
        {"op": "StartTasks", "time": 3.1, "items": [{"task_id": t, "attempt": 1} for t in ("t1", "t2")]},
        {"op": "CompleteTasks", "time": 4.0, "items": [outcome]},
        {"op": "FailTasks", "time": 4.5, "items": [{"task_id": "t2", "attempt": 1, "error": "boom"}]},
    ]


async def _rows(path: Path, batches: list[tuple[int, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    store = Store(path)
    store.open()
    try:
        for index, events in batches:
            store.put(index, events)
        await store.flush()
        return {table: await store.query(sql) for table, sql in COMPARED.items()}
    finally:
        store.close()


def test_rows_rebuilt_from_a_snapshot_equal_the_applied_rows(tmp_path: Path) -> None:
    state = State()
    applied = []
    for index, command in enumerate(_history(), start=1):
        _, events = state.apply(command, index)
        applied.append((index, events))
    replica = State.restore(state.snapshot())
    rebuilt = snapshot_rows.events_from_state(replica)
    leader = trio.run(_rows, tmp_path / "leader.duckdb", applied)
    follower = trio.run(_rows, tmp_path / "follower.duckdb", [(len(applied), rebuilt)])
    assert leader == follower
    assert [r["status"] for r in follower["distributed_tasks"]] == ["completed", "failed", "pending"]
    assert len(follower["results"]) == 1 and follower["results"][0]["raw_data"]["output"] == "ok\n"


def test_rebuilt_rows_are_not_written_twice_and_a_covered_store_is_left_alone(tmp_path: Path) -> None:
    state = State()
    applied = []
    for index, command in enumerate(_history(), start=1):
        _, events = state.apply(command, index)
        applied.append((index, events))

    async def run() -> tuple[int, int, int]:
        store = Store(tmp_path / "s.duckdb")
        store.open()
        try:
            for index, events in applied[:-2]:
                store.put(index, events)
            await store.flush()
            # Behind the snapshot: rebuilt rows come in; the result row already there is not doubled.
            queued = snapshot_rows.reconcile(store, state, len(applied))
            await store.flush()
            again = snapshot_rows.reconcile(store, state, len(applied))  # covered now: nothing to do
            rebuilt = snapshot_rows.events_from_state(state)
            store.put(len(applied) + 1, rebuilt)  # an if_absent row present already is skipped
            await store.flush()
            (results,) = (await store.query("SELECT count(*) AS n FROM results"))[0].values()
            return queued, again, results
        finally:
            store.close()

    queued, again, results = trio.run(run)
    assert queued > 0 and again == 0 and results == 1
