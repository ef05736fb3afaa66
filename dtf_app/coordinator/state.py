"""The coordinator's deterministic state machine.

Everything the coordinator knows that must survive a crash changes here and only here, by applying
commands read back from the durable log (today the local command log, later the Raft log): the same
commands in the same order give the same state on every node. ``apply`` is therefore pure with respect
to its input: no clock (the proposer stamps ``time`` into the command), no randomness, no I/O. It returns
the command's result for the proposer and a list of store events for the DuckDB writer.

Commands (``{"op": ..., "time": float, ...}``):

- ``SubmitTasks`` {tasks: [task docs with task_id, batch_id, seq]} -> pending / blocked / unschedulable
- ``AssignTasks`` {assignments: [{task_id, worker_id, attempt}]} -> assigned (attempts = attempt); a task
  with ``resources`` reserves them on the worker (resources.allocate: devices chosen here, identically on
  every replica; an assignment that no longer fits is refused); every end of the attempt releases them
- ``StartTasks`` {items: [{task_id, attempt, start_time}]} -> running
- ``CompleteTasks`` {items: [TaskOutcome with outcome "completed"]} -> completed (+ result)
- ``FailTasks`` {items: [{task_id, attempt, error, error_class?, retry: bool}], backoff?: [base, max]}
  -> pending again (with ``not_before`` = time + min(max, base * 2^(retries spent - 1)) when the attempt
  ran and a backoff is given) or failed; a non-retryable ``error_class`` (protocol.NON_RETRYABLE_ERRORS)
  fails the task at once with its reason
- ``PreemptTasks`` {items: [{task_id, attempt, worker_id, by, by_priority}]} -> pending again, without
  spending a retry (``preemptions`` + 1; retries spent = attempts - preemptions); the proposer then sends
  the worker a cancel frame
- ``CancelTask`` {task_id, reason} -> cancelled
- ``RegisterWorker`` {worker: {...}} ; ``WorkersLost`` {worker_ids: [...], reason, backoff?}
- ``CreateApiKey`` {name, role, key_hash} ; ``DeleteApiKey`` {name}
- ``EnrollWorker`` {worker_id, credential_hash, key_name} -> {"enrolled": bool}: binds a worker id to the
  hash of its per-worker credential, first come first served (the commit order decides a race)
- ``ForgetWorker`` {worker_id} -> {"forgotten": bool}: drops the enrolment (the id may enrol again) and
  takes back the worker's attempts as ``WorkersLost`` does
- ``LeaderElected`` {node_id, term, reason} (a new leader's first command: replicated leadership history)
- ``SetNodeEnabled`` {node_id, enabled} (an operator disables a coordinator: it hands over and stops campaigning)
- ``SetMembers`` {members: {node_id: url}}: the bootstrap membership (the static ``--peers`` list), proposed by
  the first leader while no membership is replicated yet; ignored once one is
- ``ChangeMembers`` {change: "add"|"remove", node_id, members: {node_id: url}}: not a normal log entry but
  the application half of a Raft config entry (``dtf cluster add|remove``), applied from it by the
  replicator, so the member URLs change atomically with the voters; ``members`` is the full map after the change
- ``SetWorkerDrain`` {worker_id, drained} (an operator drains or resumes a worker; resume also ends a quarantine)
- ``QuarantineWorker`` {worker_id, reason, max_attempts} -> drained and quarantined (quarantine.py);
  ``StartCanary`` {worker_id, tasks} -> the canary round's tasks submitted; the worker is let back in when
  they all succeed, or retired after ``max_attempts`` failed rounds
- ``StopWorker`` {worker_id, restart} -> no new tasks until the worker registers again (it finishes, exits)
- ``Orchestrate`` {orchestration: parent record, tasks: [subtask docs with parent_id]} -> the parent and its
  subtasks, atomically (orchestrator.py); ``CancelOrchestration`` {task_id, reason} -> the parent and every
  unfinished subtask cancelled. A parent's status and merged result follow its subtasks in every apply.

Outcomes are idempotent on (task_id, attempt): a late or duplicated report for an attempt that is no
longer current is ignored, which is what makes recording exactly-once while execution is at-least-once.
"""

from __future__ import annotations

import json
from typing import Any

from dtf_app import protocol
from dtf_app.coordinator import orchestrator, quarantine, scheduler
from dtf_app.coordinator import resources as resmod

# Keep what the state holds of a run's output bounded: the full document goes to DuckDB.
MAX_OUTPUT_CHARS = 4000
MAX_LEADERSHIP_HISTORY = 100

TaskDoc = dict[str, Any]
Events = list[dict[str, Any]]


class State:
    """Tasks, workers and API keys, changed only through :meth:`apply`."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskDoc] = {}
        self.workers: dict[str, dict[str, Any]] = {}
        self.api_keys: dict[str, dict[str, Any]] = {}
        # worker_id -> {credential_hash, enrolled, key_name}: who may act as that worker id.
        self.enrolments: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        # task_id -> ids of tasks waiting for it; derived, rebuilt on restore.
        self.dependents: dict[str, list[str]] = {}
        self.next_seq = 0
        self.applied_index = 0
        # The newest leader term seen in the log (fencing: see apply).
        self.term = 0
        # Leadership history (LeaderElected commands), newest last, bounded.
        self.leaders: list[dict[str, Any]] = []
        # Coordinator nodes disabled by an operator (they stop campaigning).
        self.disabled_nodes: list[str] = []
        # Orchestrated tasks (parent records; their subtasks are tasks with parent_id): orchestrator.py.
        self.orchestrations: dict[str, dict[str, Any]] = {}
        # The coordinator cluster's members (node id -> advertised URL), replicated; empty until the first
        # leader replicates the bootstrap list. ``members_index``: the log index of the last change.
        self.members: dict[str, str] = {}
        self.members_index = 0
        # Workers running a canary round (quarantine.py); derived, rebuilt on restore.
        self.canary_workers: set[str] = set()

    # ------------------------------------------------------------------ helpers
    def _set_status(self, task: TaskDoc, status: str) -> None:
        old = task["status"]
        if old == status:
            return
        self.counts[old] = self.counts.get(old, 0) - 1
        self.counts[status] = self.counts.get(status, 0) + 1
        task["status"] = status

    def _add_task(self, task: TaskDoc) -> None:
        self.tasks[task["task_id"]] = task
        self.counts[task["status"]] = self.counts.get(task["status"], 0) + 1

    @staticmethod
    def _task_event(task: TaskDoc) -> dict[str, Any]:
        # A copy: the writer thread serialises it later while the live task keeps changing.
        return {"kind": "task", "task": dict(task)}

    def task_counts(self) -> dict[str, int]:
        """Number of tasks per state (every state listed, zeros included) plus ``total``."""
        out = {state: max(0, self.counts.get(state, 0)) for state in scheduler.ALL_STATES}
        out["total"] = len(self.tasks)
        return out

    # ------------------------------------------------------------------ apply
    def note_term(self, term: int, index: int = 0) -> None:
        """A log entry of ``term`` was applied (a new leader's noop included)."""
        if term > self.term:
            self.term = term
        if index:
            self.applied_index = index

    def apply(self, command: dict[str, Any], index: int = 0, term: int = 0) -> tuple[Any, Events]:
        """Apply one committed command; returns (result for the proposer, store events).

        Fencing: a command stamped with a proposer's ``term`` older than the newest leader term already
        in the log comes from a deposed leader and is refused, so two leaders never act on one task.
        """
        op = command.get("op")
        handler = _HANDLERS.get(op)  # type: ignore[arg-type]
        stamped = command.get("term")
        if term:
            self.note_term(term)
        if isinstance(stamped, int) and not isinstance(stamped, bool) and stamped < self.term:
            if index:
                self.applied_index = index
            return {"error": f"{op} refused: proposed in term {stamped}, but term {self.term} has begun"}, []
        if handler is None:
            # An unknown op in the log means a newer version wrote it; skipping keeps replay alive.
            result: Any = {"error": f"unknown command {op!r}"}
            events: Events = []
        else:
            try:
                result, events = handler(self, command)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # A malformed command must not stop the log (replay would stop at it forever). The same
                # input fails the same way on every node, so skipping it keeps replicas identical.
                result, events = {"error": f"{op} rejected: {type(exc).__name__}: {exc}"}, []
        if self.orchestrations and events:
            self._refresh_orchestrations(events, command.get("time"))
        if op in ("SetMembers", "ChangeMembers") and isinstance(result, dict) and result.get("changed", True) \
                and "error" not in result:
            self.members_index = index
        if events and self.canary_workers:
            events.extend(self._refresh_canaries(events, command.get("time")))
        if index:
            self.applied_index = index
        return result, events

    def _submit_tasks(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        now = cmd["time"]
        events: Events = []
        created: list[TaskDoc] = []
        fresh: list[TaskDoc] = []
        for doc in cmd["tasks"]:
            if doc["task_id"] in self.tasks:
                # A retried proposal of the same batch: keep the first, answer with it.
                created.append(self.tasks[doc["task_id"]])
                continue
            task = dict(doc)
            task.setdefault("status", "pending")
            task.update(
                attempts=0, worker_id=None, create_time=now, start_time=None, end_time=None,
                error=task.get("error"), result=None, seq=self.next_seq,
            )
            self.next_seq += 1
            # Registered before any status is computed, so tasks of one batch may depend on each other
            # in any order.
            self.tasks[task["task_id"]] = task
            for dep in task.get("dependencies") or []:
                self.dependents.setdefault(dep, []).append(task["task_id"])
            fresh.append(task)
            created.append(task)
        for task in fresh:
            if task["status"] != "unschedulable":
                task["status"] = self._initial_status(task)
            if task["status"] == "pending":
                task["ready_since"] = now
            self.counts[task["status"]] = self.counts.get(task["status"], 0) + 1
        for task in fresh:
            events.append(self._task_event(task))
            if task["status"] == "failed":
                task["end_time"] = now
                events.extend(self._cascade_dependents(task, now))
        return created, events

    def _initial_status(self, task: TaskDoc) -> str:
        deps = task.get("dependencies") or []
        blocked = False
        for dep_id in deps:
            dep = self.tasks.get(dep_id)
            if dep is None:
                continue  # validated before proposing; a dependency in the same batch is fine
            if dep["status"] in ("failed", "cancelled"):
                task["error"] = f"dependency {dep_id} {dep['status']}"
                return "failed"
            if dep["status"] != "completed":
                blocked = True
        return "blocked" if blocked else "pending"

    def _assign_tasks(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        events: Events = []
        accepted: list[dict[str, Any]] = []
        for item in cmd["assignments"]:
            task = self.tasks.get(item["task_id"])
            worker = self.workers.get(item["worker_id"])
            if task is None or worker is None or task["status"] != "pending":
                continue
            if worker.get("quarantine") and quarantine.canary_for(task) != item["worker_id"]:
                continue  # quarantined since the plan was made: only its canaries go there
            reservation = None
            if task.get("resources"):
                reservation = resmod.allocate(worker, task["resources"], task.get("requirements"))
                if reservation is None:
                    continue  # a stale plan: the worker's resources are taken; the task stays pending
                worker.setdefault("reserved", {})[task["task_id"]] = reservation
                item = dict(item, reservation=reservation)
            task["reservation"] = reservation
            task["attempts"] = item["attempt"]
            task["worker_id"] = item["worker_id"]
            task["start_time"] = None
            task.pop("not_before", None)
            self._set_status(task, "assigned")
            worker.setdefault("assigned", {})[task["task_id"]] = item["attempt"]
            accepted.append(item)
            events.append(self._task_event(task))
        return accepted, events

    def _start_tasks(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        events: Events = []
        for item in cmd["items"]:
            task = self.tasks.get(item["task_id"])
            if task is None or task["attempts"] != item["attempt"] or task["status"] != "assigned":
                continue
            task["start_time"] = item.get("start_time") or cmd["time"]
            self._set_status(task, "running")
            events.append(self._task_event(task))
        return None, events

    @staticmethod
    def _is_current(task: TaskDoc | None, item: dict[str, Any], *, late_ok: bool = False) -> bool:
        """Is this report about the task's live attempt, from the worker that holds it?

        With ``late_ok``, also the attempt that was taken back (worker declared lost) while no new
        attempt has started: its worker did run it, so its result is recorded instead of re-running.
        """
        if task is None or task["attempts"] != item.get("attempt"):
            return False
        reporter = item.get("worker_id")
        if task["status"] in ("assigned", "running"):
            return not reporter or reporter == task.get("worker_id")
        return (late_ok and task["status"] == "pending" and bool(reporter)
                and reporter == task.get("last_worker_id"))

    def _release(self, task: TaskDoc) -> None:
        worker = self.workers.get(task.get("worker_id") or "")
        if worker is not None:
            worker.get("assigned", {}).pop(task["task_id"], None)
            reserved = worker.get("reserved")
            if reserved:
                reserved.pop(task["task_id"], None)

    def _complete_tasks(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        now = cmd["time"]
        events: Events = []
        recorded = 0
        for item in cmd["items"]:
            task = self.tasks.get(item["task_id"])
            if not self._is_current(task, item, late_ok=True):
                continue
            if task["status"] == "pending":
                task["worker_id"] = task.get("last_worker_id")
            worker = self.workers.get(task.get("worker_id") or "")
            if worker is not None and worker.get("infra_failures"):
                worker["infra_failures"] = 0  # "in a row": a task that ran resets the count
            result = dict(item.get("result") or {})
            task["start_time"] = task["start_time"] or item.get("start_time") or now
            task["end_time"] = item.get("end_time") or now
            self._release(task)
            self._set_status(task, "completed")
            events.append(self._history_event(task, "completed", None, item))
            events.append(self._result_event(task, result, item))
            output = result.get("output")
            if isinstance(output, str) and len(output) > MAX_OUTPUT_CHARS:
                result["output"] = output[-MAX_OUTPUT_CHARS:]
            # Per-test / per-benchmark rows live in DuckDB; the state keeps the summary.
            for bulky in ("tests", "benchmarks"):
                if isinstance(result.get(bulky), list):
                    result[f"{bulky}_count"] = len(result.pop(bulky))
            task["result"] = result
            events.append(self._task_event(task))
            events.extend(self._release_dependents(task, now))
            recorded += 1
        return recorded, events

    def _fail_tasks(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        now = cmd["time"]
        events: Events = []
        recorded = 0
        for item in cmd["items"]:
            task = self.tasks.get(item["task_id"])
            if not self._is_current(task, item):
                continue
            error_class = item.get("error_class")
            worker = self.workers.get(task.get("worker_id") or "")
            if worker is not None and protocol.is_infrastructure_error(error_class):
                # Counted here (the worker's own reports and the leader's checks of it), not in WorkersLost:
                # a machine that vanishes is offline, not a worker that breaks the tasks it runs.
                worker["infra_failures"] = int(worker.get("infra_failures") or 0) + 1
            retry = bool(item.get("retry", True)) and protocol.is_retryable(error_class)
            events.extend(self._fail_attempt(task, item.get("error") or "failed", now, item, retry=retry,
                                             backoff=cmd.get("backoff"), error_class=error_class))
            recorded += 1
        return recorded, events

    def _fail_attempt(self, task: TaskDoc, error: str, now: float, item: dict[str, Any] | None,
                      *, retry: bool, backoff: Any = None, error_class: str | None = None) -> Events:
        # An attempt that never started (assigned, perhaps queued on the worker, when the worker or the
        # coordinator went away) was no execution: it neither counts against max_retries nor appears in
        # the execution history.
        never_started = task["status"] == "assigned" and retry
        events: Events = [] if never_started else [self._history_event(task, "failed", error, item or {})]
        self._release(task)
        task["error"] = error
        task["error_class"] = error_class if isinstance(error_class, str) else None
        if never_started:
            task["attempts"] -= 1
        # Preempted runs were given back, not failed: they spend no retry.
        spent = task["attempts"] - int(task.get("preemptions") or 0)
        if retry and spent <= task.get("max_retries", 3):
            task["last_worker_id"] = task["worker_id"]
            task["worker_id"] = None
            task["start_time"] = None
            if not never_started and isinstance(backoff, list | tuple) and len(backoff) == 2 and backoff[0] > 0:
                task["not_before"] = now + min(float(backoff[1]), float(backoff[0]) * 2 ** max(0, spent - 1))
            self._set_status(task, "pending")
            events.append(self._task_event(task))
            return events
        task["end_time"] = now
        if not retry and not protocol.is_retryable(error_class):
            task["error"] = f"{error} (not retried: {error_class} errors cannot succeed by running again)"
        elif retry:
            task["error"] = f"{error} (gave up after {spent} attempts)"
        self._set_status(task, "failed")
        events.append(self._task_event(task))
        events.extend(self._cascade_dependents(task, now))
        return events

    def _preempt_tasks(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        """Give running attempts back for higher-priority tasks: pending again, no retry spent."""
        events: Events = []
        accepted: list[dict[str, Any]] = []
        for item in cmd["items"]:
            task = self.tasks.get(item["task_id"])
            if not item.get("worker_id") or not self._is_current(task, item):
                continue
            reason = (f"preempted by task {item.get('by')} (priority {item.get('by_priority')}); "
                      "requeued without spending a retry")
            events.append(self._history_event(task, "preempted", reason, {**item, "end_time": cmd["time"]}))
            self._release(task)
            task["preemptions"] = int(task.get("preemptions") or 0) + 1
            # A completion that raced the cancel is still recorded (late_ok: the attempt did run).
            task["last_worker_id"] = task["worker_id"]
            task["worker_id"] = None
            task["start_time"] = None
            task["error"] = reason
            self._set_status(task, "pending")
            events.append(self._task_event(task))
            accepted.append(item)
        return accepted, events

    def _release_dependents(self, task: TaskDoc, now: float) -> Events:
        events: Events = []
        for dep_id in self.dependents.get(task["task_id"], ()):
            waiting = self.tasks.get(dep_id)
            if waiting is None or waiting["status"] != "blocked":
                continue
            status = self._initial_status(waiting)
            if status != "blocked":
                self._set_status(waiting, status)
                if status == "failed":
                    waiting["end_time"] = now
                else:
                    waiting["ready_since"] = now
                events.append(self._task_event(waiting))
        return events

    def _cascade_dependents(self, task: TaskDoc, now: float) -> Events:
        """A failed or cancelled task fails everything that waits for it (transitively)."""
        events: Events = []
        stack = [task["task_id"]]
        while stack:
            parent_id = stack.pop()
            parent = self.tasks[parent_id]
            for dep_id in self.dependents.get(parent_id, ()):
                waiting = self.tasks.get(dep_id)
                if waiting is None or waiting["status"] not in ("blocked", "pending", "unschedulable"):
                    continue
                waiting["error"] = f"dependency {parent_id} {parent['status']}"
                waiting["end_time"] = now
                self._set_status(waiting, "failed")
                events.append(self._task_event(waiting))
                stack.append(dep_id)
        return events

    def _cancel_task(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        task = self.tasks.get(cmd["task_id"])
        if task is None or task["status"] in scheduler.TERMINAL_STATES:
            return task, []
        was = task["status"]
        self._release(task)
        task["end_time"] = cmd["time"]
        task["error"] = cmd.get("reason") or "cancelled"
        self._set_status(task, "cancelled")
        events: Events = [self._task_event(task)]
        if was in ("assigned", "running"):
            events.insert(0, self._history_event(task, "cancelled", task["error"], {}))
        events.extend(self._cascade_dependents(task, cmd["time"]))
        return task, events

    def _register_worker(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        info = dict(cmd["worker"])
        now = cmd["time"]
        existing = self.workers.get(info["worker_id"])
        worker = existing if existing is not None else {"registration_time": now, "assigned": {}}
        worker.update(info)
        worker.pop("stopping", None)  # a worker told to stop or restart is back: it takes work again
        worker["status"] = "online"
        worker["last_heartbeat"] = now
        self.workers[info["worker_id"]] = worker
        events: Events = [_worker_event(worker)]
        # A worker that can run tasks parked as unschedulable makes them schedulable again.
        for task in self.tasks.values():
            if task["status"] == "unschedulable" and scheduler.worker_satisfies(
                    worker, task["requirements"], task.get("resources")):
                task["error"] = None
                self._set_status(task, self._initial_status(task))
                if task["status"] == "pending":
                    task["ready_since"] = now
                events.append(self._task_event(task))
        return worker, events

    def _workers_lost(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        events: Events = []
        for worker_id in cmd["worker_ids"]:
            events.extend(self._take_back(worker_id, cmd.get("reason") or f"worker {worker_id} lost", cmd["time"],
                                          backoff=cmd.get("backoff")))
        return None, events

    def _take_back(self, worker_id: str, reason: str, now: float, *, backoff: Any = None) -> Events:
        """Mark a worker offline and put its live attempts back (pending again, or failed)."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return []
        worker["status"] = "offline"
        events: Events = [_worker_event(worker)]
        for task_id, attempt in list(worker.get("assigned", {}).items()):
            task = self.tasks.get(task_id)
            if task is None or task["attempts"] != attempt or task["status"] not in ("assigned", "running"):
                continue
            events.extend(self._fail_attempt(task, reason, now, {"worker_id": worker_id}, retry=True,
                                             backoff=backoff, error_class="worker_lost"))
        worker["assigned"] = {}
        worker["reserved"] = {}
        return events

    def _enroll_worker(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        worker_id, digest = cmd["worker_id"], cmd["credential_hash"]
        if not isinstance(worker_id, str) or not isinstance(digest, str) or not worker_id or not digest:
            raise ValueError("worker_id and credential_hash must be non-empty strings")
        existing = self.enrolments.get(worker_id)
        if existing is not None:
            # Taken: only the same credential (a retried proposal of the same enrolment) is accepted.
            return {"enrolled": existing["credential_hash"] == digest}, []
        self.enrolments[worker_id] = {"credential_hash": digest, "enrolled": cmd["time"],
                                      "key_name": cmd.get("key_name")}
        return {"enrolled": True}, []

    def _forget_worker(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        worker_id = cmd["worker_id"]
        if self.enrolments.pop(worker_id, None) is None:
            return {"forgotten": False}, []
        # Whoever held the id can no longer report: its attempts run again elsewhere.
        return {"forgotten": True}, self._take_back(worker_id, f"enrolment of worker {worker_id} revoked",
                                                    cmd["time"])

    def _set_worker_drain(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        """Drain (no new tasks; running ones finish) or enable a worker. Survives its reconnects."""
        worker = self.workers.get(cmd.get("worker_id"))  # type: ignore[arg-type]
        if worker is None:
            return None, []
        worker["drained"] = bool(cmd.get("drained"))
        if not worker["drained"] and worker.get("quarantine"):
            # An operator's resume overrides the health monitor (its canary tasks, if any, still run).
            worker["quarantine"] = None
            worker["infra_failures"] = 0
            self.canary_workers.discard(worker["worker_id"])
        return worker, [_worker_event(worker)]

    def _stop_worker(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        """The worker was told to stop (or restart): nothing new goes to it until it registers again."""
        worker = self.workers.get(cmd.get("worker_id"))  # type: ignore[arg-type]
        if worker is None:
            return None, []
        worker["stopping"] = "restart" if cmd.get("restart") else "stop"
        return worker, [_worker_event(worker)]

    # ------------------------------------------------------------------ quarantine (quarantine.py)
    def _quarantine_worker(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        worker = self.workers.get(cmd.get("worker_id"))  # type: ignore[arg-type]
        if worker is None:
            return None, []
        if worker.get("quarantine"):
            return worker, []  # already out: one record per episode
        worker["quarantine"] = {"state": quarantine.QUARANTINED, "reason": str(cmd.get("reason") or "unhealthy"),
                                "since": cmd["time"], "attempts": 0, "max_attempts": int(cmd.get("max_attempts", 2)),
                                "canary_ids": [], "last_error": None}
        worker["drained"] = True
        return worker, [_worker_event(worker)]

    def _start_canary(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        worker_id = cmd["worker_id"]
        worker = self.workers.get(worker_id)
        if worker is None or not quarantine.needs_canary(worker):
            return None, []
        docs = cmd["tasks"]
        for doc in docs:
            if quarantine.canary_for(doc) != worker_id or doc["task_id"] in self.tasks:
                raise ValueError(f"canary task {doc.get('task_id')!r} is not a fresh canary of {worker_id!r}")
        record = worker["quarantine"]
        record.update(state=quarantine.CANARY, attempts=int(record["attempts"]) + 1,
                      canary_ids=[doc["task_id"] for doc in docs])
        self.canary_workers.add(worker_id)
        created, events = self._submit_tasks({"time": cmd["time"], "tasks": docs})
        events.append(_worker_event(worker))
        return {"worker": worker, "tasks": created}, events

    def _refresh_canaries(self, events: Events, now: Any) -> Events:
        """A canary task changed: let its worker back in, or count the failed round."""
        out: Events = []
        for event in list(events):
            owner = quarantine.canary_for(event["task"]) if event.get("kind") == "task" else None
            worker = self.workers.get(owner or "")
            record = worker.get("quarantine") if worker is not None else None
            if not record or record.get("state") != quarantine.CANARY or \
                    event["task"]["task_id"] not in record.get("canary_ids", ()):
                continue
            verdict = quarantine.round_outcome(record, self.tasks)
            if verdict is None:
                continue
            self.canary_workers.discard(owner)  # type: ignore[arg-type]
            if verdict == "passed":
                worker["quarantine"] = None
                worker["drained"] = False
                worker["infra_failures"] = 0
                worker["recovered"] = {"time": now, "attempts": record["attempts"], "reason": record["reason"]}
            else:
                failed = [self.tasks[i] for i in record["canary_ids"] if i in self.tasks]
                record["last_error"] = next((t.get("error") or (t.get("result") or {}).get("status")
                                             for t in failed if t["status"] != "completed"
                                             or (t.get("result") or {}).get("status") != "success"), "failed")
                record["state"] = (quarantine.RETIRED if record["attempts"] >= record["max_attempts"]
                                   else quarantine.QUARANTINED)
            out.append(_worker_event(worker))
        return out

    def _create_api_key(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        record = {"name": cmd["name"], "role": cmd["role"], "key_hash": cmd["key_hash"], "created": cmd["time"]}
        self.api_keys[cmd["name"]] = record
        return record, []

    def _delete_api_key(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        return self.api_keys.pop(cmd["name"], None), []

    # ------------------------------------------------------------------ orchestration
    def _orchestrate(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        record = dict(cmd["orchestration"])
        parent_id = record["task_id"]
        existing = self.orchestrations.get(parent_id)
        if existing is not None:
            # A retried proposal: answer with what the first one created.
            return {"orchestration": existing, "tasks": [self.tasks[i] for i in existing["subtask_ids"]
                                                         if i in self.tasks]}, []
        if not isinstance(record.get("subtask_ids"), list) or not record["subtask_ids"]:
            raise ValueError("an orchestration needs at least one subtask")
        for doc in cmd["tasks"]:
            if doc.get("parent_id") != parent_id:
                raise ValueError(f"subtask {doc.get('task_id')!r} does not name parent {parent_id!r}")
            if doc["task_id"] in self.tasks:
                raise ValueError(f"subtask id {doc['task_id']!r} is taken")
        record.update(status="in_progress", create_time=cmd["time"], end_time=None, completion_percentage=0,
                      error=None, result=None)
        self.orchestrations[parent_id] = record
        created, events = self._submit_tasks({"time": cmd["time"], "tasks": cmd["tasks"]})
        return {"orchestration": record, "tasks": created}, events

    def _cancel_orchestration(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        parent = self.orchestrations.get(cmd["task_id"])
        if parent is None or parent["status"] != "in_progress":
            return {"orchestration": parent, "stopped": []}, []
        reason = cmd.get("reason") or "orchestrated task cancelled"
        parent["status"], parent["error"] = "cancelled", reason
        events: Events = []
        stopped: list[dict[str, Any]] = []
        for task_id in parent["subtask_ids"]:
            task = self.tasks.get(task_id)
            if task is None or task["status"] in scheduler.TERMINAL_STATES:
                continue
            if task["status"] in ("assigned", "running") and task.get("worker_id"):
                stopped.append({"task_id": task_id, "worker_id": task["worker_id"], "attempts": task["attempts"]})
            events.extend(self._cancel_task({"task_id": task_id, "reason": reason, "time": cmd["time"]})[1])
        if not events:  # nothing left to cancel: the parent's end still has to be recorded
            orchestrator.refresh(parent, self.tasks, cmd["time"])
        return {"orchestration": parent, "stopped": stopped}, events

    def _refresh_orchestrations(self, events: Events, now: Any) -> None:
        """Parents follow their subtasks: status, completion_percentage and, once all ended, the merged result."""
        seen: set[str] = set()
        for event in events:
            parent_id = event["task"].get("parent_id") if event.get("kind") == "task" else None
            if parent_id and parent_id not in seen and parent_id in self.orchestrations:
                seen.add(parent_id)
                orchestrator.refresh(self.orchestrations[parent_id], self.tasks, now or 0.0)

    # ------------------------------------------------------------------ events
    def _leader_elected(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        previous = self.leaders[-1]["leader_id"] if self.leaders else None
        row = {"term": int(cmd["term"]), "leader_id": str(cmd["node_id"]), "previous_leader_id": previous,
               "reason": str(cmd.get("reason") or "election"), "timestamp": cmd.get("time"),
               "log_index": self.applied_index}
        self.leaders.append(row)
        del self.leaders[:-MAX_LEADERSHIP_HISTORY]
        return row, [{"kind": "leadership", "row": dict(row)}]

    def _set_node_enabled(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        node_id = str(cmd["node_id"])
        disabled = set(self.disabled_nodes)
        if cmd.get("enabled"):
            disabled.discard(node_id)
        else:
            disabled.add(node_id)
        self.disabled_nodes = sorted(disabled)
        return {"node_id": node_id, "enabled": node_id not in disabled}, []

    def _set_members(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        if self.members:
            return {"members": dict(self.members), "changed": False}, []
        self.members = _members_map(cmd["members"])
        return {"members": dict(self.members), "changed": True}, []

    def _change_members(self, cmd: dict[str, Any]) -> tuple[Any, Events]:
        change, node_id = cmd["change"], str(cmd["node_id"])
        if change not in ("add", "remove"):
            raise ValueError(f"change must be 'add' or 'remove', not {change!r}")
        self.members = _members_map(cmd["members"])
        if change == "remove" and node_id in self.disabled_nodes:
            self.disabled_nodes = [n for n in self.disabled_nodes if n != node_id]
        return {"change": change, "node_id": node_id, "members": dict(self.members)}, []

    @staticmethod
    def _history_event(task: TaskDoc, status: str, error: str | None, item: dict[str, Any]) -> dict[str, Any]:
        start = item.get("start_time") or task.get("start_time")
        end = item.get("end_time") or task.get("end_time")
        return {"kind": "history", "row": {
            "task_id": task["task_id"], "worker_id": item.get("worker_id") or task.get("worker_id"),
            "attempt": task["attempts"], "status": status, "start_time": start, "end_time": end,
            "execution_time_seconds": (end - start) if start and end else None,
            "error_message": error, "hardware_metrics": item.get("hardware_metrics"),
        }}

    @staticmethod
    def _result_event(task: TaskDoc, result: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "result", "result": {
            "result_id": f"{task['task_id']}-{task['attempts']}",
            "task_id": task["task_id"], "worker_id": task.get("worker_id"), "test_id": task.get("name"),
            "task_type": task["type"], "timestamp": task["end_time"],
            "metrics": result.get("metrics") or {}, "status": result.get("status") or "success",
            "execution_time": result.get("execution_time"),
            "hardware_metrics": item.get("hardware_metrics"), "environment": result.get("environment") or {},
            "raw_data": dict(result.get("raw_data") or {}, output=result.get("output")),
            "metadata": {"attempt": task["attempts"], "batch_id": task.get("batch_id"), "name": task.get("name")},
            "tests": result.get("tests") or [], "benchmarks": result.get("benchmarks") or [],
        }}

    # ------------------------------------------------------------------ snapshot
    def snapshot(self) -> bytes:
        """Serialise the whole state (the log can then be compacted up to ``applied_index``)."""
        return json.dumps({"tasks": self.tasks, **self.snapshot_rest()}, separators=(",", ":")).encode()

    def snapshot_rest(self) -> dict[str, Any]:
        """Everything a snapshot holds besides the tasks (the one list of fields; bulk.encode_snapshot
        writes the tasks in slices and then these)."""
        return {"workers": self.workers, "api_keys": self.api_keys, "enrolments": self.enrolments,
                "next_seq": self.next_seq, "applied_index": self.applied_index, "term": self.term,
                "leaders": self.leaders, "disabled_nodes": self.disabled_nodes,
                "orchestrations": self.orchestrations, "members": self.members,
                "members_index": self.members_index}

    @classmethod
    def restore(cls, data: bytes) -> State:
        """Rebuild a state from :meth:`snapshot` bytes, derived indexes included."""
        raw = json.loads(data)
        state = cls()
        state.workers = raw["workers"]
        state.api_keys = raw["api_keys"]
        state.enrolments = raw.get("enrolments", {})  # absent in snapshots of older versions
        state.next_seq = raw["next_seq"]
        state.applied_index = raw["applied_index"]
        state.term = raw.get("term", 0)
        state.leaders = raw.get("leaders", [])
        state.disabled_nodes = raw.get("disabled_nodes", [])
        state.orchestrations = raw.get("orchestrations", {})
        state.members = raw.get("members", {})
        state.members_index = raw.get("members_index", 0)
        state.canary_workers = {wid for wid, w in state.workers.items()
                                if (w.get("quarantine") or {}).get("state") == quarantine.CANARY}
        for task in raw["tasks"].values():
            state._add_task(task)
            for dep in task.get("dependencies") or []:
                state.dependents.setdefault(dep, []).append(task["task_id"])
        return state


def _members_map(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                       for k, v in raw.items()):
        raise ValueError("members must be a non-empty map of node id to URL")
    return dict(sorted(raw.items()))


def _worker_event(worker: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "worker", "worker": {k: v for k, v in worker.items() if k not in ("assigned", "reserved")}}


_HANDLERS = {
    "SubmitTasks": State._submit_tasks,
    "AssignTasks": State._assign_tasks,
    "StartTasks": State._start_tasks,
    "CompleteTasks": State._complete_tasks,
    "FailTasks": State._fail_tasks,
    "PreemptTasks": State._preempt_tasks,
    "CancelTask": State._cancel_task,
    "RegisterWorker": State._register_worker,
    "WorkersLost": State._workers_lost,
    "SetWorkerDrain": State._set_worker_drain,
    "StopWorker": State._stop_worker,
    "QuarantineWorker": State._quarantine_worker,
    "StartCanary": State._start_canary,
    "CreateApiKey": State._create_api_key,
    "DeleteApiKey": State._delete_api_key,
    "EnrollWorker": State._enroll_worker,
    "ForgetWorker": State._forget_worker,
    "LeaderElected": State._leader_elected,
    "SetNodeEnabled": State._set_node_enabled,
    "SetMembers": State._set_members,
    "ChangeMembers": State._change_members,
    "Orchestrate": State._orchestrate,
    "CancelOrchestration": State._cancel_orchestration,
}
