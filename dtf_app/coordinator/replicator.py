"""The boundary between the coordinator and its log: the Raft log, single node included.

``Replicator.propose(commands)`` returns once every command is committed (durable on a majority) and
applied to the state machine, with each command's own result, matched by log index (one command per
entry). Every node — leader or follower — applies committed entries through the same path, which calls
``on_applied(index, command, result, events)`` so the service can write store rows and react. Leadership
changes are reported to ``on_leadership`` (became leader / stepped down, with term and leader id).

Membership: the static ``--peers`` list is only the bootstrap membership. The first leader replicates it
(``SetMembers``), and each runtime change (:meth:`Replicator.change_members`, one node at a time) is a Raft
config entry whose context carries the full id -> URL map after the change; applying that entry is the
state's ``ChangeMembers``, so the voters and their URLs change together, on every node, a new one catching
up by snapshot included. A restarted node uses the replicated membership (and says so when its ``--peers``
differ); the transport follows it (``add_peer`` when a config entry is appended, ``remove_peer`` once
committed). A node that the configuration no longer lists stops campaigning and says so.

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
from dtf_app.raft.types import ConfChange, Entry, NotLeader, Snapshot, conf_change_from_entry

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
        if entry.kind == "config":
            return owner._apply_config(entry)
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
        if command.get("op") == "SetMembers":
            owner._members_changed()
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
        owner._members_changed()
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
        # Every URL this node has been told for a node id (static list, replicated maps, config entries).
        self._urls: dict[str, str] = {k: v for k, v in self.peers.items() if v}
        # True once this node learnt that the cluster no longer lists it (it then never campaigns).
        self.removed = False
        self._refused_by: set[str] = set()
        self._said: set[str] = set()
        self.on_members: Callable[[dict[str, str]], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open the durable log and restore the newest snapshot (blocking: call from a thread)."""
        self.storage = DurableStorage(self.directory)
        voters = sorted(self.peers)
        # The driver restores the newest snapshot into the state: the replicated members are known then.
        self.driver = RaftDriver(self.node_id, voters, self.storage, _Machine(self), self._send,
                                 tick_seconds=self.tick_seconds, election_ticks=self.election_ticks,
                                 snapshot_entries=self.snapshot_every, keep_entries=self.keep_entries,
                                 rng=self._rng, on_leadership=self._leadership)
        self.driver.before_snapshot = self._before_snapshot
        self.driver.on_config_entries = self._config_appended
        self._start_commit = self.storage.hard_state.commit
        members, replicated = self._startup_members()
        if len(members) > 1 or len(self.driver.node.voters) > 1:
            from dtf_app.raft.transport import Transport

            if not self.secret:
                raise ValueError("a cluster of several coordinators needs a cluster secret")
            self.transport = Transport(self.node_id, self._peer_urls(members), self.secret, self._deliver,
                                       ssl_context=self.ssl_context)
            self.transport.on_not_member = self._not_member
            if replicated or self.storage.last_index() > 0:
                # A node that has been part of an elected cluster no longer judges others by its startup
                # list (a lagging member must not stop because a new node joined meanwhile).
                self.transport.set_replicated()
        if self.node_id not in self.driver.node.voters:
            self._say_removed(f"the replicated configuration ({', '.join(sorted(self.driver.node.voters))}) "
                              "does not list it")

    def _startup_members(self) -> tuple[dict[str, str], bool]:
        """(id -> URL of the members this node starts with, whether that membership is replicated).

        The replicated one (snapshot, then SetMembers / config entries still in the log) wins over the
        static list; a difference is logged, as an operator may wonder why --peers is not what is used."""
        assert self.storage is not None and self.driver is not None
        replicated = dict(self.state.members)
        storage = self.storage
        first, last = storage.first_index(), storage.last_index()
        if last >= first:
            for entry in storage.entries(first, last + 1):
                members = None
                if entry.kind == "config":
                    members = _context_members(entry)
                elif entry.kind == "normal" and not replicated and b'"SetMembers"' in entry.data:
                    try:
                        members = json.loads(entry.data).get("members")
                    except ValueError:
                        members = None
                if isinstance(members, dict) and members:
                    replicated = {str(k): str(v) for k, v in members.items()}
        voters = self.driver.node.voters
        if not replicated:
            if voters != frozenset(self.peers):
                log.warning("the log's voters (%s) differ from the configured peers (%s), and the log carries no "
                            "member URLs: using the voters, with the URLs of the configured peers",
                            ", ".join(sorted(voters)), ", ".join(sorted(self.peers)))
            return dict(self.peers), False
        self._urls.update(replicated)
        static = {k: v for k, v in self.peers.items() if v}
        if set(static) != set(replicated) or any(replicated.get(k) != v for k, v in static.items()
                                                 if k != self.node_id):
            log.warning("the replicated cluster membership (%s) differs from the configured peers (%s): using the "
                        "replicated one (--peers is only the bootstrap membership; peers it names are still "
                        "dialed at its URLs)",
                        ", ".join(f"{k}={v}" for k, v in sorted(replicated.items())),
                        ", ".join(f"{k}={v}" for k, v in sorted(static.items())))
        return replicated, True

    def _peer_urls(self, members: dict[str, str]) -> dict[str, str]:
        """The peers the transport streams to: the members and every current voter whose URL is known.

        One rule for dialing addresses: the replicated map decides *who* is a member, but a peer this
        node's own ``--peers`` names is dialed at that URL (the operator's view of the network from this
        node: a proxy, a NAT or a per-node DNS name); the replicated URL is used for members added at
        runtime, which the static list cannot know."""
        assert self.driver is not None
        static = {k: v for k, v in self.peers.items() if v}
        out = {k: static.get(k, v) for k, v in members.items() if k != self.node_id and v}
        for voter in self.driver.node.voters:
            if voter != self.node_id and voter not in out:
                url = static.get(voter) or self._urls.get(voter)
                if url:
                    out[voter] = url
                else:
                    log.error("voter %s has no known URL: this node cannot send to it", voter)
        return out

    def _send(self, messages: list[Any]) -> None:
        if self.transport is not None:
            self.transport.send(messages)

    # ------------------------------------------------------------------ membership
    def members(self) -> dict[str, str]:
        """The cluster's members (id -> URL): the replicated map, else the static bootstrap list."""
        return dict(self.state.members) if self.state.members else dict(self.peers)

    def _config_appended(self, entries: list[Entry]) -> None:
        """A config entry is in the log (it takes effect now, committed or not): stream to a new member
        at once; a member that leaves is dropped from the transport only when the removal commits."""
        for entry in entries:
            members = _context_members(entry)
            if members:
                self._urls.update(members)
        if self.transport is not None:
            for peer_id, url in self._peer_urls({}).items():
                if peer_id not in self.transport.peers or self.transport.peers[peer_id] != url:
                    self.transport.add_peer(peer_id, url)
        assert self.driver is not None
        if self.node_id not in self.driver.node.voters:
            self._say_removed(f"log entry {entries[-1].index} removes it from the configuration")
        elif self.removed:
            # Added back: campaign again (unless an operator disabled it; the coordinator re-checks).
            self.removed = False
            self._refused_by.clear()
            if self.on_members is not None:
                self.on_members(self.members())

    def _apply_config(self, entry: Entry) -> Any:
        """The application half of a committed config entry: the state's ChangeMembers."""
        state = self.state
        change = conf_change_from_entry(entry)
        members = _context_members(entry)
        if change is None or not members:
            state.note_term(entry.term, entry.index)
            return None  # a config entry without member URLs (not written by DTF): voters only
        command = {"op": "ChangeMembers", "change": change.op, "node_id": change.node_id, "members": members}
        result, events = state.apply(command, entry.index, term=entry.term)
        self.on_applied(entry.index, command, result, events)
        self._members_changed()
        return result

    def _members_changed(self) -> None:
        """The replicated membership changed (applied, or a snapshot installed): follow it."""
        members = self.state.members
        if not members:
            return
        self._urls.update(members)
        if self.transport is not None:
            self.transport.set_replicated()
            wanted = self._peer_urls(members)
            for peer_id in list(self.transport.peers):
                if peer_id not in wanted:
                    log.warning("coordinator %s left the cluster: no longer streaming to it", peer_id)
                    self.transport.remove_peer(peer_id)
            for peer_id, url in wanted.items():
                if self.transport.peers.get(peer_id) != url:
                    log.info("coordinator %s (%s) is a member: streaming to it", peer_id, url)
                    self.transport.add_peer(peer_id, url)
        if self.node_id not in members and self.driver is not None and self.node_id not in self.driver.node.voters:
            self._say_removed("the replicated membership no longer lists it")
        if self.on_members is not None:
            self.on_members(dict(members))

    def _say_removed(self, why: str) -> None:
        if self.driver is not None:
            self.driver.node.can_campaign = False
        if not self.removed:
            self.removed = True
            log.warning("this coordinator (%s) was removed from the cluster: %s. It no longer campaigns or "
                        "counts for the quorum; stop it (its data dir can then be deleted), or add it back with "
                        "`dtf cluster add %s URL`", self.node_id, why, self.node_id)
        if self.on_members is not None:
            self.on_members(self.members())

    def _not_member(self, peer_id: str, reason: str) -> None:
        """A peer refused this node as not a member of its (replicated) configuration."""
        assert self.driver is not None
        if self.removed:
            return
        if not self.state.members or self.node_id not in self.state.members:
            # Never part of the replicated membership: a node started before `dtf cluster add` named it.
            if "waiting" not in self._said:
                self._said.add("waiting")
                log.warning("coordinator %s refuses this node (%s): it is not a member yet; add it on the leader "
                            "with `dtf cluster add %s URL` (it keeps trying meanwhile)", peer_id, reason,
                            self.node_id)
            return
        if self.driver.node.hears_leader:
            # A leader is replicating to this node, so its configuration lists it: the peer refusing it
            # lags behind (it has not applied the entry that added this node yet). Counting it would let
            # a node just added declare itself removed, and a cluster that then loses one more member
            # could be left with no node that both may campaign and holds the longest log.
            self._refused_by.clear()
            return
        self._refused_by.add(peer_id)
        others = [v for v in self.driver.node.voters if v != self.node_id]
        # A majority of the others no longer list us: we missed our own removal entry (a leader stops
        # replicating to a node as soon as it appends the removal), so we learn it from them.
        if len(self._refused_by & set(others)) >= len(others) // 2 + 1:
            self._say_removed(f"{', '.join(sorted(self._refused_by))} no longer list it ({reason})")

    async def change_members(self, op: str, node_id: str, url: str | None = None, *,
                             timeout: float = 30.0) -> Any:
        """Add (with its URL) or remove one member; returns once the config entry is committed and
        applied. Raises ProposalDropped while another change is pending, NotLeader on a follower."""
        assert self.driver is not None
        members = self.members()
        if op == "add":
            assert url
            members[node_id] = url
            self._urls[node_id] = url
        else:
            members.pop(node_id, None)
        context = json.dumps({"members": dict(sorted(members.items()))}, separators=(",", ":"))
        return await self.driver.change_membership(ConfChange(op, node_id, context), timeout=timeout)  # type: ignore[arg-type]


    def _deliver(self, messages: list[Any]) -> None:
        if self.driver is not None:
            self.driver.deliver(messages)

    def _leadership(self, change: LeadershipChange) -> None:
        if change.leader_id is not None and self.transport is not None:
            self.transport.set_replicated()  # a majority agreed on a leader: the cluster is formed
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

    @property
    def voters(self) -> frozenset[str]:
        return self.driver.node.voters if self.driver is not None else frozenset({self.node_id})

    @property
    def change_pending(self) -> bool:
        """A membership change is in the log but not yet committed."""
        return self.driver is not None and self.driver.node.pending_conf_index > self.driver.node.commit_index

    async def read_barrier(self) -> int:
        """Linearizable reads: returns once this node applied everything committed before the call."""
        assert self.driver is not None
        return await self.driver.read_barrier()


def _context_members(entry: Entry) -> dict[str, str] | None:
    """The id -> URL map a DTF config entry carries in its context (None for other entries)."""
    try:
        change = conf_change_from_entry(entry)
        if change is None or not change.context:
            return None
        members = json.loads(change.context).get("members")
    except (ValueError, AttributeError, KeyError):
        return None
    if not isinstance(members, dict):
        return None
    return {str(k): str(v) for k, v in members.items()}
