"""The coordinator: one node's world around the replicated state machine.

:class:`Coordinator` owns the Raft replicator (``replicator.py``; a single node is a one-member cluster),
the DuckDB store, the ready queue, worker connections and subscribers, and reacts to two things the
replicator tells it: a committed entry was applied (:meth:`Coordinator._on_applied`: store rows, queue,
pushes, effects on connected workers) and leadership changed (:meth:`Coordinator._on_leadership`: the
leader duties start or stop, workers and subscribers are sent to the new leader). Every state change goes
through :meth:`Coordinator.propose`. The pieces around it, each one obvious place:

- ``views.py``: task, worker and status documents; ``pubsub.py``: subscribers and channels;
- ``intake.py``: what workers send, cleaned; ``leader.py``: dispatch, results and liveness loops;
- ``server.py``: the bootstrap (listen, recover, serve); ``api.py`` / ``ws.py``: the routes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import trio

from dtf_app import cluster as cluster_rule
from dtf_app import fsutil
from dtf_app import protocol as proto
from dtf_app.config import Settings
from dtf_app.coordinator import bulk, pubsub, readiness, scheduler, snapshot_rows, tasklogs, tls, views
from dtf_app.coordinator.intake import WorkerConn, WorkerIntake
from dtf_app.coordinator.leader import LeaderDuties
from dtf_app.coordinator.replicator import Replicator
from dtf_app.coordinator.state import State
from dtf_app.raft.types import NotLeader, ProposalDropped

log = logging.getLogger("dtf.coordinator")

# How long an added member may take to catch up before `dtf cluster add` answers without waiting more.
CATCH_UP_WAIT_S = 30.0
PROBE_TIMEOUT_S = 3.0
# How long a membership change waits for the previous one (or a new leader's first entry) to commit.
CHANGE_SLOT_WAIT_S = 10.0


class MembershipRefused(Exception):
    """A membership change that cannot be made now; ``status`` and ``code`` for the API's answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

SUBSCRIBER_BUFFER = 10_000  # the default of Settings.subscriber_buffer


class Coordinator:
    """The coordinator's in-process world: state, log, store, connections, loops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.cluster = cluster_rule.from_settings(settings)
        self.node_id = self.cluster.self_id
        self.store: Any = None
        heartbeat = max(1, int(settings.heartbeat_ms))
        self.replicator = Replicator(
            self.data_dir / "raft", State(), self._on_applied, node_id=self.node_id,
            peers=dict(self.cluster.members),
            secret=cluster_rule.peer_secret(settings) if not self.cluster.is_single else None,
            snapshot_every=max(1, int(settings.snapshot_every)), tick_seconds=heartbeat / 1000,
            election_ticks=max(2, int(settings.election_timeout_ms) // heartbeat),
            keep_entries=max(0, int(settings.snapshot_keep)),
            ssl_context=tls.peer_context(settings, self.cluster.members, self.node_id))
        self.replicator.on_restored = self._on_restored
        # A snapshot that covers entries the store never saw rebuilds their rows (snapshot_rows.py).
        self.replicator.on_snapshot_installed = lambda state, index: snapshot_rows.reconcile(self.store, state, index)
        self.replicator.on_leadership = self._on_leadership
        self.replicator.on_members = self._on_members
        # What the settings said (the bootstrap membership); self.cluster follows the replicated one.
        self.static_cluster = self.cluster
        self._membership_lock = trio.Lock()
        self.queue = scheduler.ReadyQueue()
        self.conns: dict[str, WorkerConn] = {}
        self.hub = pubsub.Hub()
        self.task_logs = tasklogs.TaskLogs()
        self.intake = WorkerIntake(self)
        self.duties = LeaderDuties(self)
        self.started_at = time.time()
        self.url = ""
        self._replaying = True
        self._submit_lock = trio.Lock()
        self._last_store_index = 0
        self.leader_since: float | None = None
        self.leadership_log: deque[dict[str, Any]] = deque(maxlen=100)
        from dtf_app.coordinator.cluster import ClusterMonitor

        self.monitor = ClusterMonitor(self)
        from dtf_app.coordinator.health_monitor import HealthMonitor
        from dtf_app.coordinator.scaling import ScalingAdvisor

        self.health_monitor = HealthMonitor(self)
        self.scaling = ScalingAdvisor(self)
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
        from dtf_app.coordinator.legacy_log import import_into_raft

        import_into_raft(self.data_dir, self.node_id, is_single=self.cluster.is_single)
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
        self._set_can_campaign()
        self.duties.wake()

    def _set_can_campaign(self) -> None:
        """One rule for whether this node may start elections: a member no operator disabled."""
        driver = self.replicator.driver
        if driver is not None:
            driver.node.can_campaign = (self.node_id not in self.state.disabled_nodes
                                        and not self.replicator.removed)

    # ------------------------------------------------------------------ membership
    def _on_members(self, members: dict[str, str]) -> None:
        """The replicated membership changed (or this node learnt it was removed): views follow it.

        A member this node's own ``--peers`` names keeps that URL (the replicator dials it there too):
        it is how this node's network reaches it, so it is also the ``leader_url`` this node hands out."""
        static = {k: v for k, v in self.replicator.peers.items() if v and k != self.node_id}
        merged = {k: static.get(k, v) for k, v in members.items()}
        self.cluster = cluster_rule.ClusterSpec(self.node_id, dict(sorted(merged.items())))
        # Removed, or added back (which is how a removed node campaigns again): the rule decides.
        self._set_can_campaign()

    async def bootstrap_members(self) -> None:
        """A leader of a cluster whose membership is not yet replicated replicates the static list (every
        node then follows the replicated membership: a change in progress is no misconfiguration)."""
        if self.replicator.transport is None or self.state.members:
            return
        voters = self.replicator.voters
        members = {m: u for m, u in self.replicator.members().items() if m in voters}
        if set(members) != set(voters):
            log.error("cannot replicate the membership: no URL known for %s",
                      ", ".join(sorted(set(voters) - set(members))))
            return
        members[self.node_id] = self.url or members[self.node_id]
        await self.propose([{"op": "SetMembers", "members": members}])

    async def add_member(self, node_id: str, url: str) -> dict[str, Any]:
        """Add one coordinator (leader only): it must answer at ``url`` as ``node_id`` first; it joins as
        a voter (the Raft core has no learners), then this waits (bounded) for it to catch up."""
        rep = self.replicator
        await self._await_change_slot()
        members = rep.members()
        if node_id in rep.voters or node_id in members:
            raise MembershipRefused(409, "already_member", f"{node_id} is already a member of the cluster (at "
                                    f"{members.get(node_id, 'an unknown URL')}); remove it first to change its URL")
        clash = next((m for m, u in members.items() if u == url), None)
        if clash is not None:
            raise MembershipRefused(409, "url_taken", f"{url} is the URL of member {clash}")
        async with self._membership_lock:
            await self._probe_new_member(node_id, url)
            log.warning("adding coordinator %s at %s to the cluster (%s)", node_id, url, ", ".join(sorted(members)))
            try:
                await rep.change_members("add", node_id, url)
            except ProposalDropped as exc:
                raise self._busy_or(exc) from None
            commit = rep.commit_index
            caught_up = await self._wait_caught_up(node_id, commit)
        return {**self._membership_doc(), "node_id": node_id, "url": url, "change": "add", "caught_up": caught_up}

    async def remove_member(self, node_id: str) -> dict[str, Any]:
        """Remove one coordinator (leader only). Removing the leader itself hands leadership over first:
        NotLeader then sends the caller to the new leader, which makes the change."""
        rep = self.replicator
        await self._await_change_slot()
        if node_id not in rep.voters and node_id not in rep.members():
            raise MembershipRefused(404, "not_found", f"no coordinator {node_id!r}; members: "
                                    f"{', '.join(sorted(rep.voters))}")
        if len(rep.voters) == 1:
            raise MembershipRefused(409, "last_member", "cannot remove the last member of the cluster")
        async with self._membership_lock:
            if node_id == self.node_id:
                await self._hand_over_for_removal()
            log.warning("removing coordinator %s from the cluster", node_id)
            try:
                await rep.change_members("remove", node_id)
            except ProposalDropped as exc:
                raise self._busy_or(exc) from None
        return {**self._membership_doc(), "node_id": node_id, "change": "remove"}

    def _membership_doc(self) -> dict[str, Any]:
        rep = self.replicator
        return {"members": [{"node_id": m, "url": u} for m, u in sorted(rep.members().items())],
                "voters": sorted(rep.voters), "quorum_size": len(rep.voters) // 2 + 1,
                "members_index": self.state.members_index}

    async def _await_change_slot(self) -> None:
        """Refuse what can never work at once; wait (bounded) for a change that is only committing.

        A leader counts the tail of its log as a pending configuration until its first entry of the term
        commits (the Raft rule that keeps two changes from overlapping), so right after an election -- a
        removed leader's hand-over included -- a change would be refused for a few heartbeats. Waiting
        for that slot makes back-to-back `dtf cluster add` / `remove` work; a change that stays pending
        (no quorum for it) is still refused with 409 after CHANGE_SLOT_WAIT_S."""
        rep = self.replicator
        if rep.transport is None:
            raise MembershipRefused(409, "single_node", "this coordinator is a one-member cluster (started without "
                                    "peers), which has no peer transport and cannot grow at run time; start a "
                                    "cluster of several coordinators (--peers, DTF_CLUSTER_SECRET) to change it later")
        with trio.move_on_after(CHANGE_SLOT_WAIT_S):
            while rep.is_leader and (self._membership_lock.locked() or rep.change_pending):
                await trio.sleep(0.05)
        if not rep.is_leader:
            raise NotLeader(rep.leader_id)
        if self._membership_lock.locked() or rep.change_pending:
            raise MembershipRefused(409, "change_in_progress", "a membership change is in progress: the cluster "
                                    "changes one node at a time; retry once it is done (dtf cluster nodes)")

    def _busy_or(self, exc: ProposalDropped) -> Exception:
        if "pending" in str(exc):
            return MembershipRefused(409, "change_in_progress", f"{exc}: retry once it is done")
        return exc

    async def _probe_new_member(self, node_id: str, url: str) -> None:
        """The new node must answer at its URL, as that node id, before it counts for the quorum."""
        import httpx

        try:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
                response = await client.get(url + "/status")
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MembershipRefused(409, "node_unreachable", f"{node_id} does not answer at {url} ({type(exc).__name__}"
                                    f"): start it first (dtf cluster add prints how), then add it") from None
        seen = data.get("node_id") if isinstance(data, dict) else None
        if seen != node_id:
            raise MembershipRefused(409, "node_id_mismatch", f"the coordinator at {url} is {seen!r}, not {node_id!r}: "
                                    "start it with --node-id " + node_id)

    async def _wait_caught_up(self, node_id: str, index: int) -> bool:
        """Until the new member's log holds ``index`` (bounded: it may still be starting)."""
        driver = self.replicator.driver
        with trio.move_on_after(CATCH_UP_WAIT_S):
            while driver is not None and self.is_leader:
                progress = driver.node.progress(node_id)
                if progress is not None and progress.match >= index:
                    return True
                await trio.sleep(0.1)
        return False

    async def _hand_over_for_removal(self) -> None:
        """This leader is being removed: transfer leadership to the most caught-up other member first."""
        driver = self.replicator.driver
        best = self._best_successor()
        if driver is None or best is None:
            raise MembershipRefused(409, "no_successor", "no other enabled member can take over leadership")
        log.warning("removing this leader: handing leadership to %s first", best)
        driver.transfer_leadership(best)
        with trio.move_on_after(max(5.0, 3 * driver.tick_seconds * driver.node.config.election_ticks)):
            while self.is_leader:
                await trio.sleep(0.05)
        if self.is_leader:
            raise ProposalDropped(f"leadership transfer to {best} did not complete; retry the removal")
        raise NotLeader(self.leader_id)


    # ------------------------------------------------------------------ leadership
    def _on_leadership(self, change: Any) -> None:
        """Called by the Raft driver when this node's role or known leader changes."""
        entry = {"time": time.time(), "role": change.role, "leader_id": change.leader_id, "term": change.term,
                 "previous_leader_id": change.previous_leader_id}
        self.leadership_log.append(entry)
        if self.hub:
            # Before a stepping-down leader closes its subscribers: they learn why they are sent away.
            self.hub.publish("leadership_updates", {
                "type": "leadership_update", "previous_leader_id": change.previous_leader_id,
                "new_leader_id": change.leader_id, "term": change.term,
                "reason": "election" if change.leader_id else "leader lost",
                "timestamp": views.iso(entry["time"])}, entry)
        if change.role == "leader":
            log.warning("became leader of term %d", change.term)
            self.leader_since = time.time()
            self.duties.elected()
        else:
            if change.previous_role == "leader":
                log.warning("stepped down in term %d (leader now: %s)", change.term, change.leader_id or "unknown")
            elif change.leader_id:
                log.info("following leader %s (term %d)", change.leader_id, change.term)
            self.leader_since = None
            self._step_down()

    def _step_down(self) -> None:
        """No longer the leader: stop the leader loops and send workers and subscribers to the leader."""
        self.duties.stop()
        notice = {"type": proto.ERROR, "code": "not_leader", "message": "this coordinator is no longer the leader",
                  "leader_id": self.leader_id, "leader_url": self.leader_url}
        for conn in list(self.conns.values()):
            conn.push(notice)
            conn.end()
        self.conns.clear()
        self.hub.close_all({k: v for k, v in notice.items() if k != "type"})

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
                if self.hub:
                    self.hub.publish("task_updates", lambda t=task: pubsub.task_update(views.task_view(t), index), task)
            elif event["kind"] == "worker" and self.hub:
                worker_id = event["worker"]["worker_id"]
                self.hub.publish("worker_updates", lambda w=worker_id: pubsub.worker_update(
                    views.worker_view(self, w), w, index), event["worker"])
        if op == "ForgetWorker" and isinstance(result, dict) and result.get("forgotten"):
            conn = self.conns.pop(command["worker_id"], None)
            if conn is not None:
                conn.refuse(f"the enrolment of worker {command['worker_id']!r} was revoked by an admin")
        if op == "ChangeMembers" and isinstance(result, dict) and "members" in result:
            log.warning("cluster membership changed (%s %s at log index %d): %s", result.get("change"),
                        result.get("node_id"), index, ", ".join(f"{k}={v}" for k, v in result["members"].items()))
        if op == "SetNodeEnabled" and isinstance(result, dict) and result.get("node_id") == self.node_id:
            self._apply_enabled(bool(result.get("enabled")))
        if op in ("SetWorkerDrain", "StopWorker") and isinstance(result, dict):
            # Tell the worker (drain/resume are informational; stop and restart it acts on).
            conn = self.conns.get(result["worker_id"])
            if conn is not None:
                action = ((result.get("stopping") or "stop") if op == "StopWorker"
                          else "drain" if result.get("drained") else "resume")
                conn.push({"type": proto.CONTROL, "action": action, "reason": command.get("reason") or "operator"})
        if op == "QuarantineWorker" and isinstance(result, dict):
            conn = self.conns.get(result["worker_id"])
            if conn is not None:
                conn.push({"type": proto.CONTROL, "action": "drain",
                           "reason": (result.get("quarantine") or {}).get("reason") or "quarantined"})
        if op == "CancelTask" and isinstance(result, dict) and result.get("worker_id"):
            conn = self.conns.get(result["worker_id"])
            if conn is not None and result.get("status") == "cancelled":
                conn.push({"type": proto.CANCEL, "task_id": result["task_id"], "attempt": result["attempts"]})
        # Orchestrated tasks: cascaded cancel frames, orchestrated_task_update pushes.
        from dtf_app.coordinator import orchestrator

        orchestrator.after_apply(self, index, command, result, events)
        self.duties.wake()

    def _apply_enabled(self, enabled: bool) -> None:
        """An operator enabled/disabled this node: a disabled node hands leadership over, never campaigns."""
        driver = self.replicator.driver
        if driver is None:
            return
        self._set_can_campaign()
        if not enabled and self.is_leader:
            best = self._best_successor()
            if best is not None:
                log.warning("disabled by an operator: handing leadership to %s", best)
                driver.transfer_leadership(best)

    def _best_successor(self) -> str | None:
        """The enabled voter other than this node that is most caught up (it takes over fastest)."""
        driver = self.replicator.driver
        if driver is None:
            return None
        others = [m for m in driver.node.voters if m != self.node_id and m not in self.state.disabled_nodes]
        if not others:
            return None
        return max(others, key=lambda m: getattr(driver.node.progress(m), "match", 0))

    def wake_dispatcher(self) -> None:
        """Ask the dispatch loop for a round (new work or new free slots)."""
        self.duties.wake()

    # ------------------------------------------------------------------ proposing
    async def propose(self, commands: list[dict[str, Any]]) -> list[Any]:
        """Durably commit and apply commands (stamped with the leader's clock)."""
        now = time.time()
        for command in commands:
            command.setdefault("time", now)
        return await self.replicator.propose(commands)

    async def submit(self, docs: list[dict[str, Any]], *, allow_unschedulable: bool = False,
                     submitter: str | None = None) -> list[dict[str, Any]]:
        """Validate-then-commit a batch of normalised task docs (filled in place); returns the created tasks.

        ``submitter`` (the caller's API key name) is what fair share counts a task against unless the
        task names its own. Raises scheduler.TaskUnprocessableError for dependency/feasibility problems (-> 422).
        """
        # One submit at a time: the checks below yield to the event loop, and no other submit may add
        # the same task ids between them and the commit.
        async with self._submit_lock:
            return await self._submit(docs, allow_unschedulable, submitter)

    async def _submit(self, docs: list[dict[str, Any]], allow_unschedulable: bool,
                      submitter: str | None = None) -> list[dict[str, Any]]:
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
            if not task.get("submitter") and submitter:
                task["submitter"] = submitter
            reason = scheduler.infeasibility_reason(workers, doc["requirements"], doc.get("resources"))
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
