"""Leader duties: what only the leader does, started on election and stopped on step-down.

- dispatch: match ready tasks to free worker slots (queue policy: scheduler.py; worker choice:
  balancer.py), commit ``AssignTasks``, push ``assign`` frames; when preemption is on, commit
  ``PreemptTasks`` for running tasks of much lower priority and push them ``cancel`` frames;
- results: batch the outcomes that workers stream in into one ``CompleteTasks``/``FailTasks`` commit,
  then ``ack`` them (the worker drops its outbox rows only then);
- liveness: workers silent for ``worker_timeout`` are committed as ``WorkersLost`` and their tasks
  go back to pending (attempt + 1) or fail after ``max_retries``;
- scaling advice (scaling.py) and the health monitor's quarantine decisions (health_monitor.py).

:meth:`LeaderDuties.supervise` starts the loops once this node has applied its own term's first entry
(so the state it acts on is complete) and the loops die with the cancel scope when it steps down. Every
command they propose goes through the replicator, which stamps the leader's term on it (fencing: an old
leader's late proposal is refused, never applied).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from dtf_app import fsutil
from dtf_app import protocol as proto
from dtf_app.coordinator import balancer, quarantine, readiness, scheduler
from dtf_app.coordinator import resources as resmod
from dtf_app.raft.types import NotLeader, ProposalDropped
from dtf_app.security import keys as keymod

if TYPE_CHECKING:
    from dtf_app.coordinator.intake import WorkerConn
    from dtf_app.coordinator.service import Coordinator

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
# A liveness round that wakes this much later than asked means the event loop was stalled.
LOOP_STALL_TOLERANCE_S = 0.5
# A task that made the leader preempt a running one is not the cause of another preemption this soon
# (the freed slot is its own; if it went elsewhere, the next try waits this long).
PREEMPT_HOLD_S = 10.0
# The worker key a first start creates for local workers; `dtf up` reuses it (same name and file).
LOCAL_WORKER_KEY_NAME = "dtf-up-workers"


class LeaderDuties:
    """The leader loops and the buffers that feed them."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.running = False
        self.recent_run_seconds: float | None = None
        self._scope: trio.CancelScope | None = None
        self._became_leader = trio.Event()
        self._dispatch_wakeup = trio.Event()
        self._results_wakeup = trio.Event()
        self._results: list[tuple[WorkerConn, dict[str, Any]]] = []
        self._started: list[dict[str, Any]] = []
        settings = coord.settings
        self.policy = scheduler.QueuePolicy(aging_rate=float(settings.aging_rate),
                                            preemption_threshold=int(settings.preemption_threshold))
        self.backoff = [float(settings.retry_backoff), float(settings.retry_backoff_max)]
        self.strategy = settings.balancer_strategy
        self.history = balancer.PerfHistory()
        self._preempting: dict[str, float] = {}  # task id -> when it caused a preemption

    # ------------------------------------------------------------------ inputs
    def elected(self) -> None:
        """This node became leader: the supervisor starts the loops (after a read barrier)."""
        self._became_leader.set()

    def stop(self) -> None:
        """This node stepped down: stop the loops and forget what they had not committed yet."""
        if self._scope is not None:
            self._scope.cancel()
        self._results.clear()
        self._started.clear()

    def wake(self) -> None:
        """Ask the dispatch loop for a round (new work or new free slots)."""
        self._dispatch_wakeup.set()

    def take_results(self, conn: WorkerConn, items: list[dict[str, Any]]) -> None:
        """Clean outcomes from a worker, for the next results commit."""
        self._results.extend((conn, item) for item in items)
        self._results_wakeup.set()

    def take_started(self, items: list[dict[str, Any]]) -> None:
        """``started`` reports from a worker, for the next results commit."""
        self._started.extend(items)
        self._results_wakeup.set()

    def prefetch_per_slot(self) -> int:
        """How many tasks per slot a worker may hold queued, from how long recent tasks ran."""
        if self.recent_run_seconds is not None and self.recent_run_seconds < SHORT_TASK_SECONDS:
            return PREFETCH_PER_SLOT_SHORT
        return PREFETCH_PER_SLOT

    def note_run_time(self, item: dict[str, Any]) -> None:
        start, end = item.get("start_time"), item.get("end_time")
        if start is None or end is None or end < start:
            return
        took = end - start
        state = self.coord.state
        task, worker = state.tasks.get(item.get("task_id")), state.workers.get(item.get("worker_id"))
        if task is not None and worker is not None:
            # performance_aware's history: leader memory, so no query runs on the scheduling path.
            self.history.record(worker["worker_id"], balancer.hardware_class(worker), balancer.perf_kind(task), took)
        # An exponential moving average: reacts within a few dozen tasks when the workload changes.
        previous = self.recent_run_seconds
        self.recent_run_seconds = took if previous is None else 0.9 * previous + 0.1 * took

    # ------------------------------------------------------------------ supervisor
    async def supervise(self) -> None:
        """Run the leader loops while this node leads; restart them at each new term of leadership."""
        coord = self.coord
        while True:
            await self._became_leader.wait()
            self._became_leader = trio.Event()
            term = coord.replicator.term
            try:
                # Our own term's first entry committed and applied: the state is complete, act on it.
                await coord.replicator.read_barrier()
            except (NotLeader, ProposalDropped):
                continue
            if not coord.is_leader or coord.replicator.term != term:
                continue
            with trio.CancelScope() as scope:
                self._scope = scope
                try:
                    await coord.propose([{"op": "LeaderElected", "node_id": coord.node_id, "reason": "election"}])
                    await coord.bootstrap_members()
                    await ensure_bootstrap_key(coord)
                    coord.readiness.done(readiness.BOOTSTRAP_KEY)
                    self.running = True
                    coord.readiness.done(readiness.LOOPS)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self.seed_history)
                        nursery.start_soon(self.dispatch_loop)
                        nursery.start_soon(self.results_loop)
                        nursery.start_soon(self.liveness_loop)
                        nursery.start_soon(coord.scaling.loop)
                        nursery.start_soon(coord.health_monitor.leader_loop)
                except* (NotLeader, ProposalDropped) as group:
                    log.warning("leader duties of term %d stopped: %s", term, group.exceptions[0])
            self.running = False
            self._scope = None

    async def seed_history(self) -> None:
        """performance_aware's history from this node's DuckDB file (the executions every replica stored),
        read once per term in a thread; until it arrives the strategy falls back to least-loaded."""
        self.history = balancer.PerfHistory()  # a term starts from the store, not from a previous term's memory
        store = self.coord.store
        if store is None or self.strategy != "performance_aware":
            return
        try:
            rows = await store.query(balancer.HISTORY_SEED_SQL, [balancer.HISTORY_SEED_ROWS])
        except Exception as exc:  # a store problem must not cost the leadership: learn from new results
            log.warning("performance history not read from the store: %s", exc)
            return
        used = self.history.seed(rows, self.coord.state.workers)
        log.info("performance history: %d execution(s) read from the store", used)

    # ------------------------------------------------------------------ loops
    def _free_slots(self) -> tuple[dict[str, int], dict[str, int]]:
        """Idle slots and prefetch room per connected, undrained worker (task_cap_per_worker applied)."""
        coord = self.coord
        state = coord.state
        cap = coord.settings.task_cap_per_worker
        idle: dict[str, int] = {}
        prefetch: dict[str, int] = {}
        depth = 1 + self.prefetch_per_slot()
        for worker_id, conn in coord.conns.items():
            worker = state.workers.get(worker_id)
            if conn.closed or worker is None or worker.get("drained") or worker.get("stopping"):
                continue  # a drained (or stopping) worker finishes what it holds and gets nothing new
            held = len(worker.get("assigned") or {})
            room = conn.capacity * depth - held
            if cap is not None:
                room = min(room, cap - held)
            idle[worker_id] = max(0, min(conn.capacity - held, room))
            prefetch[worker_id] = max(0, room - idle[worker_id])
        return idle, prefetch

    async def dispatch_loop(self) -> None:
        """Assign ready tasks to free slots; one AssignTasks commit per round (plus PreemptTasks)."""
        coord = self.coord
        policy = self.policy
        while True:
            due = coord.queue.next_due()
            # Backed-off tasks become ready at their not_before: wake for the earliest.
            with trio.move_on_after(max(0.0, due - time.time()) + 0.01 if due is not None else math.inf):
                await self._dispatch_wakeup.wait()
            self._dispatch_wakeup = trio.Event()
            await trio.sleep(DISPATCH_COALESCE_S)
            state, queue = coord.state, coord.queue
            idle, prefetch = self._free_slots()
            preempting = policy.preemption_threshold > 0
            canaries = self._plan_canaries()
            if not canaries and (not len(queue) or
                                 not (preempting or any(n > 0 for n in (*idle.values(), *prefetch.values())))):
                continue
            now = time.time()
            options = {"now": now, "policy": policy, "strategy": self.strategy,
                       "worker_cap": coord.settings.worker_cap, "history": self.history}
            usage = scheduler.Usage.of(state.tasks, state.workers)
            # Idle slots everywhere first; only then queue extra tasks on workers (prefetch), so a
            # free worker never waits while a busy one holds work in its queue.
            # A reconnecting worker's finished-but-unrecorded tasks wait for their results, not a re-run.
            reported = {task_id for conn in coord.conns.values() for task_id in conn.finished}
            plan = scheduler.plan_assignments(queue, state.tasks, state.workers, idle, skip=reported, usage=usage,
                                              **options) if idle else []
            plan += canaries
            placed = {task_id for task_id, _ in plan}
            preempt: list[dict[str, Any]] = []
            if preempting:
                self._preempting = {t: at for t, at in self._preempting.items() if now - at < PREEMPT_HOLD_S}
                preempt = scheduler.plan_preemptions(queue, state.tasks, state.workers, idle, now=now, policy=policy,
                                                     skip=placed | reported | set(self._preempting))
                for item in preempt:
                    # The freed slot is for the preempting task: queue nothing else behind it.
                    prefetch.pop(item["worker_id"], None)
                    self._preempting[item["by"]] = now
            if len(queue) > len(placed) and any(n > 0 for n in prefetch.values()):
                plan += scheduler.plan_assignments(queue, state.tasks, state.workers, prefetch,
                                                   skip=placed | reported, prefetch=True, usage=usage, **options)
            if not plan and not preempt:
                continue
            commands: list[dict[str, Any]] = []
            if plan:
                commands.append({"op": "AssignTasks", "assignments": [
                    {"task_id": t, "worker_id": w, "attempt": state.tasks[t]["attempts"] + 1} for t, w in plan]})
            if preempt:
                commands.append({"op": "PreemptTasks", "items": preempt})
            results = await coord.propose(commands)
            accepted = results[0] if plan else []
            if preempt:
                for item in results[-1] or []:
                    log.info("preempting task %s (attempt %d) on worker %s for task %s (priority %s)",
                             item["task_id"], item["attempt"], item["worker_id"], item["by"], item["by_priority"])
                    conn = coord.conns.get(item["worker_id"])
                    if conn is not None:
                        conn.push({"type": proto.CANCEL, "task_id": item["task_id"], "attempt": item["attempt"]})
            per_worker: dict[str, list[dict[str, Any]]] = {}
            mono = time.monotonic()
            for item in accepted:
                task = coord.state.tasks[item["task_id"]]
                frame = {
                    "task_id": task["task_id"], "attempt": item["attempt"], "type": task["type"],
                    "name": task.get("name"), "config": task["config"],
                    "timeout_seconds": task["timeout_seconds"], "priority": task["priority"],
                }
                # The devices apply chose (the same on every replica): the worker pins the task to them.
                frame.update(resmod.assignment_fields(task, item.get("reservation")))
                per_worker.setdefault(item["worker_id"], []).append(frame)
            for worker_id, items in per_worker.items():
                conn = coord.conns.get(worker_id)
                if conn is not None:
                    for item in items:
                        conn.assigned_at[item["task_id"]] = mono
                    conn.push({"type": proto.ASSIGN, "tasks": items})
            coord.stats["assigned"] += len(accepted)
            self._dispatch_wakeup.set()  # there may be more to place

    def _plan_canaries(self) -> list[tuple[str, str]]:
        """Pending canary tasks of connected quarantined workers, each to its own worker (one at a time)."""
        coord = self.coord
        state = coord.state
        plan: list[tuple[str, str]] = []
        for worker_id in sorted(state.canary_workers):
            conn = coord.conns.get(worker_id)
            worker = state.workers.get(worker_id)
            if conn is None or conn.closed or worker is None or worker.get("assigned"):
                continue
            record = worker.get("quarantine") or {}
            for task_id in record.get("canary_ids") or ():
                task = state.tasks.get(task_id)
                if task is not None and task["status"] == "pending" and quarantine.canary_for(task) == worker_id:
                    plan.append((task_id, worker_id))
                    break
        return plan

    async def results_loop(self) -> None:
        """Commit batches of started/finished reports, then ack each worker."""
        coord = self.coord
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
                self.note_run_time(item)
            failed = [{"task_id": item["task_id"], "attempt": item["attempt"], "worker_id": conn.worker_id,
                       "error": item.get("error") or "failed", "start_time": item.get("start_time"),
                       "end_time": item.get("end_time"), "retry": True, "error_class": item.get("error_class")}
                      for conn, item in results if item.get("outcome") != "completed"]
            # retry=True even for "cancelled": a task the user cancelled is already terminal (the report
            # is ignored), so a "cancelled" here means the worker was stopped mid-task: run it again. The
            # state machine refuses the retry itself when the error class is one no retry can fix.
            if completed:
                commands.append({"op": "CompleteTasks", "items": completed})
            if failed:
                commands.append({"op": "FailTasks", "items": failed, "backoff": self.backoff})
            if not commands:
                continue
            await coord.propose(commands)
            for conn, item in results:
                conn.reported.discard(item["task_id"])  # committed: the worker's assignment is settled
            coord.stats["recorded"] += len(completed)
            acks: dict[str, list[dict[str, Any]]] = {}
            by_id: dict[str, WorkerConn] = {}
            for conn, item in results:
                acks.setdefault(conn.worker_id, []).append({"task_id": item["task_id"], "attempt": item["attempt"]})
                by_id[conn.worker_id] = conn
            for worker_id, items in acks.items():
                conn = coord.conns.get(worker_id) or by_id[worker_id]
                conn.push({"type": proto.ACK, "items": items})

    async def liveness_loop(self) -> None:
        """Commit WorkersLost for silent workers; requeue tasks a connected worker no longer has."""
        coord = self.coord
        settings = coord.settings
        timeout = settings.worker_timeout
        grace = 2 * settings.heartbeat_interval + 5
        # Counted from this node's election: workers connected to the previous leader get one
        # worker_timeout to find this one.
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
                for conn in coord.conns.values():
                    conn.last_seen += stalled
                    for task_id in conn.assigned_at:
                        conn.assigned_at[task_id] += stalled
            lost = [wid for wid, conn in coord.conns.items() if now - conn.last_seen > timeout]
            # Workers known from before a restart get one worker_timeout to reconnect.
            if now - started > timeout:
                lost += [wid for wid, w in coord.state.workers.items()
                         if w.get("status") == "online" and wid not in coord.conns]
            if lost:
                for wid in lost:
                    conn = coord.conns.pop(wid, None)
                    if conn is not None:
                        conn.end()
                log.warning("workers lost (silent for more than %.1f s): %s", timeout, ", ".join(sorted(set(lost))))
                await coord.propose([{"op": "WorkersLost", "worker_ids": sorted(set(lost)),
                                      "reason": "worker lost (no heartbeat)", "backoff": self.backoff}])
            stale = []
            wall = time.time()
            for wid, conn in coord.conns.items():
                worker = coord.state.workers.get(wid)
                if worker is None or conn.closed:
                    continue
                for task_id, attempt in (worker.get("assigned") or {}).items():
                    task = coord.state.tasks[task_id]
                    since = conn.assigned_at.get(task_id, started)
                    accounted = task_id in conn.running or task_id in conn.finished or task_id in conn.reported
                    if not accounted and now - max(since, started) > grace:
                        stale.append({"task_id": task_id, "attempt": attempt, "worker_id": wid, "retry": True,
                                      "error": f"worker {wid} no longer runs it", "error_class": "worker_lost"})
                    elif task.get("start_time") and wall - task["start_time"] > task["timeout_seconds"] + grace + 30:
                        conn.push({"type": proto.CANCEL, "task_id": task_id, "attempt": attempt})
                        stale.append({"task_id": task_id, "attempt": attempt, "worker_id": wid, "retry": True,
                                      "error": f"timed out after {task['timeout_seconds']} s (coordinator)",
                                      "error_class": "timeout"})
            if stale:
                await coord.propose([{"op": "FailTasks", "items": stale, "backoff": self.backoff}])


def _write_secret(path: Path, secret: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = fsutil.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.replace(tmp, path)


async def ensure_bootstrap_key(coord: Coordinator) -> None:
    """First leader of a cluster with no keys: write an admin key to <data_dir>/admin.key and a worker key to
    <data_dir>/worker.key (both 0600), so the local path needs no setup while staying authenticated. The
    keys are replicated (hashed): one bootstrap admin key for the whole cluster, on the node that made it."""
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
