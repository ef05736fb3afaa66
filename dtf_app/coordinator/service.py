"""The coordinator service: recovery, leader duties, worker connections and the serving loop.

``serve_coordinator`` binds the Quart API (hypercorn's trio worker) first, then opens the DuckDB store and
the durable command log, rebuilds the state machine (snapshot + replay) and runs the leader loops; until
all that is done ``GET /status`` answers 503 with what it waits for (readiness.py). The leader loops:

- dispatch: match ready tasks to free worker slots, commit ``AssignTasks``, push ``assign`` frames;
- results: batch the outcomes that workers stream in into one ``CompleteTasks``/``FailTasks`` commit,
  then ``ack`` them (the worker drops its outbox rows only then);
- liveness: workers silent for ``worker_timeout`` are committed as ``WorkersLost`` and their tasks
  go back to pending (attempt + 1) or fail after ``max_retries``.

Every state change goes through :meth:`Coordinator.propose`, which commits through the Raft log
(``replicator.py``; a single node is a one-member cluster). The leader loops run only while this node
leads: they start once it has applied its own term's first entry and stop when it steps down, and a
follower answers writes with the leader's address (api.py / ws.py).
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

from dtf_app import __version__, fsutil, jsonsafe, localreg
from dtf_app import protocol as proto
from dtf_app.config import Settings
from dtf_app.coordinator import bulk, pubsub, readiness, scheduler, snapshot_rows, tasklogs, tls, views
from dtf_app.coordinator.replicator import Replicator
from dtf_app.coordinator.state import State
from dtf_app.raft.types import NotLeader, ProposalDropped
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
SUBSCRIBER_BUFFER = 10_000  # the default of Settings.subscriber_buffer
# A liveness round that wakes this much later than asked means the event loop was stalled.
LOOP_STALL_TOLERANCE_S = 0.5


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
        notice = pubsub.missed_updates(self.missed, sorted(self.channels))
        self.missed = 0
        return notice


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
        # Strict JSON all the way to the store and the API: a NaN/inf metric becomes null, a lone
        # surrogate U+FFFD (frames are parsed strictly, but the HTTP form and old workers exist).
        item["result"] = jsonsafe.sanitise(result)
    if item["error"] is not None:
        item["error"] = jsonsafe.sanitise(item["error"])
    return item


class Coordinator:
    """The coordinator's in-process world: state, log, store, connections, loops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.cluster = resolve_cluster(settings)
        self.node_id = self.cluster.self_id
        self.store: Any = None
        heartbeat = max(1, int(settings.heartbeat_ms))
        self.replicator = Replicator(
            self.data_dir / "raft", State(), self._on_applied, node_id=self.node_id,
            peers=dict(self.cluster.members), secret=cluster_secret(settings) if not self.cluster.is_single else None,
            snapshot_every=max(1, int(settings.snapshot_every)), tick_seconds=heartbeat / 1000,
            election_ticks=max(2, int(settings.election_timeout_ms) // heartbeat),
            keep_entries=max(0, int(settings.snapshot_keep)),  # ha-faults hook
            ssl_context=tls.peer_context(settings, self.cluster.members, self.node_id))  # ha-faults hook: TLS
        self.replicator.on_restored = self._on_restored
        # ha-faults hook: a snapshot that covers entries the store never saw rebuilds their rows.
        self.replicator.on_snapshot_installed = lambda state, index: snapshot_rows.reconcile(self.store, state, index)
        self.replicator.on_leadership = self._on_leadership
        self.queue = scheduler.ReadyQueue()
        self.conns: dict[str, WorkerConn] = {}
        self.subscribers: set[Subscriber] = set()
        self.task_logs = tasklogs.TaskLogs()
        self.started_at = time.time()
        self.url = ""
        self._dispatch_wakeup = trio.Event()
        self._results: list[tuple[WorkerConn, dict[str, Any]]] = []
        self._started: list[dict[str, Any]] = []
        self._results_wakeup = trio.Event()
        self._replaying = True
        self._submit_lock = trio.Lock()
        self._last_store_index = 0
        # Leadership: set when this node becomes leader; the duties supervisor waits on it.
        self._became_leader = trio.Event()
        self._duties_scope: trio.CancelScope | None = None
        self.duties_running = False
        self.leader_since: float | None = None
        self.leadership_log: deque[dict[str, Any]] = deque(maxlen=100)
        from dtf_app.coordinator.cluster import ClusterMonitor

        self.monitor = ClusterMonitor(self)
        self.recent_run_seconds: float | None = None
        self.stats = {"submitted": 0, "assigned": 0, "recorded": 0}
        # A single node waits for recovery, its bootstrap key and its loops; a cluster member for
        # recovery, a known leader and having applied what is committed (plus its loops while it leads).
        self.readiness = readiness.Readiness(
            readiness.COORDINATOR_CONDITIONS if self.cluster.is_single else readiness.MEMBER_CONDITIONS)

    @property
    def state(self) -> State:
        """The replicated state machine (replaced wholesale when a snapshot is installed)."""
        return self.replicator.state

    @property
    def is_leader(self) -> bool:
        return self.replicator.is_leader

    @property
    def leader_id(self) -> str | None:
        return self.replicator.leader_id

    @property
    def leader_url(self) -> str | None:
        leader = self.replicator.leader_id
        if leader is None:
            return None
        return self.url if leader == self.node_id else self.cluster.members.get(leader)

    # ------------------------------------------------------------------ recovery
    def load(self) -> None:
        """Open the store and the Raft log (blocking: run in a thread); see :meth:`recover`."""
        self.open_store()
        self.open_log()

    def open_store(self) -> None:
        """Open the DuckDB store (its file lock keeps a second coordinator off this data dir)."""
        from dtf_app.store.writer import Store

        fsutil.private_dir(self.data_dir)
        db_path = self.settings.coordinator_db_path()
        self.store = Store(db_path, quarantine_path=self.data_dir / "store-quarantine.jsonl")
        self._last_store_index = self.store.open()
        # DuckDB creates its files itself; the process umask (node.py) covers later ones such as the .wal.
        fsutil.private_files(db_path.parent, db_path.name, db_path.name + ".wal")

    def open_log(self) -> None:
        """Open the Raft log and restore the newest snapshot (blocking). Committed entries after the
        snapshot are applied again once the replicator runs (:meth:`recover`); a data dir written by the
        pre-Raft command log is imported first."""
        _import_command_log(self)
        self.replicator.open()
        self.replicator.before_snapshot = self.store.flush

    async def recover(self) -> None:
        """Wait until every entry committed before this start is applied again; then serve."""
        await self.replicator.wait_caught_up()
        self._replaying = False
        self._on_restored(self.state)
        log.info("recovered %d tasks, %d workers, %d keys (log index %d)", len(self.state.tasks),
                 len(self.state.workers), len(self.state.api_keys), self.state.applied_index)

    def _on_restored(self, state: State) -> None:
        """A snapshot replaced the state: rebuild what is derived from it."""
        self.queue = scheduler.ReadyQueue()
        for task in state.tasks.values():
            if task["status"] == "pending":
                self.queue.push(task)
        if self.replicator.driver is not None:
            self.replicator.driver.node.can_campaign = self.node_id not in state.disabled_nodes
        self._dispatch_wakeup.set()

    # ------------------------------------------------------------------ leadership
    def _on_leadership(self, change: Any) -> None:
        """Called by the Raft driver when this node's role or known leader changes."""
        entry = {"time": time.time(), "role": change.role, "leader_id": change.leader_id, "term": change.term,
                 "previous_leader_id": change.previous_leader_id}
        self.leadership_log.append(entry)
        if self.subscribers:
            # Before a stepping-down leader closes its subscribers: they learn why they are sent away.
            self._publish("leadership_updates", {
                "type": "leadership_update", "previous_leader_id": change.previous_leader_id,
                "new_leader_id": change.leader_id, "term": change.term,
                "reason": "election" if change.leader_id else "leader lost", "timestamp": iso(entry["time"])}, entry)
        if change.role == "leader":
            log.warning("became leader of term %d", change.term)
            self.leader_since = time.time()
            self._became_leader.set()
        else:
            if change.previous_role == "leader":
                log.warning("stepped down in term %d (leader now: %s)", change.term, change.leader_id or "unknown")
            elif change.leader_id:
                log.info("following leader %s (term %d)", change.leader_id, change.term)
            self.leader_since = None
            self._step_down()

    def _step_down(self) -> None:
        """No longer the leader: stop the leader loops and send workers and subscribers to the leader."""
        if self._duties_scope is not None:
            self._duties_scope.cancel()
        notice = {"type": proto.ERROR, "code": "not_leader", "message": "this coordinator is no longer the leader",
                  "leader_id": self.leader_id, "leader_url": self.leader_url}
        for conn in list(self.conns.values()):
            conn.push(notice)
            conn.closed = True
            conn.send.close()
        self.conns.clear()
        for sub in list(self.subscribers):
            sub.push({"type": "error", "error": {k: v for k, v in notice.items() if k != "type"}})
            sub.send.close()
        self.subscribers.clear()
        self._results.clear()
        self._started.clear()

    async def leader_duties(self) -> None:
        """Run the leader loops while this node leads; restart them at each new term of leadership."""
        while True:
            await self._became_leader.wait()
            self._became_leader = trio.Event()
            term = self.replicator.term
            try:
                # Our own term's first entry committed and applied: the state is complete, act on it.
                await self.replicator.read_barrier()
            except (NotLeader, ProposalDropped):
                continue
            if not self.is_leader or self.replicator.term != term:
                continue
            with trio.CancelScope() as scope:
                self._duties_scope = scope
                try:
                    await self.propose([{"op": "LeaderElected", "node_id": self.node_id,
                                         "reason": "election"}])
                    await _ensure_bootstrap_key(self)
                    self.readiness.done(readiness.BOOTSTRAP_KEY)
                    self.duties_running = True
                    self.readiness.done(readiness.LOOPS)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self.dispatch_loop)
                        nursery.start_soon(self.results_loop)
                        nursery.start_soon(self.liveness_loop)
                except* (NotLeader, ProposalDropped) as group:
                    log.warning("leader duties of term %d stopped: %s", term, group.exceptions[0])
            self.duties_running = False
            self._duties_scope = None

    async def read_barrier(self) -> None:
        """Linearizable reads: wait until this node has applied everything committed so far."""
        await self.replicator.read_barrier()

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
                    if task["status"] == "failed":  # for good (retries spent): worth an operator's line
                        log.info("task %s (%s) failed after %d attempt(s): %.500s", task["task_id"],
                                 task.get("name") or "unnamed", task["attempts"], task.get("error") or "")
                if self.subscribers:
                    self._publish("task_updates", lambda t=task: pubsub.task_update(task_view(t), index), task)
            elif event["kind"] == "worker" and self.subscribers:
                worker_id = event["worker"]["worker_id"]
                self._publish("worker_updates", lambda w=worker_id: pubsub.worker_update(
                    self.worker_view(w), w, index), event["worker"])
        if op == "ForgetWorker" and isinstance(result, dict) and result.get("forgotten"):
            conn = self.conns.pop(command["worker_id"], None)
            if conn is not None:
                conn.refuse(f"the enrolment of worker {command['worker_id']!r} was revoked by an admin")
        if op == "SetNodeEnabled" and isinstance(result, dict) and result.get("node_id") == self.node_id:
            self._apply_enabled(bool(result.get("enabled")))
        if op == "CancelTask" and isinstance(result, dict) and result.get("worker_id"):
            conn = self.conns.get(result["worker_id"])
            if conn is not None and result.get("status") == "cancelled":
                conn.push({"type": proto.CANCEL, "task_id": result["task_id"], "attempt": result["attempts"]})
        self._dispatch_wakeup.set()

    def _apply_enabled(self, enabled: bool) -> None:
        """An operator enabled/disabled this node: a disabled node hands leadership over, never campaigns."""
        driver = self.replicator.driver
        if driver is None:
            return
        driver.node.can_campaign = enabled
        if not enabled and self.is_leader:
            others = [m for m in self.cluster.members if m != self.node_id and m not in self.state.disabled_nodes]
            if others:
                # The most caught-up peer takes over fastest.
                best = max(others, key=lambda m: getattr(driver.node.progress(m), "match", 0))
                log.warning("disabled by an operator: handing leadership to %s", best)
                driver.transfer_leadership(best)

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
        """Validate-then-commit a batch of normalised task docs (filled in place); returns the created tasks.

        Raises scheduler.TaskUnprocessableError for dependency/feasibility problems (-> 422).
        """
        # One submit at a time: the checks below yield to the event loop, and no other submit may add
        # the same task ids between them and the commit.
        async with self._submit_lock:
            return await self._submit(docs, allow_unschedulable)

    async def _submit(self, docs: list[dict[str, Any]], allow_unschedulable: bool) -> list[dict[str, Any]]:
        batch_id = uuid.uuid4().hex[:12]
        many = len(docs) > 1
        in_batch: dict[str, dict[str, Any]] = {}
        async for i, doc in bulk.checkpoints(docs):
            task_id = doc.get("task_id") or uuid.uuid4().hex
            if task_id in self.state.tasks or task_id in in_batch:
                raise scheduler.TaskConflictError(f"{f'tasks[{i}]' if many else 'task'}.task_id {task_id!r} already exists")
            in_batch[task_id] = doc
        async for i, doc in bulk.checkpoints(docs):
            for dep in doc["dependencies"]:
                if dep not in self.state.tasks and dep not in in_batch:
                    raise scheduler.TaskUnprocessableError(
                        f"{f'tasks[{i}]' if many else 'task'}.dependencies names unknown task {dep!r} "
                        "(submit it first or in the same batch)")
        graph = {task_id: doc["dependencies"] for task_id, doc in in_batch.items() if doc["dependencies"]}
        cycle = scheduler.find_cycle(graph)
        if cycle:
            raise scheduler.TaskUnprocessableError(f"dependency cycle: {' -> '.join(cycle)}")
        prepared = []
        workers = list(self.state.workers.values())
        async for i, (task_id, doc) in bulk.checkpoints(in_batch.items()):
            # The normalised docs are the caller's own fresh dicts: filled in place, not copied (a big
            # batch would otherwise exist once more in memory).
            task = doc
            task["task_id"], task["batch_id"] = task_id, batch_id
            reason = scheduler.infeasibility_reason(workers, doc["requirements"])
            if reason is not None:
                if not allow_unschedulable:
                    raise scheduler.TaskUnprocessableError(
                        f"{f'tasks[{i}]' if many else 'task'} cannot run on any worker: {reason} "
                        "(pass allow_unschedulable=true to queue it until such a worker registers)")
                task["status"] = "unschedulable"
                task["error"] = reason
            prepared.append(task)
        ids = list(in_batch)
        del in_batch
        reordered = bool(graph) and len(prepared) > bulk.SUBMIT_COMMAND_TASKS
        if reordered:
            # Several commands: a task's in-batch dependencies must be applied no later than it.
            by_id = {task["task_id"]: task for task in prepared}
            prepared = [by_id[task_id] for task_id in bulk.dependency_order(ids, graph)]
            del by_id
        # Several SubmitTasks commands in one proposal: one fsync for the whole batch, and the state
        # machine applies (and the event loop runs) between them.
        step = bulk.SUBMIT_COMMAND_TASKS
        commands = [{"op": "SubmitTasks", "tasks": prepared[i:i + step]} for i in range(0, len(prepared), step)]
        del prepared
        results = await self.propose(commands)
        if not all(isinstance(chunk, list) for chunk in results):
            raise RuntimeError(f"the state machine refused the batch: {results!r:.500}")
        created = [task for chunk in results for task in chunk]
        if reordered:
            by_id = {task["task_id"]: task for task in created}
            created = [by_id[task_id] for task_id in ids]
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
        connected = conn is not None and not conn.closed
        view.update(
            status="online" if connected else "offline", connected=connected,
            running=running, free_slots=max(0, capacity - running),
            health=conn.health if conn is not None else {},
            registration_time=iso(worker.get("registration_time")),
            last_heartbeat=iso(worker.get("last_heartbeat")),
            enrolled=worker_id in self.state.enrolments,  # bound to a credential (dtf workers forget frees it)
        )
        if conn is not None:
            view["last_heartbeat"] = iso(time.time() - (time.monotonic() - conn.last_seen))
        views.add_source_fields(view, worker)
        return view

    def status(self) -> dict[str, Any]:
        online = sum(1 for c in self.conns.values() if not c.closed)
        return {
            "node_id": self.node_id, "role": self.replicator.role, "leader_id": self.leader_id,
            "leader_url": self.leader_url, "term": self.replicator.term,
            "commit_index": self.replicator.commit_index, "applied_index": self.state.applied_index,
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

    def publish_cluster(self, monitor: Any) -> None:
        """``cluster_status_update`` and ``cluster_health_update`` pushes (after each probe round)."""
        from dtf_app.coordinator import cluster as views

        now = iso(time.time())
        nodes = views.node_views(self, monitor)
        doc = {"node_id": self.node_id}
        self._publish("cluster_status", lambda: {
            "type": "cluster_status_update", "timestamp": now, "leader_id": self.leader_id,
            "term": self.replicator.term,
            "nodes": [{"node_id": n["node_id"], "state": n["state"], "term": n["term"],
                       "last_heartbeat": n["last_heartbeat"], "uptime_seconds": n["uptime_seconds"]} for n in nodes]},
            doc)
        self._publish("cluster_status", lambda: {"type": "cluster_health_update", "timestamp": now,
                                                 **views.health(self, monitor),
                                                 "nodes": views.health_nodes(self, monitor)}, doc)

    # ------------------------------------------------------------------ worker connections
    async def worker_hello(self, hello: dict[str, Any], send: trio.MemorySendChannel[dict[str, Any]], *,
                           credential: str | None = None, key_name: str | None = None) -> WorkerConn:
        """Register a connecting worker (durably) and start tracking its connection.

        Raises enrolment.CredentialRefused, before touching anything, when the caller may not act as the id.
        """
        from dtf_app.coordinator import enrolment

        worker_id = str(hello["worker_id"])
        issued = await enrolment.admit(self, worker_id, credential, key_name)
        # Revoked while the enrolment was being committed: refuse rather than keep an unenrolled socket.
        enrolment.verify(self.state.enrolments, worker_id, issued or credential)
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
        conn.issued_credential = issued
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
                # Heartbeats are leader-local liveness (too chatty for the log, and replicated state
                # changes only in apply); the leader's store gets them directly.
                conn.last_heartbeat = time.time()
                self.store.put(None, [{"kind": "worker", "worker": {
                    **{k: v for k, v in worker.items() if k != "assigned"},
                    "last_heartbeat": conn.last_heartbeat, "status": "online", "hardware_metrics": conn.health}}])
                if self.subscribers:
                    # Health gauges move with heartbeats, which are not log entries: push them anyway.
                    self._publish("worker_updates", lambda w=conn.worker_id: pubsub.worker_update(
                        self.worker_view(w), w, self.state.applied_index), worker)
        elif kind == proto.LOG:
            self._take_log(conn, message)

    def _take_log(self, conn: WorkerConn, message: dict[str, Any]) -> None:
        """Keep (bounded) and fan out log lines, only for a task this worker holds now (current attempt)."""
        task_id, lines, attempt = message.get("task_id"), message.get("lines"), message.get("attempt")
        if not isinstance(task_id, str) or not isinstance(lines, list):
            self.task_logs.drop(tasklogs.DROP_MALFORMED, len(lines) if isinstance(lines, list) else 1)
            return
        task = self.state.tasks.get(task_id)
        if task is None:
            self.task_logs.drop(tasklogs.DROP_UNKNOWN_TASK, len(lines))
            return
        worker = self.state.workers.get(conn.worker_id)
        held = (worker.get("assigned") or {}).get(task_id) if worker is not None else None
        if held is None or held != attempt or conn.closed:
            self.task_logs.drop(tasklogs.DROP_NOT_ASSIGNED, len(lines))
            return
        kept = self.task_logs.add(conn.worker_id, task_id, lines)
        if kept:
            self._publish("task_updates", lambda: pubsub.task_log(task_id, attempt, kept), task)

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
                if conn.closed or worker is None or worker.get("drained"):
                    continue  # a drained worker finishes what it holds and gets nothing new
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
            before = time.monotonic()
            await trio.sleep(period)
            now = time.monotonic()
            stalled = now - before - period
            if stalled > LOOP_STALL_TOLERANCE_S:
                # The coordinator itself did not run (a huge batch, a slow disk, the host paused us):
                # heartbeats may be waiting unread, so that time does not count against the workers.
                log.warning("event loop stalled for %.1f s; not counted against worker heartbeats", stalled)
                for conn in self.conns.values():
                    conn.last_seen += stalled
                    for task_id in conn.assigned_at:
                        conn.assigned_at[task_id] += stalled
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
    fd = fsutil.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.replace(tmp, path)


async def _ensure_bootstrap_key(coord: Coordinator) -> None:
    """First start with no keys: write an admin key to <data_dir>/admin.key and a worker key to
    <data_dir>/worker.key (both 0600), so the local path needs no setup while staying authenticated."""
    for name in ("admin.key", "worker.key"):
        fsutil.private_file(coord.data_dir / name)
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
    with os.fdopen(fsutil.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as handle:
        handle.write(json.dumps({"url": coord.url, "node_id": coord.node_id, "pid": os.getpid()}))
    os.replace(tmp, path)


async def serve_coordinator(settings: Settings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a single-node coordinator until cancelled; ``task_status.started(url)`` once it serves."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from dtf_app.coordinator.api import create_app

    coord = Coordinator(settings)
    if coord.cluster.is_single:
        if settings.high_availability.get("enabled"):
            log.warning("high availability is enabled with no peers: coordinator %s runs as a one-member "
                        "Raft cluster", coord.node_id)
        else:
            log.info("coordinator %s: a one-member cluster (no peers configured)", coord.node_id)
    else:
        log.info("coordinator %s: member of a %d-node cluster (%s)", coord.node_id, len(coord.cluster.members),
                 ", ".join(f"{i}={u}" for i, u in coord.cluster.members.items()))
    app = create_app(coord)
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    if settings.workers_port is not None and (settings.workers_port == 0 or settings.workers_port != settings.port):
        # The design's server.workers_port: a second listener serving the same app, so workers configured
        # for that port connect (the first bind stays the node's advertised URL).
        config.bind.append(f"{settings.host}:{settings.workers_port}")
    tls.configure_server(config, settings)  # ha-faults hook: HTTPS (and wss:// peers) with a certificate
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
            # Listen first: during a long recovery /status answers 503 with what it waits for (every
            # other route 503 "starting"), and a port in use stops the start before the data dir is touched.
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
            coord.url = settings.advertise_url or _pick_url(binds, settings)
            await trio.to_thread.run_sync(coord.open_store)
            _write_node_file(coord)  # after the store's lock: a second coordinator never overwrites it
            await trio.to_thread.run_sync(coord.open_log)
            await nursery.start(coord.store.run)
            await nursery.start(coord.replicator.run)
            nursery.start_soon(coord.leader_duties)
            nursery.start_soon(coord.monitor.run)
            registration = localreg.register(coord.url, coord.data_dir)
            if coord.cluster.is_single:
                await coord.recover()
                coord.readiness.done(readiness.RECOVERY)
                # A single node leads at once; wait for its first duties (bootstrap key written, loops up).
                while not coord.duties_running:
                    await trio.sleep(0.01)
            else:
                nursery.start_soon(_recover_and_report, coord)
            log.info("coordinator %s serving on %s (data in %s)", coord.node_id, coord.url, coord.data_dir)
            if len(binds) > 1:
                log.info("workers port (server.workers_port): also serving on %s", ", ".join(binds[1:]))
            task_status.started(coord.url)
            await trio.sleep_forever()
    finally:
        localreg.unregister(registration)
        with trio.CancelScope(shield=True):
            try:
                if coord.store is not None:
                    await coord.store.flush()
            finally:
                if coord.store is not None:
                    coord.store.close()
                coord.replicator.close()


def _pick_url(binds: list[str], settings: Settings) -> str:
    for bind in binds:
        if bind.startswith("http"):
            host, _, port = bind.rpartition(":")
            if settings.host in ("0.0.0.0", "::"):
                return f"{bind.split('://')[0]}://127.0.0.1:{port}"  # ha-faults hook: https too
            return bind
    return f"{tls.scheme(settings)}://{settings.host}:{settings.port}"


async def _recover_and_report(coord: Coordinator) -> None:
    """A cluster member: replay what it knows, then keep its readiness current (a leader known, caught
    up with the commit index, its loops running while it leads) and say every few seconds while no leader
    is known (pods of a StatefulSet start one by one; writes are refused until a majority elects one)."""
    await coord.recover()
    coord.readiness.done(readiness.RECOVERY)
    quiet_until = 0.0
    while True:
        rep = coord.replicator
        for condition, holds in ((readiness.LEADER_KNOWN, coord.leader_id is not None),
                                 (readiness.CAUGHT_UP, coord.state.applied_index >= rep.commit_index),
                                 (readiness.LOOPS, not rep.is_leader or coord.duties_running)):
            if holds:
                coord.readiness.done(condition)
            else:
                coord.readiness.require(condition)
        await trio.sleep(0.2)
        if coord.leader_id is None and time.monotonic() >= quiet_until:
            log.warning("no leader yet: waiting for a majority of %d of the %d coordinators (%s) to be reachable",
                        coord.cluster.quorum, len(coord.cluster.members), ", ".join(coord.cluster.members))
            quiet_until = time.monotonic() + 5.0


def resolve_cluster(settings: Settings) -> Any:
    """This node's cluster membership from the settings (see dtf_app/cluster.py for the rule)."""
    from dtf_app.cluster import ClusterConfigError, resolve
    from dtf_app.config import ConfigError

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    advertise = settings.advertise_url or f"{tls.scheme(settings)}://{host}:{settings.port}"  # ha-faults hook
    node_id = settings.node_id
    if not settings.peers:
        return resolve([], node_id=node_id or f"coord-{socket.gethostname()}", advertise_url=advertise)
    where = "HIGH_AVAILABILITY_PEERS" if settings.peers_include_self else "peers"
    try:
        return resolve(list(settings.peers.items()), node_id=node_id, advertise_url=advertise,
                       includes_self=True if settings.peers_include_self else None, where=where)
    except ClusterConfigError as exc:
        raise ConfigError(str(exc)) from None


def cluster_secret(settings: Settings) -> bytes:
    """The secret that authenticates peer traffic; a cluster member cannot start without one."""
    from dtf_app.config import ConfigError

    secret = settings.cluster_secret
    if settings.cluster_secret_file:
        try:
            secret = Path(settings.cluster_secret_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--cluster-secret-file {settings.cluster_secret_file}: cannot read it: "
                              f"{exc.strerror or exc}") from None
    if not secret:
        raise ConfigError("a coordinator with peers needs the cluster secret that authenticates peer traffic: "
                          "set DTF_CLUSTER_SECRET (the same value on every node) or --cluster-secret-file FILE")
    if len(secret) < 16:
        raise ConfigError("the cluster secret is too short: use at least 16 characters (e.g. `openssl rand -hex 32`)")
    return secret.encode()


def _import_command_log(coord: Coordinator) -> None:
    """A data dir of the pre-Raft single-node command log: import it once as the Raft log's snapshot."""
    legacy = coord.data_dir / "log"
    raft_dir = coord.data_dir / "raft"
    if not legacy.is_dir():
        return
    if raft_dir.exists() and any(raft_dir.glob("wal-*.log")):
        log.warning("%s holds a pre-Raft command log, but the Raft log in %s exists already: the old log is "
                    "ignored (move it away to silence this)", legacy, raft_dir)
        return
    from dtf_app.coordinator.cmdlog import CommandLog
    from dtf_app.raft.log import DurableStorage
    from dtf_app.raft.types import HardState, Snapshot

    if not coord.cluster.is_single:
        from dtf_app.config import ConfigError

        raise ConfigError(f"{legacy} holds a single-node command log from an older DTF: start this coordinator "
                          "once without --peers to import it, then add peers")
    cmdlog = CommandLog(legacy)
    snapshot, records = cmdlog.open()
    cmdlog.close()
    state = State.restore(snapshot) if snapshot is not None else State()
    for index, command in records:
        state.apply(command, index)
    index = state.applied_index
    if index:
        storage = DurableStorage(raft_dir)
        try:
            storage.apply_snapshot(Snapshot(index=index, term=1, voters=frozenset({coord.node_id}),
                                            data=state.snapshot()))
            storage.set_hard_state(HardState(term=1, vote=coord.node_id, commit=index))
            storage.sync()
        finally:
            storage.close()
    legacy.rename(coord.data_dir / "log.imported")
    log.warning("imported the command log of an older DTF (%d entries) into the Raft log; the old files "
                "are kept in %s", index, coord.data_dir / "log.imported")
