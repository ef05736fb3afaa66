"""The trio loop around the Raft core: ticks, messages, proposals, and the Ready cycle.

One task owns the :class:`~dtf_app.raft.core.RaftNode` and its storage. Everything else talks to it through
an inbox (peer messages, proposals, read barriers, membership changes), so the core is never touched
concurrently and the durable storage is only written by that task's persist step. Each loop round:

1. ticks the core for the wall time that passed (a trio clock, so tests can use ``MockClock``);
2. steps every message and proposal that arrived, in arrival order;
3. handles each ``Ready`` strictly in order: persist (entries, hard state, received snapshot; one fsync in
   a worker thread for everything since the last one, so proposals and appends that arrive meanwhile
   share the next fsync: group commit), send, apply committed entries to the state machine, ``advance``;
   a leader sends its appends *before* its own fsync, so followers write in parallel with it;
4. answers read barriers once their index is applied, reports leadership changes, and takes a snapshot
   of the state machine (then compacts the log) every ``snapshot_entries`` applied entries.

Proposals resolve with the state machine's result for *their* entry, matched by log index and term: an
entry overwritten by another leader's (same index, other term) fails its proposer with
:class:`ProposalDropped`, and one that is never committed times out as "outcome unknown".
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from dtf_app.raft.core import RaftNode
from dtf_app.raft.types import (
    ConfChange,
    Entry,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    Ready,
    Snapshot,
)

__all__ = ["DriverStatus", "LeadershipChange", "RaftDriver", "StateMachine"]

# Applying a long run of committed entries (a 100,000-task submit is hundreds) lets the event loop run
# every APPLY_SLICE_S: between two entries the state is whole, and nothing but this task writes it.
APPLY_SLICE_S = 0.003

# What a leader may send before its own fsync of the same Ready (see RaftDriver._early_messages).
_EARLY_TYPES = frozenset({MessageType.APPEND, MessageType.HEARTBEAT})

log = logging.getLogger("dtf.raft")


class StateMachine(Protocol):
    """What the driver applies committed entries to (the coordinator's state, in DTF)."""

    def apply_entry(self, entry: Entry) -> Any:
        """Apply one committed entry, in log order; the result goes to its proposer if it waits here.

        Every entry comes through here, noop and config entries too (they carry no application data,
        but their terms tell the state machine that a new leader took over)."""
        ...

    def snapshot_bytes(self) -> bytes:
        """The state as of the last applied entry."""
        ...

    def restore_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the state with a snapshot's (at start, or one received from the leader)."""
        ...


@dataclass(frozen=True)
class LeadershipChange:
    """Reported whenever this node's view of (role, leader, term) changes."""

    role: str
    leader_id: str | None
    term: int
    previous_leader_id: str | None
    previous_role: str


@dataclass(frozen=True)
class DriverStatus:
    node_id: str
    role: str
    term: int
    leader_id: str | None
    commit_index: int
    applied_index: int
    last_index: int
    voters: frozenset[str]
    snapshot_index: int


class _Waiter:
    """One caller waiting for the driver (a proposal, a read barrier or a membership change)."""

    __slots__ = ("done", "error", "index", "result", "term")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.index = 0
        self.term = 0

    def resolve(self, result: Any) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    async def wait(self, timeout: float, what: str) -> Any:
        with trio.move_on_after(timeout):
            await self.done.wait()
        if not self.done.is_set():
            raise ProposalDropped(f"{what} was not answered within {timeout:g} s (no quorum?); outcome unknown")
        if self.error is not None:
            raise self.error
        return self.result


class RaftDriver:
    """Runs one Raft node: see the module docstring."""

    def __init__(self, node_id: str, peers: Sequence[str], storage: Any, state_machine: StateMachine,
                 send: Callable[[list[Message]], None], *, tick_seconds: float = 0.05, election_ticks: int = 6,
                 heartbeat_ticks: int = 1, snapshot_entries: int = 10_000, keep_entries: int = 1_000,
                 rng: random.Random | None = None, persist_in_thread: bool = True,
                 on_leadership: Callable[[LeadershipChange], None] | None = None) -> None:
        self.node_id = node_id
        self.storage = storage
        self.sm = state_machine
        self._send = send
        self.tick_seconds = tick_seconds
        self.snapshot_entries = max(1, snapshot_entries)
        self.keep_entries = max(0, keep_entries)
        self._persist_in_thread = persist_in_thread
        self._on_leadership = on_leadership
        config = RaftConfig(node_id=node_id, peers=tuple(peers), election_ticks=election_ticks,
                            heartbeat_ticks=heartbeat_ticks, pre_vote=True, check_quorum=True)
        self.node = RaftNode(config, storage, rng or random.Random())
        self._inbox: deque[tuple[str, Any]] = deque()
        self._wakeup = trio.Event()
        self._proposals: dict[int, _Waiter] = {}
        self._reads: dict[bytes, _Waiter] = {}
        self._read_seq = 0
        self._waiting_reads: list[tuple[int, _Waiter]] = []
        self.applied_index = 0
        self.snapshot_index = 0
        snap = storage.snapshot()
        if snap is not None:
            self.sm.restore_snapshot(snap)
            self.applied_index = self.snapshot_index = snap.index
        self._seen = (self.node.role, self.node.leader_id, self.node.term)
        self._applied_changed = trio.Event()
        self.running = False
        # Awaited before each snapshot, with applies paused (the coordinator flushes its store there, so
        # no store row of an entry the snapshot covers can be lost with the compacted log).
        self.before_snapshot: Callable[[], Awaitable[Any]] | None = None
        # Called with the config entries of each Ready once they are durable and before its messages go
        # out (a change takes effect when appended): the transport learns a new member's address in time.
        self.on_config_entries: Callable[[list[Entry]], None] | None = None

    # ------------------------------------------------------------------ views
    def status(self) -> DriverStatus:
        n = self.node
        return DriverStatus(self.node_id, n.role, n.term, n.leader_id, n.commit_index, self.applied_index,
                            n.last_index, n.voters, self.snapshot_index)

    @property
    def is_leader(self) -> bool:
        return self.node.role == "leader"

    @property
    def leader_id(self) -> str | None:
        return self.node.leader_id

    @property
    def term(self) -> int:
        return self.node.term

    # ------------------------------------------------------------------ inputs (never block)
    def deliver(self, messages: list[Message]) -> None:
        """Peer messages from the transport."""
        self._inbox.append(("msgs", messages))
        self._wakeup.set()

    def campaign(self) -> None:
        self._inbox.append(("campaign", None))
        self._wakeup.set()

    def transfer_leadership(self, to: str) -> None:
        self._inbox.append(("transfer", to))
        self._wakeup.set()

    async def propose(self, data: list[bytes], *, timeout: float = 30.0) -> list[Any]:
        """Commit entries (one per item, in order) and return each one's apply result.

        Raises NotLeader (with the leader hint) when this node cannot accept proposals, ProposalDropped
        when the entries were lost to a leader change or not committed within ``timeout``.
        """
        waiters = [_Waiter() for _ in data]
        self._inbox.append(("propose", list(zip(data, waiters, strict=True))))
        self._wakeup.set()
        return [await w.wait(timeout, "the proposal") for w in waiters]

    async def read_barrier(self, *, timeout: float = 10.0) -> int:
        """Linearizable read: returns once this node has applied everything committed before the call
        (confirmed by a quorum). Raises NotLeader when no leader is known."""
        waiter = _Waiter()
        self._inbox.append(("read", waiter))
        self._wakeup.set()
        return await waiter.wait(timeout, "the read barrier")

    async def change_membership(self, change: ConfChange, *, timeout: float = 30.0) -> Any:
        """Add or remove one voter; returns (the state machine's result for the config entry) once the
        change is committed and applied. Raises ProposalDropped while another change is pending."""
        waiter = _Waiter()
        self._inbox.append(("conf", (change, waiter)))
        self._wakeup.set()
        return await waiter.wait(timeout, "the membership change")

    async def wait_applied(self, index: int) -> None:
        while self.applied_index < index:
            await self._applied_changed.wait()

    # ------------------------------------------------------------------ the loop
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        if node.voters == frozenset({self.node_id}) and node.role != "leader":
            node.campaign()  # a one-member cluster need not wait an election timeout
        next_tick = trio.current_time() + self.tick_seconds
        self.running = True
        task_status.started()
        try:
            while True:
                if not self._inbox and not node.has_ready():
                    with trio.move_on_at(next_tick):
                        await self._wakeup.wait()
                self._wakeup = trio.Event()
                # What peers sent first, then the clock: a heartbeat that waited in the inbox must reset
                # the election timer before the tick that would otherwise start an election.
                self._drain_inbox()
                now = trio.current_time()
                if now >= next_tick:
                    # One tick per round however late it is (missed ticks are dropped, as Go's ticker
                    # drops them for etcd): when this process was starved of CPU, the peers' messages
                    # are still unread in our sockets, so a stall must not count as silence. Ticks only
                    # drive timeouts (liveness); no safety property of the core depends on them.
                    node.tick()
                    next_tick += self.tick_seconds
                    if next_tick <= now:
                        next_tick = now + self.tick_seconds
                while node.has_ready():
                    await self._handle_ready(node.ready())
                    # What arrived during the fsync joins the next Ready (group commit).
                    self._drain_inbox()
                self._note_leadership()
                await trio.lowlevel.checkpoint()
        finally:
            self.running = False
            lost = NotLeader(None)
            for waiter in [*self._proposals.values(), *self._reads.values()]:
                waiter.fail(lost)
            for _, waiter in self._waiting_reads:
                waiter.fail(lost)

    def _drain_inbox(self) -> None:
        node = self.node
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "msgs":
                for msg in item:
                    node.step(msg)
            elif kind == "propose":
                for data, waiter in item:
                    try:
                        waiter.index = node.propose(data)
                        waiter.term = node.term
                        self._proposals[waiter.index] = waiter
                    except (NotLeader, ProposalDropped) as exc:
                        waiter.fail(exc)
            elif kind == "read":
                self._read_seq += 1
                ctx = b"r%d" % self._read_seq
                try:
                    node.read_index(ctx)
                    self._reads[ctx] = item
                except NotLeader as exc:
                    item.fail(exc)
            elif kind == "conf":
                change, waiter = item
                try:
                    waiter.index = node.propose_conf_change(change)
                    waiter.term = node.term
                    self._proposals[waiter.index] = waiter
                except (NotLeader, ProposalDropped, ValueError) as exc:
                    waiter.fail(exc)
            elif kind == "transfer":
                node.transfer_leadership(item)
            elif kind == "campaign":
                node.campaign()

    def _persist(self, rd: Ready) -> None:
        storage = self.storage
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        if rd.must_sync and hasattr(storage, "sync"):
            storage.sync()

    def _early_messages(self, rd: Ready) -> list[Message]:
        """The leader's appends and heartbeats, which may leave before this Ready is durable.

        Raft thesis §10.2.1: the leader writes its log in parallel with replicating it. That is safe here
        because the driver steps no message while a Ready is being persisted (they wait in the inbox), so a
        follower's acknowledgement of these entries is only counted once the leader's own copy is durable;
        and a leader's appends promise nothing about its own disk. Everything else (votes, replies, any
        message of a Ready that changes term or vote) still waits for the fsync.
        """
        if not rd.messages or self.node.role != "leader" or rd.snapshot is not None:
            return []
        hs = rd.hard_state
        stored = getattr(self.storage, "hard_state", None)
        if stored is None or (hs is not None and (hs.term != stored.term or hs.vote != stored.vote)):
            return []
        return [m for m in rd.messages if m.type in _EARLY_TYPES]

    async def _handle_ready(self, rd: Ready) -> None:
        messages = rd.messages
        if rd.snapshot is not None or rd.entries or rd.hard_state is not None:
            early = self._early_messages(rd) if rd.must_sync else []
            if early:
                self._send(early)
                messages = [m for m in messages if m.type not in _EARLY_TYPES]
            # Only an fsync (or a snapshot file) is worth a thread hop; plain writes are buffered.
            if self._persist_in_thread and (rd.must_sync or rd.snapshot is not None):
                await trio.to_thread.run_sync(self._persist, rd)
            else:
                self._persist(rd)
        if rd.entries and self.on_config_entries is not None:
            configs = [e for e in rd.entries if e.kind == "config"]
            if configs:
                self.on_config_entries(configs)
        if messages:
            self._send(messages)
        if rd.snapshot is not None:
            self.sm.restore_snapshot(rd.snapshot)
            self.applied_index = self.snapshot_index = rd.snapshot.index
            for index in [i for i in self._proposals if i <= rd.snapshot.index]:
                self._proposals.pop(index).fail(ProposalDropped(
                    "superseded by a snapshot from the leader; outcome unknown"))
        since_yield = time.monotonic()
        for entry in rd.committed_entries:
            if time.monotonic() - since_yield > APPLY_SLICE_S:
                await trio.sleep(0)
                since_yield = time.monotonic()
            try:
                result = self.sm.apply_entry(entry)
            except Exception as exc:  # the state machine must never stop the log
                log.exception("applying log entry %d failed; the entry is skipped", entry.index)
                result = {"error": f"apply failed: {type(exc).__name__}: {exc}"}
            self.applied_index = entry.index
            waiter = self._proposals.pop(entry.index, None)
            if waiter is not None:
                if waiter.term == entry.term:
                    waiter.resolve(result)
                else:
                    waiter.fail(ProposalDropped(f"entry {entry.index} was replaced by a new leader's"))
        self.node.advance(rd)
        for rs in rd.read_states:
            waiter = self._reads.pop(rs.ctx, None)
            if waiter is not None:
                self._waiting_reads.append((rs.index, waiter))
        if rd.committed_entries or rd.snapshot is not None:
            self._applied_changed.set()
            self._applied_changed = trio.Event()
        if self._waiting_reads:
            still = []
            for index, waiter in self._waiting_reads:
                if index <= self.applied_index:
                    waiter.resolve(index)
                else:
                    still.append((index, waiter))
            self._waiting_reads = still
        if self.applied_index - self.snapshot_index >= self.snapshot_entries:
            await self._take_snapshot()

    async def _take_snapshot(self) -> None:
        if self.before_snapshot is not None:
            await self.before_snapshot()
        index = self.applied_index
        encode = getattr(self.sm, "snapshot_bytes_async", None)
        # A big state is encoded in slices when the state machine can (the loop keeps running meanwhile).
        data = await encode() if encode is not None else self.sm.snapshot_bytes()
        compact_to = index - self.keep_entries

        def write() -> None:
            self.storage.create_snapshot(index, data)
            if compact_to >= self.storage.first_index():
                self.storage.compact(compact_to)
            if hasattr(self.storage, "sync"):
                self.storage.sync()

        if self._persist_in_thread:
            await trio.to_thread.run_sync(write)
        else:
            write()
        self.snapshot_index = index
        log.debug("snapshot at %d, log compacted to %d", index, max(compact_to, 0))

    def _note_leadership(self) -> None:
        node = self.node
        now = (node.role, node.leader_id, node.term)
        if now == self._seen:
            return
        prev_role, prev_leader, _ = self._seen
        self._seen = now
        if prev_role == "leader" and node.role != "leader":
            # Proposals of our term may still commit under the new leader; keep waiting for them (they
            # resolve or fail when their index is applied), but reads need a leader: fail them now.
            for waiter in self._reads.values():
                waiter.fail(NotLeader(node.leader_id))
            self._reads.clear()
        if (prev_role, prev_leader) != (node.role, node.leader_id) and self._on_leadership is not None:
            self._on_leadership(LeadershipChange(node.role, node.leader_id, node.term, prev_leader, prev_role))
