"""Intake: what connected workers send, checked and cleaned before anything is proposed.

Workers are other processes (maybe other versions, maybe buggy): nothing they send may be able to stop
the replicated log or the store. A worker's hello becomes a ``RegisterWorker`` document
(:func:`worker_info`), each outcome a clean result item (:func:`clean_outcome`), and
:class:`WorkerIntake` turns frames into work for the leader duties (results and started reports are
buffered for the results loop; heartbeats are leader-local liveness, never log entries).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import trio

from dtf_app import jsonsafe
from dtf_app import protocol as proto
from dtf_app.coordinator import pubsub, tasklogs, views

if TYPE_CHECKING:
    from dtf_app.coordinator.service import Coordinator

log = logging.getLogger("dtf.coordinator")


class WorkerConn:
    """One connected worker: its outgoing frame queue and what it told us last."""

    def __init__(self, worker_id: str, capacity: int, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        self.worker_id = worker_id
        self.capacity = capacity
        self.send = send
        self.connected_at = time.time()
        self.last_seen = time.monotonic()
        self.running: set[str] = set()
        # Tasks it has outcomes for that are on their way (listed in its hello): never run them again.
        self.finished: set[str] = set()
        # Tasks whose outcome arrived and waits in the results loop for its commit: neither running nor
        # assigned-and-missing. A slow commit (a huge batch ahead of it in the log) must not turn them into
        # "worker no longer runs it" failures, which count against the worker's health.
        self.reported: set[str] = set()
        self.assigned_at: dict[str, float] = {}
        self.health: dict[str, Any] = {}
        # Its latest health alerts (its own evaluation, or the leader's of its metrics): health_monitor.py.
        self.alerts: list[dict[str, Any]] = []
        self.last_heartbeat: float | None = None
        self.closed = False
        # Set when the coordinator ends the connection itself with a close code (e.g. enrolment revoked).
        self.close_code = 0
        self.close_reason = ""
        # A credential the coordinator generated at enrolment, handed back once in the welcome.
        self.issued_credential: str | None = None

    def push(self, message: dict[str, Any]) -> None:
        try:
            self.send.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            # The connection is gone or hopelessly behind; liveness will notice.
            self.closed = True

    def refuse(self, message: str) -> None:
        """End the connection with a ``credential_refused`` error frame and close code 4403."""
        self.push({"type": proto.ERROR, "code": proto.CREDENTIAL_REFUSED, "message": message})
        self.close_code, self.close_reason = 4403, message
        self.closed = True
        self.send.close()

    def end(self) -> None:
        """Close the connection from our side (lost, replaced, or this node stepped down)."""
        self.closed = True
        self.send.close()


def number(value: Any) -> float | None:
    """A finite number a peer sent, else None (bools are not numbers here)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) else None


def strings(value: Any) -> list[str]:
    """The strings of a list sent by a peer (anything else: none)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def task_ids(value: Any) -> set[str]:
    """The task ids of a hello's ``running`` / ``finished`` lists (``[{"task_id": ...}, ...]``)."""
    return {r["task_id"] for r in value if isinstance(r, dict) and isinstance(r.get("task_id"), str)} \
        if isinstance(value, list) else set()


def worker_info(worker_id: str, hello: dict[str, Any]) -> dict[str, Any]:
    """A hello reduced to the worker document ``RegisterWorker`` commits."""
    caps = hello.get("capabilities") if isinstance(hello.get("capabilities"), dict) else {}
    raw_slots = hello.get("max_concurrent_tasks")
    capacity = raw_slots if isinstance(raw_slots, int) and not isinstance(raw_slots, bool) and raw_slots > 0 else 1
    return {
        "worker_id": worker_id, "hostname": str(hello.get("hostname") or ""), "capabilities": caps,
        "hardware": strings(caps.get("hardware")) or ["cpu"],
        "tags": sorted(set(strings(hello.get("tags"))) | set(strings(caps.get("tags")))),
        "simulated": bool(hello.get("simulated") or caps.get("simulated")),
        "max_concurrent_tasks": capacity, "hardware_metrics": hello.get("metrics") or {},
    }


def clean_outcome(raw: Any) -> dict[str, Any] | None:
    """A worker's outcome reduced to the shapes the state machine and the store expect, or None."""
    if not isinstance(raw, dict) or not isinstance(raw.get("task_id"), str):
        return None
    attempt = raw.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        return None
    outcome = "completed" if raw.get("outcome") == "completed" else "failed"
    item: dict[str, Any] = {"task_id": raw["task_id"], "attempt": attempt, "outcome": outcome,
                            "start_time": number(raw.get("start_time")), "end_time": number(raw.get("end_time")),
                            "error": str(raw["error"])[:4000] if raw.get("error") is not None else None}
    result = raw.get("result")
    if outcome == "completed":
        if not isinstance(result, dict):
            result = {"status": "failure", "raw_data": {"invalid_result": repr(result)[:1000]}}
        result = dict(result)
        if result.get("status") not in proto.RESULT_STATUSES:
            result["status"] = "partial"
        for key in ("metrics", "environment", "raw_data"):
            if not isinstance(result.get(key, {}), dict):
                result[key] = {"value": result[key]}
        for key in ("tests", "benchmarks"):
            rows = result.get(key)
            if rows is not None:
                result[key] = [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []
        result["execution_time"] = number(result.get("execution_time"))
        # Strict JSON all the way to the store and the API: a NaN/inf metric becomes null, a lone
        # surrogate U+FFFD (frames are parsed strictly, but the HTTP form and old workers exist).
        item["result"] = jsonsafe.sanitise(result)
    if item["error"] is not None:
        item["error"] = jsonsafe.sanitise(item["error"])
        # Only the shared vocabulary; anything else (an older or foreign worker) is retried as before.
        error_class = raw.get("error_class")
        item["error_class"] = error_class if error_class in proto.ERROR_CLASSES else None
    return item


class WorkerIntake:
    """Worker connections: register on hello, take frames in, forget on close."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    async def hello(self, hello: dict[str, Any], send: trio.MemorySendChannel[dict[str, Any]], *,
                    credential: str | None = None, key_name: str | None = None) -> WorkerConn:
        """Register a connecting worker (durably) and start tracking its connection.

        Raises enrolment.CredentialRefused, before touching anything, when the caller may not act as the id.
        """
        from dtf_app.coordinator import enrolment

        coord = self.coord
        worker_id = str(hello["worker_id"])
        issued = await enrolment.admit(coord, worker_id, credential, key_name)
        # Revoked while the enrolment was being committed: refuse rather than keep an unenrolled socket.
        enrolment.verify(coord.state.enrolments, worker_id, issued or credential)
        info = worker_info(worker_id, hello)
        old = coord.conns.get(worker_id)
        if old is not None:
            old.end()
        conn = WorkerConn(worker_id, info["max_concurrent_tasks"], send)
        conn.issued_credential = issued
        conn.running = task_ids(hello.get("running"))
        conn.finished = task_ids(hello.get("finished"))
        coord.conns[worker_id] = conn
        await coord.propose([{"op": "RegisterWorker", "worker": info}])
        log.info("worker %s connected (%s, %d slots%s)", worker_id, ",".join(info["hardware"]),
                 conn.capacity, ", simulated hardware" if info["simulated"] else "")
        return conn

    def gone(self, conn: WorkerConn) -> None:
        """The connection closed; the worker has worker_timeout to come back before its tasks move."""
        conn.closed = True
        log.info("worker %s disconnected", conn.worker_id)
        self.coord.wake_dispatcher()

    def message(self, conn: WorkerConn, message: dict[str, Any]) -> None:
        """Handle one frame from a worker (results are batched by the results loop)."""
        coord = self.coord
        conn.last_seen = time.monotonic()
        kind = message.get("type")
        if kind == proto.RESULTS:
            taken = []
            for raw in message.get("items") or []:
                item = clean_outcome(raw)
                if item is None:
                    log.warning("worker %s sent a malformed outcome; ignored: %.200r", conn.worker_id, raw)
                    continue
                conn.running.discard(item["task_id"])
                conn.finished.discard(item["task_id"])
                conn.reported.add(item["task_id"])
                taken.append(item)
            coord.duties.take_results(conn, taken)
        elif kind == proto.STARTED:
            items = [item for item in message.get("items") or [] if isinstance(item, dict) and "task_id" in item]
            conn.running.update(item["task_id"] for item in items)
            coord.duties.take_started(items)
        elif kind == proto.HEARTBEAT:
            self._heartbeat(conn, message)
        elif kind == proto.LOG:
            self._log(conn, message)

    def _heartbeat(self, conn: WorkerConn, message: dict[str, Any]) -> None:
        coord = self.coord
        conn.health = message.get("metrics") or {}
        running = message.get("running")
        if isinstance(running, list):
            conn.running = task_ids(running)
        worker = coord.state.workers.get(conn.worker_id)
        if worker is None:
            return
        # Heartbeats are leader-local liveness (too chatty for the log, and replicated state changes only
        # in apply); the leader's store gets them directly.
        conn.last_heartbeat = time.time()
        coord.health_monitor.worker_heartbeat(conn, message)
        coord.store.put(None, [{"kind": "worker", "worker": {
            **{k: v for k, v in worker.items() if k != "assigned"},
            "last_heartbeat": conn.last_heartbeat, "status": "online", "hardware_metrics": conn.health}}])
        if coord.hub:
            # Health gauges move with heartbeats, which are not log entries: push them anyway.
            coord.hub.publish("worker_updates", lambda w=conn.worker_id: pubsub.worker_update(
                views.worker_view(coord, w), w, coord.state.applied_index), worker)

    def _log(self, conn: WorkerConn, message: dict[str, Any]) -> None:
        """Keep (bounded) and fan out log lines, only for a task this worker holds now (current attempt)."""
        coord = self.coord
        task_id, lines, attempt = message.get("task_id"), message.get("lines"), message.get("attempt")
        if not isinstance(task_id, str) or not isinstance(lines, list):
            coord.task_logs.drop(tasklogs.DROP_MALFORMED, len(lines) if isinstance(lines, list) else 1)
            return
        task = coord.state.tasks.get(task_id)
        if task is None:
            coord.task_logs.drop(tasklogs.DROP_UNKNOWN_TASK, len(lines))
            return
        worker = coord.state.workers.get(conn.worker_id)
        held = (worker.get("assigned") or {}).get(task_id) if worker is not None else None
        if held is None or held != attempt or conn.closed:
            coord.task_logs.drop(tasklogs.DROP_NOT_ASSIGNED, len(lines))
            return
        kept = coord.task_logs.add(conn.worker_id, task_id, lines)
        if kept:
            coord.hub.publish("task_updates", lambda: pubsub.task_log(task_id, attempt, kept), task)
