"""A deterministic, seeded simulator for the Raft core: N nodes, simulated time, a faulty network.

Time is simulated in milliseconds of "lab time" and **one Raft tick = 100 ms** (``TICK_MS``): with the
default ``election_ticks=10, heartbeat_ticks=1`` a leader heartbeats 10 times a second (the MIT 6.824
lab's limit) and election timeouts fall in [1 s, 2 s), so the lab's constants translate directly:
``ELECTION_TIMEOUT_MS = 1000`` is the lab's RaftElectionTimeout, "a leader within 5 s" is 50 ticks.
Each node ticks on its own phase (clocks are not aligned).

The network (per message): a delay (1-5 ms reliable; 0-27 ms unreliable, like the lab), drops (10% when
unreliable), duplicates and long reordering (200-2200 ms) when asked, and connectivity either per node
(the lab's connect/disconnect) or by partition groups. A message needs both ends connected when sent and
when delivered.

Each node's ``MemoryStorage`` is its *durable* state. The application loop (``_handle_ready``) persists a
Ready (snapshot, entries, hard state), then sends its messages, then applies; a crash throws away the
``RaftNode`` and everything it had not yet handed out. With ``lose_unsynced=True`` a crash also loses a
hard-state commit index that was written with ``must_sync=False`` (it was never fsynced). A restart is a
new ``RaftNode`` over the surviving storage; its state machine is restored from the storage's snapshot.

The state machine is a CRC chain over the applied entries; its snapshot bytes are ``b"index:crc"``.
:class:`Invariants` checks Raft's safety properties after every event (see its docstring).
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterable

from dtf_app.raft.core import (
    ConfChange,
    Entry,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftNode,
    ReadState,
    Snapshot,
)
from dtf_app.raft.storage import MemoryStorage
from dtf_app.raft.types import is_response

TICK_MS = 100
ELECTION_TIMEOUT_MS = 1000


class SafetyViolation(AssertionError):
    """An invariant of Raft was broken."""


class SimNode:
    """One simulated server: durable storage, the volatile core, the application's state machine."""

    def __init__(self, node_id: str, config: RaftConfig) -> None:
        self.id = node_id
        self.config = config
        self.storage = MemoryStorage()
        self.raft: RaftNode | None = None
        self.incarnation = 0
        self.connected = True
        self.synced_commit = 0
        self.sm_index = 0
        self.sm_crc = 0
        self.read_states: list[ReadState] = []
        # Snapshots received in Ready.snapshot, and those this node's application created (index -> bytes).
        self.installed: list[Snapshot] = []
        self.created: dict[int, bytes] = {}
        # Index of the first entry applied by this incarnation (None until one is).
        self.first_apply_after_start: int | None = None
        # Per incarnation, for monotonicity checks.
        self.seen_term = 0
        self.seen_commit = 0
        self.was_leader_in_term = -1


def message_size(msg: Message) -> int:
    """Approximate wire size: a fixed header plus the payload of entries and snapshots."""
    size = 40 + len(msg.context)
    for ent in msg.entries:
        size += 16 + len(ent.data)
    if msg.snapshot is not None:
        size += 32 + len(msg.snapshot.data)
    return size


class Invariants:
    """Raft's safety properties, checked incrementally after every simulator event.

    * Election safety: at most one leader per term.
    * Log matching: entries with the same index and term are identical and have the same predecessor
      term (checked as durable logs grow, which by induction gives identical prefixes).
    * Leader completeness: a new leader's log holds every entry known to be committed in an earlier term.
    * State machine safety: every node applies the same entry at each index; applies are in order
      without gaps; snapshots agree with what was applied at their index.
    * A node's term and commit index never decrease within one incarnation (and the durable term never
      decreases at all).
    """

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        self.committed_terms: dict[int, int] = {}
        # index -> lowest term of a node seen holding it as committed: it was committed in that term or
        # earlier, so every leader of a later term must have it (leader completeness).
        self.committed_by: dict[int, int] = {}
        self.max_committed = 0
        self.entry_at: dict[tuple[int, int], tuple[str, bytes]] = {}
        self.pred_at: dict[tuple[int, int], int] = {}
        self.applied: dict[int, tuple[int, str, bytes]] = {}
        self.crc_at: dict[int, int] = {0: 0}
        # ReadIndex ctx -> highest commit index any node had seen when the read was asked.
        self.read_floor: dict[bytes, int] = {}

    def fail(self, text: str) -> None:
        raise SafetyViolation(text)

    def after_step(self, node: SimNode) -> None:
        raft = node.raft
        if raft is None:
            return
        term, commit = raft.term, raft.commit_index
        if term < node.seen_term:
            self.fail(f"{node.id}: term went back from {node.seen_term} to {term}")
        if commit < node.seen_commit:
            self.fail(f"{node.id}: commit index went back from {node.seen_commit} to {commit}")
        if commit > node.seen_commit:
            for index in range(node.seen_commit + 1, commit + 1):
                t = raft.log_term(index)
                if t is None:
                    continue
                known = self.committed_terms.get(index)
                if known is None:
                    self.committed_terms[index] = t
                    self.committed_by[index] = term
                elif known != t:
                    self.fail(f"{node.id}: committed index {index} has term {t}, elsewhere {known}")
                elif term < self.committed_by[index]:
                    self.committed_by[index] = term
            self.max_committed = max(self.max_committed, commit)
        node.seen_term, node.seen_commit = term, commit
        if raft.role == "leader" and node.was_leader_in_term != term:
            node.was_leader_in_term = term
            holder = self.leaders.setdefault(term, node.id)
            if holder != node.id:
                self.fail(f"two leaders in term {term}: {holder} and {node.id}")
            self._check_leader_complete(node)

    def _check_leader_complete(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        first = node.storage.first_index()
        for index in range(max(first, 1), self.max_committed + 1):
            want = self.committed_terms.get(index)
            # Only entries committed in an earlier term must be there: a candidate can legitimately win
            # an old term (a delayed vote) after a later term committed more.
            if want is None or self.committed_by[index] >= raft.term:
                continue
            if raft.log_term(index) != want:
                self.fail(
                    f"leader {node.id} (term {raft.term}) lacks committed entry {index} (term {want}); "
                    f"has term {raft.log_term(index)}"
                )

    def on_persist_entries(self, node: SimNode, entries: list[Entry]) -> None:
        try:
            prev_term: int | None = node.storage.term(entries[0].index - 1)
        except IndexError:
            prev_term = None
        entry_at, pred_at = self.entry_at, self.pred_at
        for ent in entries:
            key = (ent.index, ent.term)
            body = (ent.kind, ent.data)
            known = entry_at.setdefault(key, body)
            if known != body:
                self.fail(f"{node.id}: two different entries at index {ent.index} term {ent.term}")
            if prev_term is not None:
                pred = pred_at.setdefault(key, prev_term)
                if pred != prev_term:
                    self.fail(
                        f"{node.id}: entry {ent.index}/{ent.term} follows term {prev_term}, elsewhere {pred}"
                    )
            prev_term = ent.term

    def on_apply(self, node: SimNode, ent: Entry) -> None:
        if ent.index != node.sm_index + 1:
            self.fail(f"{node.id}: applied index {ent.index} after {node.sm_index} (gap or reorder)")
        known = self.applied.setdefault(ent.index, (ent.term, ent.kind, ent.data))
        if known != (ent.term, ent.kind, ent.data):
            self.fail(f"{node.id}: applied {ent} at {ent.index}, another node applied {known}")
        committed = self.committed_terms.get(ent.index)
        if committed is not None and committed != ent.term:
            self.fail(f"{node.id}: applied term {ent.term} at {ent.index}, committed term {committed}")

    def on_read_state(self, node: SimNode, rs: ReadState) -> None:
        floor = self.read_floor.get(rs.ctx)
        if floor is None:
            self.fail(f"{node.id}: answer to a read nobody asked for: {rs}")
        elif rs.index < floor:
            self.fail(f"{node.id}: read {rs.ctx!r} answered at {rs.index}, but {floor} was committed when asked")

    def on_state(self, node: SimNode) -> None:
        known = self.crc_at.setdefault(node.sm_index, node.sm_crc)
        if known != node.sm_crc:
            self.fail(f"{node.id}: state at {node.sm_index} differs from another node's")

    def on_restore(self, node: SimNode, snap: Snapshot, applied_before: int | None) -> None:
        if applied_before is not None and snap.index < applied_before:
            self.fail(f"{node.id}: Ready.snapshot at {snap.index} older than applied {applied_before}")
        self.on_state(node)


class Cluster:
    """N simulated nodes on one simulated network, driven by a seeded event queue."""

    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        reliable: bool = True,
        snapshot_every: int = 0,
        lose_unsynced: bool = False,
        pre_vote: bool = True,
        check_quorum: bool = True,
        election_ticks: int = 10,
        max_entries_per_msg: int = 256,
        max_inflight_msgs: int = 256,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0
        self._seq = 0
        self._events: list[tuple[int, int, str, object]] = []
        self.reliable = reliable
        self.long_reordering = False
        self.dup_rate = 0.0
        self.drop_rate = 0.1
        self.snapshot_every = snapshot_every
        self.lose_unsynced = lose_unsynced
        self.groups: dict[str, int] | None = None
        self.check = Invariants()
        self.rpc_count = 0
        self.bytes_sent = 0
        self.sent_by_type: Counter[str] = Counter()
        self.steps = 0
        self._config_defaults = dict(
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            election_ticks=election_ticks,
            max_entries_per_msg=max_entries_per_msg,
            max_inflight_msgs=max_inflight_msgs,
        )
        self.ids = [f"n{i}" for i in range(n)]
        self.nodes: dict[str, SimNode] = {}
        for nid in self.ids:
            self.add_node(nid, self.ids, start=True)

    # --- membership of the simulation ---------------------------------------------------------------

    def add_node(self, nid: str, peers: Iterable[str], start: bool = True) -> SimNode:
        config = RaftConfig(node_id=nid, peers=tuple(peers), **self._config_defaults)  # type: ignore[arg-type]
        node = SimNode(nid, config)
        self.nodes[nid] = node
        if nid not in self.ids:
            self.ids.append(nid)
        if start:
            self.start(nid)
        return node

    def node(self, i: int | str) -> SimNode:
        return self.nodes[self.ids[i] if isinstance(i, int) else i]

    def raft(self, i: int | str) -> RaftNode:
        raft = self.node(i).raft
        assert raft is not None, f"node {i} is crashed"
        return raft

    # --- faults -------------------------------------------------------------------------------------

    def crash(self, i: int | str) -> None:
        node = self.node(i)
        if node.raft is None:
            return
        node.raft = None
        node.incarnation += 1
        if self.lose_unsynced:
            # A commit index written without fsync may not have reached the disk.
            hs = node.storage.hard_state
            snap = node.storage.snapshot()
            commit = max(node.synced_commit, snap.index if snap else 0)
            node.storage.set_hard_state(type(hs)(hs.term, hs.vote, min(hs.commit, commit)))

    def start(self, i: int | str) -> None:
        node = self.node(i)
        if node.raft is not None:
            return
        rng = random.Random(self.seed * 7919 + node.incarnation * 104729 + hash_id(node.id))
        node.raft = RaftNode(node.config, node.storage, rng)
        node.seen_term = node.raft.term
        node.seen_commit = node.raft.commit_index
        node.was_leader_in_term = -1
        node.synced_commit = node.storage.hard_state.commit
        snap = node.storage.snapshot()
        node.sm_index, node.sm_crc = decode_state(snap.data) if snap else (0, 0)
        node.read_states = []
        node.first_apply_after_start = None
        self._push(self.now + self.rng.randrange(1, TICK_MS), "tick", (node.id, node.incarnation))
        self._handle_ready(node)

    def restart(self, i: int | str) -> None:
        self.crash(i)
        self.start(i)

    def disconnect(self, i: int | str) -> None:
        self.node(i).connected = False

    def connect(self, i: int | str) -> None:
        self.node(i).connected = True

    def partition(self, *groups: Iterable[str | int]) -> None:
        """Split into groups; nodes not named form one more group."""
        mapping: dict[str, int] = {}
        for g, members in enumerate(groups):
            for m in members:
                mapping[self.node(m).id] = g
        self.groups = {nid: mapping.get(nid, len(groups)) for nid in self.nodes}

    def heal(self) -> None:
        self.groups = None
        for node in self.nodes.values():
            node.connected = True

    def set_unreliable(self, unreliable: bool) -> None:
        self.reliable = not unreliable

    def can_talk(self, a: str, b: str) -> bool:
        na, nb = self.nodes.get(a), self.nodes.get(b)
        if na is None or nb is None or not na.connected or not nb.connected:
            return False
        if self.groups is not None and self.groups.get(a, -1) != self.groups.get(b, -1):
            return False
        return True

    # --- event loop ---------------------------------------------------------------------------------

    def _push(self, at: int, kind: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, payload))

    def _send(self, msg: Message) -> None:
        if not is_response(msg.type):
            self.rpc_count += 1
        self.bytes_sent += message_size(msg)
        self.sent_by_type[msg.type.name] += 1
        if not self.can_talk(msg.src, msg.dst):
            return
        rng = self.rng
        if self.reliable:
            delay = rng.randint(1, 5)
        else:
            if rng.random() < self.drop_rate:
                return
            delay = rng.randint(0, 27)
        if self.long_reordering and rng.random() < 2 / 3:
            delay = 200 + rng.randint(0, rng.randint(0, 2000))
        self._push(self.now + delay, "msg", msg)
        if self.dup_rate and rng.random() < self.dup_rate:
            self._push(self.now + delay + rng.randint(0, 50), "msg", msg)

    def run_for(self, ms: int) -> None:
        self.run_until(lambda: False, ms)

    def run_until(self, cond: Callable[[], bool], max_ms: int) -> bool:
        """Process events until ``cond()`` holds (checked after each event) or ``max_ms`` pass."""
        deadline = self.now + max_ms
        if cond():
            return True
        events = self._events
        while events and events[0][0] <= deadline:
            at, _, kind, payload = heapq.heappop(events)
            self.now = at
            if kind == "tick":
                nid, inc = payload  # type: ignore[misc]
                node = self.nodes[nid]
                if node.raft is None or node.incarnation != inc:
                    continue
                self._push(at + TICK_MS, "tick", payload)
                node.raft.tick()
            elif kind == "msg":
                msg: Message = payload  # type: ignore[assignment]
                node = self.nodes.get(msg.dst)  # type: ignore[assignment]
                if node is None or node.raft is None or not self.can_talk(msg.src, msg.dst):
                    continue
                node.raft.step(msg)
            else:
                callback: Callable[[], None] = payload  # type: ignore[assignment]
                callback()
                if cond():
                    return True
                continue
            self.steps += 1
            self._handle_ready(node)
            if cond():
                return True
        self.now = max(self.now, deadline)
        return cond()

    def at(self, delay_ms: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` at simulated time now + delay (for clients acting concurrently)."""
        self._push(self.now + delay_ms, "call", callback)

    def _handle_ready(self, node: SimNode) -> None:
        """The application loop: persist, send, apply, advance; then check the invariants."""
        raft = node.raft
        assert raft is not None
        check = self.check
        storage = node.storage
        while raft.has_ready():
            rd = raft.ready()
            if rd.snapshot is not None:
                storage.apply_snapshot(rd.snapshot)
            if rd.entries:
                check.on_persist_entries(node, rd.entries)
                storage.append(rd.entries)
            if rd.hard_state is not None:
                if rd.hard_state.term < storage.hard_state.term:
                    check.fail(f"{node.id}: durable term went back to {rd.hard_state.term}")
                storage.set_hard_state(rd.hard_state)
            if rd.must_sync:
                node.synced_commit = storage.hard_state.commit
            for msg in rd.messages:
                self._send(msg)
            if rd.snapshot is not None:
                before = node.sm_index
                node.installed.append(rd.snapshot)
                node.sm_index, node.sm_crc = decode_state(rd.snapshot.data)
                check.on_restore(node, rd.snapshot, before)
            for ent in rd.committed_entries:
                check.on_apply(node, ent)
                if node.first_apply_after_start is None:
                    node.first_apply_after_start = ent.index
                node.sm_index = ent.index
                node.sm_crc = zlib.crc32(ent.data, node.sm_crc)
                check.on_state(node)
                if self.snapshot_every and ent.index % self.snapshot_every == 0:
                    data = encode_state(node.sm_index, node.sm_crc)
                    storage.create_snapshot(ent.index, data)
                    node.created[ent.index] = data
                    storage.compact(ent.index)
            for rs in rd.read_states:
                check.on_read_state(node, rs)
                node.read_states.append(rs)
            raft.advance(rd)
        check.after_step(node)

    # --- client helpers (the lab's config.go) -------------------------------------------------------

    def propose(self, i: int | str, data: bytes) -> int | None:
        """Start(): propose on node i; its index, or None if it is not (or no longer) leader."""
        node = self.node(i)
        if node.raft is None:
            return None
        try:
            index = node.raft.propose(data)
        except (NotLeader, ProposalDropped):
            return None
        self._handle_ready(node)
        return index

    def propose_batch(self, i: int | str, datas: list[bytes]) -> list[int]:
        """Several proposals before the application loop runs once (they share appends)."""
        node = self.node(i)
        indexes: list[int] = []
        if node.raft is None:
            return indexes
        for data in datas:
            try:
                indexes.append(node.raft.propose(data))
            except (NotLeader, ProposalDropped):
                break
        self._handle_ready(node)
        return indexes

    def read(self, i: int | str, ctx: bytes) -> bool:
        """Ask node i for a read barrier; False if it refused (no leader known)."""
        node = self.node(i)
        if node.raft is None:
            return False
        self.check.read_floor[ctx] = self.check.max_committed
        try:
            node.raft.read_index(ctx)
        except NotLeader:
            return False
        self._handle_ready(node)
        return True

    def conf_change(self, i: int | str, change: ConfChange) -> int | None:
        node = self.node(i)
        if node.raft is None:
            return None
        try:
            index = node.raft.propose_conf_change(change)
        except (NotLeader, ProposalDropped):
            return None
        self._handle_ready(node)
        return index

    def transfer(self, i: int | str, to: str) -> None:
        node = self.node(i)
        if node.raft is not None:
            node.raft.transfer_leadership(to)
            self._handle_ready(node)

    def tick_now(self, i: int | str) -> None:
        """Tick node i once outside its schedule (for tests that need exact tick counts)."""
        node = self.node(i)
        if node.raft is not None:
            node.raft.tick()
            self._handle_ready(node)

    def deliver_now(self, msg: Message) -> None:
        node = self.nodes[msg.dst]
        if node.raft is not None:
            node.raft.step(msg)
            self._handle_ready(node)

    def alive_connected(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raft is not None and n.connected]

    def leaders(self) -> list[SimNode]:
        return [n for n in self.alive_connected() if n.raft is not None and n.raft.role == "leader"]

    def check_one_leader(self) -> int:
        """The lab's checkOneLeader: exactly one leader in the newest term among connected nodes."""
        for _ in range(10):
            self.run_for(self.rng.randint(450, 550))
            by_term: dict[int, list[str]] = {}
            for node in self.leaders():
                assert node.raft is not None
                by_term.setdefault(node.raft.term, []).append(node.id)
            for term, ids in by_term.items():
                if len(ids) > 1:
                    raise AssertionError(f"term {term} has {len(ids)} leaders: {ids}")
            if by_term:
                return self.ids.index(by_term[max(by_term)][0])
        raise AssertionError(f"expected one leader, got none (seed {self.seed})")

    def check_terms(self) -> int:
        terms = {n.raft.term for n in self.alive_connected() if n.raft is not None}
        assert len(terms) <= 1, f"servers disagree on term: {terms}"
        return terms.pop() if terms else -1

    def check_no_leader(self) -> None:
        leaders = [n.id for n in self.leaders()]
        assert not leaders, f"expected no leader among connected servers, but {leaders} claim to be"

    def n_committed(self, index: int) -> tuple[int, bytes | None]:
        """How many servers have applied ``index``, and the data there."""
        count = sum(1 for n in self.nodes.values() if n.sm_index >= index)
        known = self.check.applied.get(index)
        return count, (known[2] if known else None)

    def wait_committed(self, index: int, n: int, max_ms: int = 10_000) -> bytes | None:
        self.run_until(lambda: self.n_committed(index)[0] >= n, max_ms)
        count, data = self.n_committed(index)
        assert count >= n, f"only {count} servers committed index {index}, wanted {n} (seed {self.seed})"
        return data

    def one(self, data: bytes, expected: int, retry: bool = True) -> int:
        """The lab's one(): get ``data`` committed on ``expected`` servers within 10 s; its index."""
        deadline = self.now + 10_000
        starts = 0
        while self.now < deadline:
            index = None
            for _ in range(len(self.ids)):
                starts = (starts + 1) % len(self.ids)
                node = self.node(starts)
                if node.raft is not None and node.connected:
                    index = self.propose(starts, data)
                    if index is not None:
                        break
            if index is not None:
                if self.run_until(lambda i=index: self._committed_as(i, data, expected), 2_000):
                    return index
                if not retry:
                    raise AssertionError(f"one({data!r}) failed to reach agreement (seed {self.seed})")
            else:
                self.run_for(50)
        raise AssertionError(f"one({data!r}) failed to reach agreement within 10 s (seed {self.seed})")

    def _committed_as(self, index: int, data: bytes, expected: int) -> bool:
        count, got = self.n_committed(index)
        return count >= expected and got == data


def encode_state(index: int, crc: int) -> bytes:
    return f"{index}:{crc}".encode()


def decode_state(data: bytes) -> tuple[int, int]:
    index, crc = data.decode().split(":")
    return int(index), int(crc)


def hash_id(node_id: str) -> int:
    """A stable (not PYTHONHASHSEED-dependent) number for a node id."""
    return zlib.crc32(node_id.encode())
