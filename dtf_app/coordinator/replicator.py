"""The boundary between the coordinator and its log: the Raft log, single node included.

``Replicator.propose(commands)`` returns once every command is committed (durable on a majority) and
applied to the state machine, with each command's own result, matched by log index (one command per
entry). Every node — leader or follower — applies committed entries through the same path, which calls
``on_applied(index, command, result, events)`` so the service can write store rows and react. Leadership
changes are reported to ``on_leadership`` (became leader / stepped down, with term and leader id).

Fencing: commands carry the proposer's term (``term``); the state machine refuses a leader-duty command
whose term is older than the newest leader it has seen (see ``State.apply``), so an old leader that has
not yet noticed its deposition can never act on a task the new leader already handled.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from dtf_app.coordinator.state import State
from dtf_app.raft.driver import LeadershipChange, RaftDriver
from dtf_app.raft.log import DurableStorage
from dtf_app.raft.types import Entry, NotLeader, Snapshot

__all__ = ["NotLeader", "Replicator"]

log = logging.getLogger("dtf.coordinator.replicator")

ENCODE_SLICE_S = 0.003

Applied = Callable[[int, dict[str, Any], Any, list[dict[str, Any]]], None]


class _Machine:
    """Adapts the coordinator's :class:`State` to the driver's state-machine protocol."""

    def __init__(self, owner: Replicator) -> None:
        self.owner = owner

    def apply_entry(self, entry: Entry) -> Any:
        owner = self.owner
        if entry.kind != "normal":
            owner.state.note_term(entry.term, entry.index)
            return None
        try:
            command = json.loads(entry.data)
            if not isinstance(command, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            # Never stop the log: the same bytes fail the same way on every replica.
            log.error("log entry %d is not a command (%s); skipped", entry.index, exc)
            owner.state.applied_index = entry.index
            return {"error": f"undecodable command: {exc}"}
        result, events = owner.state.apply(command, entry.index, term=entry.term)
        owner.on_applied(entry.index, command, result, events)
        return result

    def snapshot_bytes(self) -> bytes:
        return self.owner.state.snapshot()

    async def snapshot_bytes_async(self) -> bytes:
        from dtf_app.coordinator import bulk

        return await bulk.encode_snapshot(self.owner.state)  # == state.snapshot(), in slices

    def restore_snapshot(self, snapshot: Snapshot) -> None:
        owner = self.owner
        owner.state = State.restore(snapshot.data) if snapshot.data else State()
        if owner.on_snapshot_installed is not None:
            # Before on_restored and before any later entry is applied: rows it derives come first.
            owner.on_snapshot_installed(owner.state, snapshot.index)
        if owner.on_restored is not None:
            owner.on_restored(owner.state)


class Replicator:
    """Durably orders the coordinator's commands over Raft (see the module docstring)."""

    def __init__(self, directory: str | Path, state: State, on_applied: Applied, *, node_id: str,
                 peers: dict[str, str] | None = None, secret: bytes | None = None,
                 snapshot_every: int = 20_000, keep_entries: int = 5_000, tick_seconds: float = 0.05,
                 election_ticks: int = 6, rng: Any = None, ssl_context: Any = None) -> None:
        self.directory = Path(directory)
        self.state = state
        self.on_applied = on_applied
        self.on_restored: Callable[[State], None] | None = None
        # (state, snapshot index): a snapshot replaced the state, at start or received from the leader.
        self.on_snapshot_installed: Callable[[State, int], None] | None = None
        self.on_leadership: Callable[[LeadershipChange], None] | None = None
        self.before_snapshot: Callable[[], Awaitable[Any]] | None = None
        self.node_id = node_id
        self.peers = dict(peers or {node_id: ""})
        self.secret = secret
        self.snapshot_every = snapshot_every
        self.keep_entries = keep_entries
        self.tick_seconds = tick_seconds
        self.election_ticks = election_ticks
        self._rng = rng
        # TLS for the peer links (https:// members are dialled as wss:// and verified with it).
        self.ssl_context = ssl_context
        self.storage: DurableStorage | None = None
        self.driver: RaftDriver | None = None
        self.transport: Any = None
        self._start_commit = 0

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open the durable log and restore the newest snapshot (blocking: call from a thread)."""
        self.storage = DurableStorage(self.directory)
        voters = sorted(self.peers)
        send: Callable[[list[Any]], None] = lambda messages: None  # noqa: E731
        if len(voters) > 1:
            from dtf_app.raft.transport import Transport

            if not self.secret:
                raise ValueError("a cluster of several coordinators needs a cluster secret")
            self.transport = Transport(self.node_id, self.peers, self.secret, self._deliver,
                                       ssl_context=self.ssl_context)
            send = self.transport.send
        self.driver = RaftDriver(self.node_id, voters, self.storage, _Machine(self), send,
                                 tick_seconds=self.tick_seconds, election_ticks=self.election_ticks,
                                 snapshot_entries=self.snapshot_every, keep_entries=self.keep_entries,
                                 rng=self._rng, on_leadership=self._leadership)
        self.driver.before_snapshot = self._before_snapshot
        self._start_commit = self.storage.hard_state.commit

    def _deliver(self, messages: list[Any]) -> None:
        if self.driver is not None:
            self.driver.deliver(messages)

    def _leadership(self, change: LeadershipChange) -> None:
        if self.on_leadership is not None:
            self.on_leadership(change)

    async def _before_snapshot(self) -> None:
        if self.before_snapshot is not None:
            await self.before_snapshot()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.driver is not None, "open() first"
        async with trio.open_nursery() as nursery:
            if self.transport is not None:
                await nursery.start(self.transport.run)
            await nursery.start(self.driver.run)
            task_status.started()

    async def wait_caught_up(self) -> None:
        """Until everything that was committed before this start is applied again (replay done)."""
        assert self.driver is not None
        await self.driver.wait_applied(self._start_commit)

    def close(self) -> None:
        if self.storage is not None:
            self.storage.close()

    # ------------------------------------------------------------------ proposing
    @property
    def is_leader(self) -> bool:
        return self.driver is not None and self.driver.is_leader

    @property
    def leader_id(self) -> str | None:
        return self.driver.leader_id if self.driver is not None else None

    @property
    def term(self) -> int:
        return self.driver.term if self.driver is not None else 0

    @property
    def role(self) -> str:
        return self.driver.node.role if self.driver is not None else "follower"

    @property
    def commit_index(self) -> int:
        return self.driver.node.commit_index if self.driver is not None else 0

    async def propose(self, commands: list[dict[str, Any]]) -> list[Any]:
        """Commit and apply ``commands`` (one entry each); their results in order.

        Raises :class:`NotLeader` on a follower (with the leader's id when known), and
        ``ProposalDropped`` when the entries were lost to a leader change or not committed in time.
        """
        if self.driver is None or not self.driver.running:
            raise RuntimeError("the coordinator is not running")
        term = self.driver.term
        data = []
        since_yield = time.monotonic()
        for command in commands:
            command.setdefault("term", term)
            data.append(json.dumps(command, separators=(",", ":")).encode())
            if time.monotonic() - since_yield > ENCODE_SLICE_S:
                # A big submit is many commands: let the event loop run between their encodings.
                await trio.sleep(0)
                since_yield = time.monotonic()
        return await self.driver.propose(data)

    async def read_barrier(self) -> int:
        """Linearizable reads: returns once this node applied everything committed before the call."""
        assert self.driver is not None
        return await self.driver.read_barrier()
