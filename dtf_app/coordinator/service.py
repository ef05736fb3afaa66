"""The coordinator service: recovery, leader duties, worker connections and the serving loop.

``serve_coordinator`` opens the DuckDB store and the durable command log, rebuilds the state machine
(snapshot + replay), serves the Quart API with hypercorn's trio worker, and runs the leader loops:

- dispatch: match ready tasks to free worker slots, commit ``AssignTasks``, push ``assign`` frames;
- results: batch the outcomes that workers stream in into one ``CompleteTasks``/``FailTasks`` commit,
  then ``ack`` them (the worker drops its outbox rows only then);
- liveness: workers silent for ``worker_timeout`` are committed as ``WorkersLost`` and their tasks
  go back to pending (attempt + 1) or fail after ``max_retries``.

Every state change goes through :meth:`Coordinator.propose`, so the later Raft issue swaps the
replicator and keeps all of this.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from dtf_app import __version__, localreg
from dtf_app import protocol as proto
from dtf_app.config import Settings
from dtf_app.coordinator import scheduler
from dtf_app.coordinator.cmdlog import CommandLog, Replicator
from dtf_app.coordinator.state import State
from dtf_app.security import keys as keymod

log = logging.getLogger("dtf.coordinator")

# Rounds yield once before collecting so frames that arrived together are handled together; the
# replicator's group commit does the rest of the batching.
DISPATCH_COALESCE_S = 0.0
RESULT_COALESCE_S = 0.0
# Extra tasks per slot a worker may hold queued, so a slot never idles for a coordinator round trip
# (tasks of a few milliseconds would otherwise run at the speed of that round trip). While recent tasks
# are that short, queue deeper; one extra is enough for anything longer, and keeps long tasks from
# piling up on one worker while another idles.
PREFETCH_PER_SLOT = 1
PREFETCH_PER_SLOT_SHORT = 8
SHORT_TASK_SECONDS = 0.05
LOG_LINES_KEPT = 200
SUBSCRIBER_BUFFER = 10_000


def iso(ts: float | None) -> str | None:
    """Unix seconds -> ISO 8601 UTC (the API's time format)."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def task_view(task: dict[str, Any]) -> dict[str, Any]:
    """A task as the API shows it."""
    view = {k: v for k, v in task.items() if k != "seq"}
    for key in ("create_time", "start_time", "end_time"):
        view[key] = iso(task.get(key))
    return view


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
        self.assigned_at: dict[str, float] = {}
        self.health: dict[str, Any] = {}
        self.closed = False

    def push(self, message: dict[str, Any]) -> None:
        try:
            self.send.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            # The connection is gone or hopelessly behind; liveness will notice.
            self.closed = True


class Subscriber:
    """A ``/ws`` client subscribed to push channels."""

    def __init__(self, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        self.send = send
        self.channels: dict[str, dict[str, Any]] = {}
        self.dropped = 0

    def push(self, message: dict[str, Any]) -> None:
        try:
            self.send.send_nowait(message)
        except trio.WouldBlock:
            self.dropped += 1  # a slow reader loses updates, never stalls the coordinator
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


def _matches(filter_: dict[str, Any], doc: dict[str, Any]) -> bool:
    for key, wanted in filter_.items():
        value = doc.get(key)
        if isinstance(wanted, list):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) else None


def _strings(value: Any) -> list[str]:
    """The strings of a list sent by a peer (anything else: none)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def clean_outcome(raw: Any) -> dict[str, Any] | None:
    """A worker's outcome reduced to the shapes the state machine and the store expect, or None.

    Workers are other processes (maybe other versions, maybe buggy): nothing they send may be able to
    stop the command log, so every field is checked here, before it is proposed.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("task_id"), str):
        return None
    attempt = raw.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        return None
    outcome = "completed" if raw.get("outcome") == "completed" else "failed"
    item: dict[str, Any] = {"task_id": raw["task_id"], "attempt": attempt, "outcome": outcome,
                            "start_time": _number(raw.get("start_time")), "end_time": _number(raw.get("end_time")),
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
        result["execution_time"] = _number(result.get("execution_time"))
        item["result"] = result
    return item


class Coordinator:
    """The coordinator's in-process world: state, log, store, connections, loops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.node_id = settings.node_id or f"coord-{socket.gethostname()}"
        self.state = State()
        self.store: Any = None
        self.cmdlog = CommandLog(self.data_dir / "log")
        self.replicator = Replicator(self.cmdlog, self.state, self._on_applied,
                                     snapshot_every=max(1, int(settings.snapshot_every)))
        self.queue = scheduler.ReadyQueue()
        self.conns: dict[str, WorkerConn] = {}
        self.subscribers: set[Subscriber] = set()
        self.task_logs: dict[str, deque[str]] = {}
        self.started_at = time.time()
        self.url = ""
        self._dispatch_wakeup = trio.Event()
        self._results: list[tuple[WorkerConn, dict[str, Any]]] = []
        self._started: list[dict[str, Any]] = []
        self._results_wakeup = trio.Event()
        self._replaying = True
        self._last_store_index = 0
        self.recent_run_seconds: float | None = None
        self.stats = {"submitted": 0, "assigned": 0, "recorded": 0}

    # ------------------------------------------------------------------ recovery
    def load(self) -> None:
        """Open the store and the log, restore the snapshot and replay the log."""
        from dtf_app.store.writer import Store

        self.store = Store(self.settings.coordinator_db_path())
        self._last_store_index = self.store.open()
        snapshot, records = self.cmdlog.open()
        if snapshot is not None:
            self.state = State.restore(snapshot)
            self.replicator.state = self.state
        for index, command in records:
            result, events = self.state.apply(command, index)
            self._on_applied(index, command, result, events)
        self._replaying = False
        for task in self.state.tasks.values():
            if task["status"] == "pending":
                self.queue.push(task)
        self.replicator.before_snapshot = self.store.flush
        log.info("recovered %d tasks, %d workers, %d keys (log index %d)", len(self.state.tasks),
                 len(self.state.workers), len(self.state.api_keys), self.state.applied_index)

    def _on_applied(self, index: int, command: dict[str, Any], result: Any, events: list[dict[str, Any]]) -> None:
        # Events of entries the store already holds are not written twice (exactly-once rows).
        if events and index > self._last_store_index and self.store is not None:
            try:
                self.store.put(index, events)
            except ValueError:
                log.exception("log entry %d produced store events the writer refused; not recorded", index)
        if isinstance(result, dict) and set(result) == {"error"}:
            log.error("log entry %d: %s", index, result["error"])
        if self._replaying:
            return
        op = command["op"]
        for event in events:
            if event["kind"] == "task":
                task = self.state.tasks[event["task"]["task_id"]]
                if task["status"] == "pending":
                    self.queue.push(task)
                else:
                    self.queue.discard(task["task_id"])
                if task["status"] in scheduler.TERMINAL_STATES:
                    self.task_logs.pop(task["task_id"], None)
                if self.subscribers:
                    self._publish("task_updates", lambda t=task: {"type": "task_update", "task": task_view(t)}, task)
            elif event["kind"] == "worker" and self.subscribers:
                worker_id = event["worker"]["worker_id"]
                self._publish("worker_updates", lambda w=worker_id: {"type": "worker_update",
                                                                      "worker": self.worker_view(w)}, event["worker"])
        if op == "CancelTask" and isinstance(result, dict) and result.get("worker_id"):
            conn = self.conns.get(result["worker_id"])
            if conn is not None and result.get("status") == "cancelled":
                conn.push({"type": proto.CANCEL, "task_id": result["task_id"], "attempt": result["attempts"]})
        self._dispatch_wakeup.set()

    def prefetch_per_slot(self) -> int:
        """How many tasks per slot a worker may hold queued, from how long recent tasks ran."""
        if self.recent_run_seconds is not None and self.recent_run_seconds < SHORT_TASK_SECONDS:
            return PREFETCH_PER_SLOT_SHORT
        return PREFETCH_PER_SLOT

    def _note_run_time(self, item: dict[str, Any]) -> None:
        start, end = item.get("start_time"), item.get("end_time")
        if start is None or end is None or end < start:
            return
        took = end - start
        # An exponential moving average: reacts within a few dozen tasks when the workload changes.
        previous = self.recent_run_seconds
        self.recent_run_seconds = took if previous is None else 0.9 * previous + 0.1 * took

    def wake_dispatcher(self) -> None:
        """Ask the dispatch loop for a round (new work or new free slots)."""
        self._dispatch_wakeup.set()

    # ------------------------------------------------------------------ proposing
    async def propose(self, commands: list[dict[str, Any]]) -> list[Any]:
        """Durably commit and apply commands (stamped with the leader's clock)."""
        now = time.time()
        for command in commands:
            command.setdefault("time", now)
        return await self.replicator.propose(commands)

    async def submit(self, docs: list[dict[str, Any]], *, allow_unschedulable: bool = False) -> list[dict[str, Any]]:
        """Validate-then-commit a batch of normalised task docs; returns the created tasks.

        Raises scheduler.TaskValidationError for dependency/feasibility problems (-> 400/422).
        """
        batch_id = uuid.uuid4().hex[:12]
        ids: list[str] = []
        for i, doc in enumerate(docs):
            task_id = doc.get("task_id") or uuid.uuid4().hex
            if task_id in self.state.tasks or task_id in ids:
                where = f"tasks[{i}]" if len(docs) > 1 else "task"
                raise scheduler.TaskConflictError(f"{where}.task_id {task_id!r} already exists")
            ids.append(task_id)
        in_batch = dict(zip(ids, docs, strict=True))
        for i, doc in enumerate(docs):
            for dep in doc["dependencies"]:
                if dep not in self.state.tasks and dep not in in_batch:
                    where = f"tasks[{i}]" if len(docs) > 1 else "task"
                    raise scheduler.TaskValidationError(
                        f"{where}.dependencies names unknown task {dep!r} (submit it first or in the same batch)")
        cycle = scheduler.find_cycle({task_id: doc["dependencies"] for task_id, doc in in_batch.items()})
        if cycle:
            raise scheduler.TaskValidationError(f"dependency cycle: {' -> '.join(cycle)}")
        prepared = []
        workers = list(self.state.workers.values())
        for i, (task_id, doc) in enumerate(in_batch.items()):
            where = f"tasks[{i}]" if len(docs) > 1 else "task"
            task = dict(doc, task_id=task_id, batch_id=batch_id)
            reason = scheduler.infeasibility_reason(workers, doc["requirements"])
            if reason is not None:
                if not allow_unschedulable:
                    raise scheduler.TaskValidationError(
                        f"{where} cannot run on any worker: {reason} "
                        "(pass allow_unschedulable=true to queue it until such a worker registers)")
                task["status"] = "unschedulable"
                task["error"] = reason
            prepared.append(task)
        (created,) = await self.propose([{"op": "SubmitTasks", "tasks": prepared}])
        self.stats["submitted"] += len(created)
        return created

    async def cancel(self, task_id: str, reason: str = "cancelled by user") -> dict[str, Any] | None:
        (task,) = await self.propose([{"op": "CancelTask", "task_id": task_id, "reason": reason}])
        return task

    # ------------------------------------------------------------------ views
    def worker_view(self, worker_id: str) -> dict[str, Any] | None:
        worker = self.state.workers.get(worker_id)
        if worker is None:
            return None
        conn = self.conns.get(worker_id)
        running = len(worker.get("assigned") or {})
        capacity = int(worker.get("max_concurrent_tasks") or 1)
        view = {k: v for k, v in worker.items() if k != "assigned"}
        view.update(
            status="online" if conn is not None and not conn.closed else "offline",
            running=running, free_slots=max(0, capacity - running),
            health=conn.health if conn is not None else {},
            registration_time=iso(worker.get("registration_time")),
            last_heartbeat=iso(worker.get("last_heartbeat")),
        )
        if conn is not None:
            view["last_heartbeat"] = iso(time.time() - (time.monotonic() - conn.last_seen))
        return view

    def status(self) -> dict[str, Any]:
        online = sum(1 for c in self.conns.values() if not c.closed)
        return {
            "node_id": self.node_id, "role": "leader", "leader_id": self.node_id, "term": 1,
            "url": self.url, "version": __version__, "uptime_seconds": round(time.time() - self.started_at, 3),
            "tasks": self.state.task_counts(),
            "workers": {"online": online, "offline": len(self.state.workers) - online,
                        "total": len(self.state.workers)},
            "queue_depth": len(self.queue),
        }

    # ------------------------------------------------------------------ pub/sub
    def _publish(self, channel: str, message: dict[str, Any] | Callable[[], dict[str, Any]],
                 doc: dict[str, Any]) -> None:
        """Push to matching subscribers; a callable message is built once, only if someone wants it."""
        built: dict[str, Any] | None = None
        for sub in self.subscribers:
            filter_ = sub.channels.get(channel)
            if filter_ is not None and _matches(filter_, doc):
                if built is None:
                    built = message() if callable(message) else message
                sub.push(built)

    # ------------------------------------------------------------------ worker connections
    async def worker_hello(self, hello: dict[str, Any], send: trio.MemorySendChannel[dict[str, Any]]) -> WorkerConn:
        """Register a connecting worker (durably) and start tracking its connection."""
        worker_id = str(hello["worker_id"])
        caps = hello.get("capabilities") if isinstance(hello.get("capabilities"), dict) else {}
        raw_slots = hello.get("max_concurrent_tasks")
        capacity = raw_slots if isinstance(raw_slots, int) and not isinstance(raw_slots, bool) and raw_slots > 0 else 1
        tags = sorted(set(_strings(hello.get("tags"))) | set(_strings(caps.get("tags"))))
        info = {
            "worker_id": worker_id, "hostname": str(hello.get("hostname") or ""), "capabilities": caps,
            "hardware": _strings(caps.get("hardware")) or ["cpu"], "tags": tags,
            "simulated": bool(hello.get("simulated") or caps.get("simulated")),
            "max_concurrent_tasks": capacity, "hardware_metrics": hello.get("metrics") or {},
        }
        old = self.conns.get(worker_id)
        if old is not None:
            old.closed = True
            old.send.close()
        conn = WorkerConn(worker_id, capacity, send)
        conn.running = {r["task_id"] for r in hello.get("running") or [] if isinstance(r, dict) and "task_id" in r}
        conn.finished = {r["task_id"] for r in hello.get("finished") or [] if isinstance(r, dict) and "task_id" in r}
        self.conns[worker_id] = conn
        await self.propose([{"op": "RegisterWorker", "worker": info}])
        log.info("worker %s connected (%s, %d slots%s)", worker_id, ",".join(info["hardware"]), capacity,
                 ", simulated hardware" if info["simulated"] else "")
        return conn

    def worker_gone(self, conn: WorkerConn) -> None:
        """The websocket closed; the worker has worker_timeout to come back before its tasks move."""
        conn.closed = True
        log.info("worker %s disconnected", conn.worker_id)
        self._dispatch_wakeup.set()

    def worker_message(self, conn: WorkerConn, message: dict[str, Any]) -> None:
        """Handle one frame from a worker (results are batched by the results loop)."""
        conn.last_seen = time.monotonic()
        kind = message.get("type")
        if kind == proto.RESULTS:
            for raw in message.get("items") or []:
                item = clean_outcome(raw)
                if item is None:
                    log.warning("worker %s sent a malformed outcome; ignored: %.200r", conn.worker_id, raw)
                    continue
                conn.running.discard(item["task_id"])
                conn.finished.discard(item["task_id"])
                self._results.append((conn, item))
            self._results_wakeup.set()
        elif kind == proto.STARTED:
            for item in message.get("items") or []:
                if isinstance(item, dict) and "task_id" in item:
                    conn.running.add(item["task_id"])
                    self._started.append(item)
            self._results_wakeup.set()
        elif kind == proto.HEARTBEAT:
            conn.health = message.get("metrics") or {}
            running = message.get("running")
            if isinstance(running, list):
                conn.running = {r["task_id"] for r in running if isinstance(r, dict) and "task_id" in r}
            worker = self.state.workers.get(conn.worker_id)
            if worker is not None:
                # Heartbeats are not log entries (too chatty); the store gets them directly.
                worker["last_heartbeat"] = time.time()
                self.store.put(None, [{"kind": "worker", "worker": {
                    **{k: v for k, v in worker.items() if k != "assigned"},
                    "status": "online", "hardware_metrics": conn.health}}])
        elif kind == proto.LOG:
            task_id = message.get("task_id")
            lines = message.get("lines") or []
            if isinstance(task_id, str) and isinstance(lines, list):
                buf = self.task_logs.setdefault(task_id, deque(maxlen=LOG_LINES_KEPT))
                buf.extend(str(line) for line in lines)
                task = self.state.tasks.get(task_id)
                if task is not None:
                    self._publish("task_updates", {"type": "task_log", "task_id": task_id,
                                                   "attempt": message.get("attempt"), "lines": lines}, task)

    # ------------------------------------------------------------------ loops
    async def dispatch_loop(self) -> None:
        """Assign ready tasks to free slots; one AssignTasks commit per round."""
        while True:
            await self._dispatch_wakeup.wait()
            self._dispatch_wakeup = trio.Event()
            await trio.sleep(DISPATCH_COALESCE_S)
            idle: dict[str, int] = {}
            prefetch: dict[str, int] = {}
            for worker_id, conn in self.conns.items():
                worker = self.state.workers.get(worker_id)
                if conn.closed or worker is None:
                    continue
                held = len(worker.get("assigned") or {})
                idle[worker_id] = max(0, conn.capacity - held)
                prefetch[worker_id] = conn.capacity * (1 + self.prefetch_per_slot()) - held - idle[worker_id]
            if not len(self.queue) or not any(n > 0 for n in (*idle.values(), *prefetch.values())):
                continue
            # Idle slots everywhere first; only then queue extra tasks on workers (prefetch), so a
            # free worker never waits while a busy one holds work in its queue.
            # A reconnecting worker's finished-but-unrecorded tasks wait for their results, not a re-run.
            reported = {task_id for conn in self.conns.values() for task_id in conn.finished}
            plan = scheduler.plan_assignments(self.queue, self.state.tasks, self.state.workers, idle,
                                              skip=reported)
            placed = {task_id for task_id, _ in plan}
            if len(self.queue) > len(placed) and any(n > 0 for n in prefetch.values()):
                plan += scheduler.plan_assignments(self.queue, self.state.tasks, self.state.workers, prefetch,
                                                   skip=placed | reported, prefetch=True)
            if not plan:
                continue
            assignments = [{"task_id": t, "worker_id": w, "attempt": self.state.tasks[t]["attempts"] + 1}
                           for t, w in plan]
            (accepted,) = await self.propose([{"op": "AssignTasks", "assignments": assignments}])
            per_worker: dict[str, list[dict[str, Any]]] = {}
            now = time.monotonic()
            for item in accepted:
                task = self.state.tasks[item["task_id"]]
                per_worker.setdefault(item["worker_id"], []).append({
                    "task_id": task["task_id"], "attempt": item["attempt"], "type": task["type"],
                    "name": task.get("name"), "config": task["config"],
                    "timeout_seconds": task["timeout_seconds"], "priority": task["priority"],
                })
            for worker_id, items in per_worker.items():
                conn = self.conns.get(worker_id)
                if conn is not None:
                    for item in items:
                        conn.assigned_at[item["task_id"]] = now
                    conn.push({"type": proto.ASSIGN, "tasks": items})
            self.stats["assigned"] += len(accepted)
            self._dispatch_wakeup.set()  # there may be more to place

    async def results_loop(self) -> None:
        """Commit batches of started/finished reports, then ack each worker."""
        while True:
            await self._results_wakeup.wait()
            self._results_wakeup = trio.Event()
            await trio.sleep(RESULT_COALESCE_S)
            results, self._results = self._results, []
            started, self._started = self._started, []
            commands: list[dict[str, Any]] = []
            if started:
                commands.append({"op": "StartTasks", "items": [
                    {"task_id": s["task_id"], "attempt": s.get("attempt"), "start_time": s.get("start_time")}
                    for s in started]})
            completed = [dict(item, worker_id=conn.worker_id) for conn, item in results
                         if item.get("outcome") == "completed"]
            for item in completed:
                self._note_run_time(item)
            failed = [{"task_id": item["task_id"], "attempt": item["attempt"], "worker_id": conn.worker_id,
                       "error": item.get("error") or "failed", "start_time": item.get("start_time"),
                       "end_time": item.get("end_time"), "retry": True}
                      for conn, item in results if item.get("outcome") != "completed"]
            # retry=True even for "cancelled": a task the user cancelled is already terminal (the report
            # is ignored), so a "cancelled" here means the worker was stopped mid-task: run it again.
            if completed:
                commands.append({"op": "CompleteTasks", "items": completed})
            if failed:
                commands.append({"op": "FailTasks", "items": failed})
            if not commands:
                continue
            await self.propose(commands)
            self.stats["recorded"] += len(completed)
            acks: dict[str, list[dict[str, Any]]] = {}
            by_id: dict[str, WorkerConn] = {}
            for conn, item in results:
                acks.setdefault(conn.worker_id, []).append({"task_id": item["task_id"], "attempt": item["attempt"]})
                by_id[conn.worker_id] = conn
            for worker_id, items in acks.items():
                conn = self.conns.get(worker_id) or by_id[worker_id]
                conn.push({"type": proto.ACK, "items": items})

    async def liveness_loop(self) -> None:
        """Commit WorkersLost for silent workers; requeue tasks a connected worker no longer has."""
        timeout = self.settings.worker_timeout
        grace = 2 * self.settings.heartbeat_interval + 5
        started = time.monotonic()
        period = max(0.2, min(1.0, timeout / 5))
        while True:
            await trio.sleep(period)
            now = time.monotonic()
            lost = [wid for wid, conn in self.conns.items() if now - conn.last_seen > timeout]
            # Workers known from before a restart get one worker_timeout to reconnect.
            if now - started > timeout:
                lost += [wid for wid, w in self.state.workers.items()
                         if w.get("status") == "online" and wid not in self.conns]
            if lost:
                for wid in lost:
                    conn = self.conns.pop(wid, None)
                    if conn is not None:
                        conn.closed = True
                        conn.send.close()
                log.warning("workers lost (silent for more than %.1f s): %s", timeout, ", ".join(sorted(set(lost))))
                await self.propose([{"op": "WorkersLost", "worker_ids": sorted(set(lost)),
                                     "reason": "worker lost (no heartbeat)"}])
            stale = []
            wall = time.time()
            for wid, conn in self.conns.items():
                worker = self.state.workers.get(wid)
                if worker is None or conn.closed:
                    continue
                for task_id, attempt in (worker.get("assigned") or {}).items():
                    task = self.state.tasks[task_id]
                    since = conn.assigned_at.get(task_id, started)
                    if task_id not in conn.running and task_id not in conn.finished and now - max(since, started) > grace:
                        stale.append({"task_id": task_id, "attempt": attempt, "worker_id": wid, "retry": True,
                                      "error": f"worker {wid} no longer runs it"})
                    elif task.get("start_time") and wall - task["start_time"] > task["timeout_seconds"] + grace + 30:
                        conn.push({"type": proto.CANCEL, "task_id": task_id, "attempt": attempt})
                        stale.append({"task_id": task_id, "attempt": attempt, "worker_id": wid, "retry": True,
                                      "error": f"timed out after {task['timeout_seconds']} s (coordinator)"})
            if stale:
                await self.propose([{"op": "FailTasks", "items": stale}])


# The worker key a first start creates for local workers; `dtf up` reuses it (same name and file).
LOCAL_WORKER_KEY_NAME = "dtf-up-workers"


def _write_secret(path: Path, secret: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.replace(tmp, path)


async def _ensure_bootstrap_key(coord: Coordinator) -> None:
    """First start with no keys: write an admin key to <data_dir>/admin.key and a worker key to
    <data_dir>/worker.key (both 0600), so the local path needs no setup while staying authenticated."""
    if coord.state.api_keys:
        return
    admin, worker = keymod.generate_key(), keymod.generate_key()
    await coord.propose([
        {"op": "CreateApiKey", "name": "bootstrap-admin", "role": "admin", "key_hash": keymod.hash_key(admin)},
        {"op": "CreateApiKey", "name": LOCAL_WORKER_KEY_NAME, "role": "worker", "key_hash": keymod.hash_key(worker)},
    ])
    _write_secret(coord.data_dir / "admin.key", admin)
    _write_secret(coord.data_dir / "worker.key", worker)
    log.warning("bootstrap admin API key written to %s (mode 0600); use it with --api-key or --data-dir",
                coord.data_dir / "admin.key")


def _write_node_file(coord: Coordinator) -> None:
    path = coord.data_dir / "node.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": coord.url, "node_id": coord.node_id, "pid": os.getpid()}))
    os.replace(tmp, path)


async def serve_coordinator(settings: Settings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a single-node coordinator until cancelled; ``task_status.started(url)`` once it serves."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from dtf_app.coordinator.api import create_app

    coord = Coordinator(settings)
    coord.data_dir.mkdir(parents=True, exist_ok=True)
    await trio.to_thread.run_sync(coord.load)
    app = create_app(coord)
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("dtf.http")
    config.graceful_timeout = 2.0
    config.websocket_ping_interval = None
    # A results frame may carry many outcomes, each with per-test rows of a large suite.
    config.websocket_max_message_size = 64 * 1024 * 1024
    stop = trio.Event()
    registration = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(coord.store.run)
            await nursery.start(coord.replicator.run)
            # Bind before anything is written, so a port in use leaves a fresh data dir untouched.
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
            await _ensure_bootstrap_key(coord)
            coord.url = _pick_url(binds, settings)
            _write_node_file(coord)
            registration = localreg.register(coord.url, coord.data_dir)
            nursery.start_soon(coord.dispatch_loop)
            nursery.start_soon(coord.results_loop)
            nursery.start_soon(coord.liveness_loop)
            log.info("coordinator %s serving on %s (data in %s)", coord.node_id, coord.url, coord.data_dir)
            task_status.started(coord.url)
            await trio.sleep_forever()
    finally:
        localreg.unregister(registration)
        with trio.CancelScope(shield=True):
            try:
                await coord.store.flush()
            finally:
                coord.store.close()
                coord.cmdlog.close()


def _pick_url(binds: list[str], settings: Settings) -> str:
    for bind in binds:
        if bind.startswith("http"):
            host, _, port = bind.rpartition(":")
            if settings.host in ("0.0.0.0", "::"):
                return f"http://127.0.0.1:{port}"
            return bind
    return f"http://{settings.host}:{settings.port}"
