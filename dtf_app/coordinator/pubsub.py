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
from collections.abc import Callable
from typing import Any

import trio

PUBLISHED_CHANNELS: tuple[str, ...] = ("task_updates", "worker_updates", "orchestrated_task_updates",
                                       "cluster_status", "leadership_updates", "health_alerts")
"""Channels a ``subscribe`` is accepted for: each has a publisher behind it (cluster_status: the cluster
monitor's ``cluster_status_update`` / ``cluster_health_update`` after each probe round; leadership_updates:
``leadership_update`` on every change of leader this node sees; orchestrated_task_updates:
``orchestrated_task_update`` whenever an orchestrated task or one of its subtasks changes, orchestrator.py;
health_alerts: ``health_alert`` when an alert of this node or of a worker appears or changes level,
health_monitor.py; filter on ``node``, ``worker``, ``source``, ``metric`` or ``level``)."""

PLANNED_CHANNELS: dict[str, str] = {}
"""Channels of the source design that nothing publishes yet, with the capability each waits for."""

MISSED_UPDATES = "missed_updates"
"""Push type telling a subscriber that updates were dropped for it: resync from a fresh read."""


def now_iso() -> str:
    """The current time as the API's ISO 8601 UTC string."""
    ts = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def task_update(view: dict[str, Any], index: int) -> dict[str, Any]:
    """A ``task_update`` push for a task view (as :func:`views.task_view` makes it)."""
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


class Subscriber:
    """A ``/ws`` client subscribed to push channels.

    A slow reader loses updates rather than stalling the coordinator; ``missed`` counts the ones it has
    not been told about yet, and its sender tells it (``missed_updates``) as soon as the queue has room,
    so it resyncs instead of showing stale rows. ``dropped`` is the running total (for /metrics).
    """

    def __init__(self, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        self.send = send
        self.channels: dict[str, dict[str, Any]] = {}
        self.dropped = 0
        self.missed = 0

    def push(self, message: dict[str, Any]) -> None:
        try:
            self.send.send_nowait(message)
        except trio.WouldBlock:
            self.dropped += 1
            self.missed += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def take_missed_notice(self) -> dict[str, Any] | None:
        """The ``missed_updates`` notice owed to this subscriber (once), or None."""
        if not self.missed:
            return None
        notice = missed_updates(self.missed, sorted(self.channels))
        self.missed = 0
        return notice


def matches(filter_: dict[str, Any], doc: dict[str, Any]) -> bool:
    """A subscription filter (field -> value or list of values) against a document."""
    for key, wanted in filter_.items():
        value = doc.get(key)
        if isinstance(wanted, list):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


class Hub:
    """This node's subscribers and the one way to push to them (true while anyone listens)."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()

    def __bool__(self) -> bool:
        return bool(self.subscribers)

    def add(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)

    def discard(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def dropped_total(self) -> int:
        """Updates dropped for slow readers among the current subscribers (for /metrics)."""
        return sum(sub.dropped for sub in self.subscribers)

    def publish(self, channel: str, message: dict[str, Any] | Callable[[], dict[str, Any]],
                doc: dict[str, Any]) -> None:
        """Push to matching subscribers; a callable message is built once, only if someone wants it."""
        built: dict[str, Any] | None = None
        for sub in self.subscribers:
            filter_ = sub.channels.get(channel)
            if filter_ is not None and matches(filter_, doc):
                if built is None:
                    built = message() if callable(message) else message
                sub.push(built)

    def close_all(self, error: dict[str, Any]) -> None:
        """Tell every subscriber why (an ``error`` push) and close them (this node stopped leading)."""
        for sub in list(self.subscribers):
            sub.push({"type": "error", "error": error})
            sub.send.close()
        self.subscribers.clear()
