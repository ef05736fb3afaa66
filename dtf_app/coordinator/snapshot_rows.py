"""Store rows rebuilt from a snapshot: a replica that catches up by snapshot must not lose DuckDB rows.

Store rows come from applying log entries (``State.apply`` returns them as events). A follower that was
down while the leader compacted its log never applies the entries the snapshot folds in; it installs the
snapshot instead, and without this module its DuckDB file would lack their tasks, workers, results and
leadership rows (a later failover would make it the leader, serving reads from that file). So when a
snapshot at index ``S`` replaces the state of a node whose store has only seen entries up to ``L < S``
(received from the leader, or a store file older than the node's own snapshot), the rows the state can
give are written as one store batch at index ``S``, before any later entry's:

* ``distributed_tasks`` and ``worker_nodes``: every task and worker, upserted (exactly the leader's rows:
  a task's or worker's row is its last event, which is its state);
* ``results``: one row per completed task, the same row the leader wrote (result id, worker, status,
  metrics, execution time, environment, raw data, metadata), added only where the store has none;
* ``leadership_history``: the replicated history, rows the store lacks.

What the state does not keep cannot be rebuilt: per-test and per-benchmark rows (the state keeps their
counts), execution-history rows of past attempts, and output beyond the last ``MAX_OUTPUT_CHARS``
characters (``state.py`` bounds what it holds in memory; the full documents went to the leader's DuckDB).
A node that caught up this way says so in its log, with the counts.
"""

from __future__ import annotations

import logging
from typing import Any

from dtf_app.coordinator.state import State, _worker_event

__all__ = ["events_from_state", "reconcile"]

log = logging.getLogger("dtf.coordinator.snapshot_rows")


def result_row(task: dict[str, Any]) -> dict[str, Any]:
    """The ``results`` row the leader wrote when ``task`` completed (``State._result_event``), from the
    summary the state keeps."""
    result = task.get("result") or {}
    item = {"hardware_metrics": result.get("hardware_metrics")}
    row = State._result_event(task, result, item)["result"]
    # The per-test / per-benchmark rows are not in the state (their counts are): none are rebuilt.
    row["tests"], row["benchmarks"] = [], []
    return row


def events_from_state(state: State) -> list[dict[str, Any]]:
    """Store events that give a store the rows of everything ``state`` holds (see the module docstring)."""
    events: list[dict[str, Any]] = []
    for task in state.tasks.values():
        events.append({"kind": "task", "task": dict(task)})
        if task.get("status") == "completed" and isinstance(task.get("result"), dict):
            events.append({"kind": "result", "result": result_row(task), "if_absent": True})
    for worker in state.workers.values():
        events.append(_worker_event(worker))
    for row in state.leaders:
        events.append({"kind": "leadership", "row": dict(row), "if_absent": True})
    return events


def reconcile(store: Any, state: State, index: int) -> int:
    """Queue the rebuilt rows when the store has not seen every entry up to ``index``; how many events."""
    if store is None or store.covered_index() >= index:
        return 0
    behind = store.covered_index()
    events = events_from_state(state)
    store.put(index, events)
    completed = sum(1 for e in events if e["kind"] == "result")
    log.warning("installed a snapshot at log index %d (this store had entries up to %d): rebuilt the rows of "
                "%d tasks (%d completed), %d workers and %d leadership terms from it; per-test rows and "
                "execution history of the entries it folds in are not in a snapshot", index, behind,
                len(state.tasks), completed, len(state.workers), len(state.leaders))
    return len(events)
