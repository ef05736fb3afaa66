"""The ``/ws`` push vocabulary: which channels exist, and the shape of each push (sources' api-shapes.md).

A push names what changed at the top level (``task_update``: ``task_id``, ``status``, ``worker_id``,
``timestamp``) so that outside clients written against the source design read it without digging, and
carries the full document under a second key (``task`` / ``worker``) for the dashboard. Every push also
carries ``index``: the command-log index whose application produced it. A client that reads a snapshot
over HTTP (whose answer carries ``applied_index``) applies only pushes with ``index >= applied_index``
to what it read, so an update that raced the read can never roll a row back.

A channel is accepted only when something publishes on it; a channel of the source design that nothing
publishes yet would be named in ``PLANNED_CHANNELS`` (so a client asking for it is told why not, rather
than getting silence) until that capability lands.
"""

from __future__ import annotations

import time
from typing import Any

PUBLISHED_CHANNELS: tuple[str, ...] = ("task_updates", "worker_updates", "orchestrated_task_updates",
                                       "cluster_status", "leadership_updates")
"""Channels a ``subscribe`` is accepted for: each has a publisher behind it (cluster_status: the cluster
monitor's ``cluster_status_update`` / ``cluster_health_update`` after each probe round; leadership_updates:
``leadership_update`` on every change of leader this node sees; orchestrated_task_updates:
``orchestrated_task_update`` whenever an orchestrated task or one of its subtasks changes, orchestrator.py)."""

PLANNED_CHANNELS: dict[str, str] = {}
"""Channels of the source design that nothing publishes yet, with the capability each waits for."""

MISSED_UPDATES = "missed_updates"
"""Push type telling a subscriber that updates were dropped for it: resync from a fresh read."""


def now_iso() -> str:
    """The current time as the API's ISO 8601 UTC string."""
    ts = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def task_update(view: dict[str, Any], index: int) -> dict[str, Any]:
    """A ``task_update`` push for a task view (as :func:`service.task_view` makes it)."""
    return {"type": "task_update", "task_id": view.get("task_id"), "status": view.get("status"),
            "worker_id": view.get("worker_id"), "timestamp": now_iso(), "index": index, "task": view}


def worker_update(view: dict[str, Any] | None, worker_id: str, index: int) -> dict[str, Any]:
    """A ``worker_update`` push; ``view`` is None when the worker is unknown (then status is None)."""
    return {"type": "worker_update", "worker_id": worker_id, "status": (view or {}).get("status"),
            "timestamp": now_iso(), "index": index, "worker": view}


def task_log(task_id: str, attempt: Any, lines: list[Any]) -> dict[str, Any]:
    """Live log lines of a running task (ephemeral: never stored in the log or DuckDB)."""
    return {"type": "task_log", "task_id": task_id, "attempt": attempt, "lines": [str(line) for line in lines],
            "timestamp": now_iso()}


def missed_updates(dropped: int, channels: list[str]) -> dict[str, Any]:
    """The notice a slow subscriber gets once its queue has room again after updates were dropped."""
    return {"type": MISSED_UPDATES, "dropped": dropped, "channels": channels, "timestamp": now_iso(),
            "message": f"{dropped} update(s) were dropped because this connection read too slowly; "
                       "read the current state again (HTTP) before applying further pushes"}


def refuse_channel(channel: Any) -> dict[str, str]:
    """The error of a ``subscribe`` to a channel that is not published: planned ones say what they wait for."""
    if isinstance(channel, str) and channel in PLANNED_CHANNELS:
        return {"code": "channel_unavailable",
                "message": f"channel {channel} is not published by this coordinator: it needs "
                           f"{PLANNED_CHANNELS[channel]}, which this version does not have; published "
                           f"channels: {', '.join(PUBLISHED_CHANNELS)}"}
    return {"code": "invalid_channel", "message": f"channel must be one of {', '.join(PUBLISHED_CHANNELS)}, "
                                                  f"got {channel!r}"}
