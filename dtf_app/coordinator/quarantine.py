"""Quarantine of unhealthy workers: when a worker is taken out, and what brings it back (pure rules).

A worker is drained and quarantined (``QuarantineWorker``, replicated) when it reports a critical health
alert or fails ``failure_threshold`` tasks in a row for infrastructure reasons (the worker itself broke:
an ``error_class`` of protocol.INFRASTRUCTURE_ERRORS, counted by state.py's FailTasks; a test that fails
or a command that exits 1 is the task's business).
While quarantined it gets no work but its canary tasks: once its health is no longer critical, the
leader proposes ``StartCanary`` with one small task per hardware kind it claims (:func:`canary_tasks`);
the state machine lets it back in when all of them completed successfully, and counts a failed round as
one of ``recovery_attempts``; after the last one it stays out (``retired``) until an operator resumes it.

The record in the worker document (``worker["quarantine"]``)::

    {"state": "quarantined" | "canary" | "retired", "reason": str, "since": float, "attempts": int,
     "max_attempts": int, "canary_ids": [task_id, ...], "last_error": str | None}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dtf_app.coordinator import resources as resmod

QUARANTINED, CANARY, RETIRED = "quarantined", "canary", "retired"

def canary_kinds(worker: Mapping[str, Any]) -> list[str]:
    """The hardware kinds a canary round covers: cpu, plus every GPU kind the worker has devices of."""
    claimed = [str(k) for k in worker.get("hardware") or ["cpu"]]
    with_devices = {d["type"] for d in resmod.devices(worker)}
    kinds = ["cpu"] + [k for k in claimed if k != "cpu" and k in with_devices]
    return list(dict.fromkeys(kinds))


def canary_tasks(worker_id: str, worker: Mapping[str, Any], attempt: int) -> list[dict[str, Any]]:
    """Task documents (not yet validated) of one canary round for the worker.

    Each is a short in-process workload (the built-in ``cpu_burn``); a GPU kind's canary also reserves
    one device of that kind, so the round proves the worker can take an assignment with a reservation.
    """
    docs = []
    for kind in canary_kinds(worker):
        doc: dict[str, Any] = {
            "type": "custom", "priority": 100, "name": f"canary {kind} for {worker_id}",
            "config": {"name": "cpu_burn", "args": [], "kwargs": {"seconds": 0.2}},
            "timeout_seconds": 120, "max_retries": 0,
            "task_id": f"canary-{worker_id}-{attempt}-{kind}",
            "metadata": {"canary_for": worker_id, "canary_kind": kind, "canary_round": attempt},
        }
        # No worker has this tag, so the ordinary planner never places a canary; the leader gives it to
        # its worker directly (leader._plan_canaries).
        doc["requirements"] = {"tags": [canary_tag(worker_id)]}
        if kind != "cpu":
            doc["requirements"]["hardware"] = [kind]
            doc["resources"] = {"gpus": 1}
        docs.append(doc)
    return docs


def canary_tag(worker_id: str) -> str:
    """The requirement tag that keeps a worker's canaries away from every other worker."""
    return f"dtf-canary:{worker_id}"


def canary_for(task: Mapping[str, Any]) -> str | None:
    """The worker a canary task belongs to (None for every other task)."""
    meta = task.get("metadata")
    owner = meta.get("canary_for") if isinstance(meta, Mapping) else None
    return owner if isinstance(owner, str) else None


def needs_canary(worker: Mapping[str, Any]) -> bool:
    """Is the worker quarantined and not yet out of recovery attempts (nor already running a round)?"""
    record = worker.get("quarantine")
    return isinstance(record, Mapping) and record.get("state") == QUARANTINED and \
        int(record.get("attempts") or 0) < int(record.get("max_attempts") or 0)


def round_outcome(record: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]]) -> str | None:
    """``passed`` / ``failed`` once every canary of the current round ended, else None."""
    ids = record.get("canary_ids") or []
    states = [tasks.get(task_id) for task_id in ids]
    if any(t is not None and t["status"] in ("failed", "cancelled") for t in states):
        return "failed"
    if any(t is None or t["status"] != "completed" for t in states):
        return None
    passed = all((t.get("result") or {}).get("status") == "success" for t in states if t is not None)
    return "passed" if passed else "failed"


__all__ = ["CANARY", "QUARANTINED", "RETIRED", "canary_for", "canary_kinds", "canary_tasks", "needs_canary", "round_outcome"]
