"""The Raft consensus core: a sans-IO state machine in the style of etcd-io/raft.

Inputs are :meth:`RaftNode.tick` (one logical clock tick), :meth:`RaftNode.step` (a peer's message) and
the client calls (``propose``, ``propose_conf_change``, ``read_index``, ``transfer_leadership``,
``campaign``). Output is a :class:`Ready`: hard state and entries to persist, a received snapshot to
install, committed entries to apply, messages to send *after* persisting, and answered read barriers. The
application then calls :meth:`RaftNode.advance`. No sockets, clocks, threads or trio here; randomness
comes from the injected ``random.Random`` so simulations replay exactly.

Implemented (paper section / etcd feature): leader election (§5.2) with PreVote and CheckQuorum plus the
leader lease (thesis §9.6, §6.2); log replication with fast conflict back-off (§5.3, etcd's reject hint);
commit of current-term entries only, by counting (§5.4.2); a noop per new leader; flow control
(probe/replicate/snapshot states, ``max_entries_per_msg``, ``max_inflight_msgs``); snapshots and
InstallSnapshot (§7); leadership transfer (thesis §3.10); ReadIndex (thesis §6.4); single-server
membership changes (thesis §4.1: a config entry takes effect as soon as it is in the log; one pending
at a time; a new leader must commit its noop first).

Message economy: the commit index only travels in the next append or heartbeat; the leader does not
broadcast an extra round when its commit index moves. Proposals made between two ``ready()`` calls share
one append per follower, and a heartbeat is skipped for a follower that already got an append carrying
the current commit index in that heartbeat interval.

Handle Readys strictly in order (persist, send, apply, ``advance``): a Ready's messages may depend on
what an earlier Ready asked to persist.
"""

from __future__ import annotations

import random

from dtf_app.raft.logview import RaftLog
from dtf_app.raft.progress import Progress
from dtf_app.raft.readonly import ReadOnly
from dtf_app.raft.storage import LogStorage
from dtf_app.raft.types import (
    ConfChange,
    Entry,
    HardState,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    ReadState,
    Ready,
    Snapshot,
    encode_conf_change,
    encode_noop,
    voters_from_entry,
)

__all__ = [
    "ConfChange",
    "Entry",
    "HardState",
    "Message",
    "MessageType",
    "NotLeader",
    "ProposalDropped",
    "RaftConfig",
    "RaftNode",
    "ReadState",
    "Ready",
    "Snapshot",
]

MT = MessageType
TRANSFER_CONTEXT = b"transfer"
_VOTE_TYPES = (MT.PRE_VOTE, MT.VOTE)


class RaftNode:
    """One Raft peer. See the module docstring for the interaction protocol."""

    def __init__(self, config: RaftConfig, storage: LogStorage, rng: random.Random) -> None:
        if config.election_ticks <= config.heartbeat_ticks:
            raise ValueError("election_ticks must be greater than heartbeat_ticks")
        self.config = config
        self._id = config.node_id
        self._rng = rng
        # False for a node an operator disabled: it votes and replicates but never starts an election
        # (a leadership transfer to it still works, as TimeoutNow is an explicit request).
        self.can_campaign = True
        self._log = RaftLog(storage)
        hs, stored_voters = storage.initial_state()
        self._voters: frozenset[str] = stored_voters or frozenset(config.peers)
        self._term = hs.term
        self._vote = hs.vote
        snap = storage.snapshot()
        self._log.committed = max(hs.commit, self._log.committed, snap.index if snap else 0)
        self._prev_hs = HardState(hs.term, hs.vote, self._log.committed)
        self._role = "follower"
        self._lead: str | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, Progress] = {}
        self._lead_transferee: str | None = None
        self._pending_conf_index = 0
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._reads = ReadOnly()
        self._append_pending = False
        self._reset(self._term)

    # --- read-only properties -----------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> str | None:
        return self._vote

    @property
    def role(self) -> str:
        return self._role

    @property
    def leader_id(self) -> str | None:
        return self._lead

    @property
    def hears_leader(self) -> bool:
        """True while another node leads and has been heard from within an election timeout."""
        return (self._lead is not None and self._lead != self._id
                and self._election_elapsed < self.config.election_ticks)

    @property
    def commit_index(self) -> int:
        return self._log.committed

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def voters(self) -> frozenset[str]:
        return self._voters

    @property
    def pending_conf_index(self) -> int:
        """Index of the newest config entry this leader appended (a change is pending while above commit)."""
        return self._pending_conf_index

    @property
    def lead_transferee(self) -> str | None:
        return self._lead_transferee

    def progress(self, node_id: str) -> Progress | None:
        """The leader's replication state for ``node_id`` (None elsewhere); for tests and status."""
        return self._progress.get(node_id)

    def log_term(self, index: int) -> int | None:
        """Term of the entry at ``index`` in this node's (stable + unstable) log, None if absent."""
        return self._log.term(index)

    # --- client API ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        self._election_elapsed += 1
        if self._role == "leader":
            self._tick_leader()
        elif self._election_elapsed >= self._randomized_timeout:
            if self._promotable() and self.can_campaign:
                self._election_elapsed = 0
                self._start_campaign(transfer=False)
            elif self._role != "follower":
                # Removed or disabled while campaigning: the election it started is over for it.
                self._become_follower(self._term, None)

    def campaign(self) -> None:
        """Start an election now (with a pre-vote round when configured)."""
        if self._role != "leader" and self._promotable() and self.can_campaign:
            self._start_campaign(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a normal entry; returns its index. Leader only."""
        self._check_can_propose()
        return self._append_local("normal", data)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose adding or removing one voter. Raises ProposalDropped while another is pending."""
        self._check_can_propose()
        if change.op not in ("add", "remove"):
            raise ValueError(f"conf change op must be 'add' or 'remove', not {change.op!r}")
        if self._pending_conf_index > self._log.committed:
            raise ProposalDropped("a configuration change is still pending")
        if change.op == "add":
            if change.node_id in self._voters:
                raise ProposalDropped(f"{change.node_id} is already a voter")
            after = self._voters | {change.node_id}
        else:
            if change.node_id not in self._voters:
                raise ProposalDropped(f"{change.node_id} is not a voter")
            if len(self._voters) == 1:
                raise ProposalDropped("cannot remove the last voter")
            after = self._voters - {change.node_id}
        index = self._append_local("config", encode_conf_change(change, after))
        self._pending_conf_index = index
        return index

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to ``to``; aborted if not done within election_ticks."""
        if self._role == "leader":
            self._start_transfer(to)
        elif self._lead is not None:
            self._send(MT.TRANSFER_LEADER, self._lead, context=to.encode())

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read barrier; the answer arrives in ``Ready.read_states``."""
        if self._role == "leader":
            self._leader_read(ctx, self._id)
        elif self._lead is not None:
            self._send(MT.READ_INDEX, self._lead, context=ctx)
        else:
            raise NotLeader(None)

    # --- Ready protocol -----------------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._log.committed)

    def has_ready(self) -> bool:
        log = self._log
        return bool(
            self._msgs
            or self._append_pending
            or self._read_states
            or self._hard_state() != self._prev_hs
            or (log.unstable_snapshot is not None and not log.snapshot_in_progress)
            or (log.unstable and log.unstable[-1].index > log.persisting_to)
            or log.has_next_committed()
        )

    def ready(self) -> Ready:
        """Collect what to persist, send and apply. Call :meth:`advance` after handling it."""
        if self._append_pending:
            self._flush_appends()
        log = self._log
        hs = self._hard_state()
        hs_out = hs if hs != self._prev_hs else None
        snap = None
        if log.unstable_snapshot is not None and not log.snapshot_in_progress:
            snap = log.unstable_snapshot
            log.snapshot_in_progress = True
            log.applied = max(log.applied, snap.index)
        entries = log.unpersisted()
        if entries:
            log.persisting_to = entries[-1].index
        committed = log.next_committed()
        if committed:
            log.applied = committed[-1].index
        must_sync = bool(entries) or hs.term != self._prev_hs.term or hs.vote != self._prev_hs.vote
        rd = Ready(
            hard_state=hs_out,
            entries=entries,
            snapshot=snap,
            committed_entries=committed,
            messages=self._msgs,
            read_states=self._read_states,
            must_sync=must_sync or snap is not None,
        )
        self._prev_hs = hs
        self._msgs = []
        self._read_states = []
        return rd

    def advance(self, rd: Ready) -> None:
        """The application persisted, sent and applied ``rd``."""
        if rd.snapshot is not None:
            self._log.stable_snapshot_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self._log.stable_to(last.index, last.term)

    # --- stepping messages --------------------------------------------------------------------------

    def step(self, msg: Message) -> None:
        """Handle a message from a peer; stale or unexpected ones are ignored."""
        if msg.dst != self._id:
            return
        if msg.term > self._term:
            if msg.type in _VOTE_TYPES:
                forced = msg.context == TRANSFER_CONTEXT
                in_lease = (
                    self.config.check_quorum
                    and self._lead is not None
                    and self._election_elapsed < self.config.election_ticks
                )
                if in_lease and not forced:
                    # Leader lease: we heard from a live leader recently, so this candidate is likely
                    # a disrupted or removed node; do not let it bump our term.
                    return
            if msg.type == MT.PRE_VOTE or (msg.type == MT.PRE_VOTE_RESP and not msg.reject):
                # A pre-vote never changes terms; a granted pre-vote reply carries the future term.
                pass
            elif msg.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(msg.term, msg.src)
            else:
                self._become_follower(msg.term, None)
        elif msg.term < self._term:
            if msg.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                # A stale leader (e.g. partitioned away): reject with our term so it steps down (§5.1).
                self._send(MT.APPEND_RESP, msg.src)
            elif msg.type == MT.PRE_VOTE:
                self._send(MT.PRE_VOTE_RESP, msg.src, reject=True)
            return

        if msg.type in _VOTE_TYPES:
            self._handle_vote_request(msg)
            return
        if self._role == "leader":
            self._step_leader(msg)
        elif self._role in ("candidate", "pre_candidate"):
            self._step_candidate(msg)
        else:
            self._step_follower(msg)

    def _handle_vote_request(self, msg: Message) -> None:
        resp = MT.PRE_VOTE_RESP if msg.type == MT.PRE_VOTE else MT.VOTE_RESP
        can_vote = (
            self._vote == msg.src
            or (self._vote is None and self._lead is None)
            or (msg.type == MT.PRE_VOTE and msg.term > self._term)
        )
        if can_vote and self._log.is_up_to_date(msg.index, msg.log_term):
            # Reply in the candidate's term so a granted pre-vote is counted by the pre-candidate.
            self._msgs.append(Message(resp, self._id, msg.src, msg.term))
            if msg.type == MT.VOTE:
                self._election_elapsed = 0
                self._vote = msg.src
        else:
            self._send(resp, msg.src, reject=True)

    def _step_follower(self, msg: Message) -> None:
        t = msg.type
        if t == MT.APPEND:
            self._election_elapsed = 0
            self._lead = msg.src
            self._handle_append(msg)
        elif t == MT.HEARTBEAT:
            self._election_elapsed = 0
            self._lead = msg.src
            self._log.commit_to(min(msg.commit, self._log.last_index()))
            self._send(MT.HEARTBEAT_RESP, msg.src, context=msg.context)
        elif t == MT.SNAPSHOT:
            self._election_elapsed = 0
            self._lead = msg.src
            self._handle_snapshot(msg)
        elif t == MT.TIMEOUT_NOW:
            if self._promotable():
                self._start_campaign(transfer=True)
        elif t == MT.READ_INDEX_RESP:
            self._read_states.append(ReadState(msg.index, msg.context))
        # READ_INDEX / TRANSFER_LEADER sent to a node that is no longer leader are dropped: the
        # requester retries against the leader it learns about next.

    def _step_candidate(self, msg: Message) -> None:
        t = msg.type
        if t in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            # Someone won this term.
            self._become_follower(msg.term, msg.src)
            self._step_follower(msg)
        elif (t == MT.PRE_VOTE_RESP and self._role == "pre_candidate") or (
            t == MT.VOTE_RESP and self._role == "candidate"
        ):
            self._votes.setdefault(msg.src, not msg.reject)
            granted, rejected = self._tally()
            if granted:
                if self._role == "pre_candidate":
                    self._campaign_for_real(transfer=False)
                else:
                    self._become_leader()
            elif rejected:
                self._become_follower(self._term, None)

    # --- follower mechanics -------------------------------------------------------------------------

    def _handle_append(self, msg: Message) -> None:
        log = self._log
        if msg.index < log.committed:
            self._send(MT.APPEND_RESP, msg.src, index=log.committed)
            return
        if log.match_term(msg.index, msg.log_term):
            entries = msg.entries
            conflict = log.find_conflict(entries)
            if conflict:
                if conflict <= log.committed:
                    raise AssertionError(f"entry {conflict} conflicts with committed entry")
                new = list(entries[conflict - msg.index - 1 :])
                truncated = log.append(new)
                self._update_voters_after_append(new, truncated)
            last_new = msg.index + len(entries)
            log.commit_to(min(msg.commit, last_new))
            self._send(MT.APPEND_RESP, msg.src, index=last_new)
            return
        # Reject with a hint: the last index at or below msg.index whose term is <= msg.log_term. The
        # leader can skip every entry after it in one round trip (etcd's findConflictByTerm).
        hint = log.find_conflict_by_term(min(msg.index, log.last_index()), msg.log_term)
        self._send(
            MT.APPEND_RESP,
            msg.src,
            index=msg.index,
            reject=True,
            reject_hint=hint,
            log_term=log.term(hint) or 0,
        )

    def _handle_snapshot(self, msg: Message) -> None:
        snap = msg.snapshot
        log = self._log
        if snap is None:
            return
        if snap.index <= log.committed:
            self._send(MT.APPEND_RESP, msg.src, index=log.committed)
            return
        if log.match_term(snap.index, snap.term):
            # We already hold the snapshot's last entry: just fast-forward the commit index. Only that
            # much is known to match the leader (our later entries may be from another term).
            log.commit_to(snap.index)
            self._send(MT.APPEND_RESP, msg.src, index=snap.index)
            return
        log.restore(snap)
        self._voters = snap.voters
        self._send(MT.APPEND_RESP, msg.src, index=snap.index)

    # --- leader mechanics ---------------------------------------------------------------------------

    def _tick_leader(self) -> None:
        cfg = self.config
        self._heartbeat_elapsed += 1
        if self._election_elapsed >= cfg.election_ticks:
            self._election_elapsed = 0
            if cfg.check_quorum and not self._quorum_recently_active():
                # CheckQuorum: we cannot hear from a majority, so our lease is gone.
                self._become_follower(self._term, None)
                return
            if self._lead_transferee is not None:
                # The transfer did not finish within election_ticks: give up and serve again.
                self._lead_transferee = None
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat(b"")

    def _quorum_recently_active(self) -> bool:
        active = 0
        for vid in self._voters:
            pr = self._progress.get(vid)
            if vid == self._id or (pr is not None and pr.recent_active):
                active += 1
            if pr is not None and vid != self._id:
                pr.recent_active = False
        return active >= len(self._voters) // 2 + 1

    def _broadcast_heartbeat(self, ctx: bytes) -> None:
        committed = self._log.committed
        for pid, pr in self._progress.items():
            if pid == self._id:
                continue
            if pr.state == "snapshot":
                # The snapshot (or its answer) may have been lost: retry after an election timeout.
                pr.snapshot_wait += 1
                if pr.snapshot_wait > self.config.election_ticks:
                    pr.become_probe()
            commit = min(pr.match, committed)
            if not ctx and pr.sent_since_heartbeat and pr.commit_sent >= commit:
                # An append reached for this follower during this interval already reset its election
                # timer and carried the commit index it can use: a heartbeat would add nothing.
                pr.sent_since_heartbeat = False
                continue
            pr.sent_since_heartbeat = False
            pr.commit_sent = max(pr.commit_sent, commit)
            self._send(MT.HEARTBEAT, pid, commit=commit, context=ctx)

    def _step_leader(self, msg: Message) -> None:
        t = msg.type
        pr = self._progress.get(msg.src)
        if t == MT.READ_INDEX:
            self._leader_read(msg.context, msg.src)
            return
        if t == MT.TRANSFER_LEADER:
            self._start_transfer(msg.context.decode())
            return
        if pr is None:
            return
        pr.recent_active = True
        if t == MT.APPEND_RESP:
            self._handle_append_resp(msg, pr)
        elif t == MT.HEARTBEAT_RESP:
            self._handle_heartbeat_resp(msg, pr)

    def _handle_append_resp(self, msg: Message, pr: Progress) -> None:
        if msg.reject:
            hint = msg.reject_hint
            if msg.log_term > 0:
                hint = self._log.find_conflict_by_term(hint, msg.log_term)
            if pr.maybe_decrease_to(msg.index, hint):
                if pr.state == "replicate":
                    pr.become_probe()
                self._send_append(msg.src)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(msg.index):
            return
        if pr.state == "probe":
            pr.become_replicate()
        elif pr.state == "snapshot" and pr.match + 1 >= self._log.first_index():
            # Caught up far enough (by the snapshot or otherwise) that entries can take over.
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == "replicate":
            pr.free_inflights_to(msg.index)
        if self._maybe_commit():
            self._after_commit()
            if self._role != "leader":
                return
        elif was_paused:
            self._send_append(msg.src)
        while self._send_append(msg.src, send_if_empty=False):
            pass
        if msg.src == self._lead_transferee and pr.match == self._log.last_index():
            self._send(MT.TIMEOUT_NOW, msg.src)

    def _handle_heartbeat_resp(self, msg: Message, pr: Progress) -> None:
        last = self._log.last_index()
        if pr.state == "probe":
            pr.paused = False
            if pr.match < last:
                self._send_append(msg.src)
        elif pr.state == "replicate":
            # An append lost on the way leaves data unacknowledged forever in replicate state; two
            # heartbeat rounds without progress mean we go back to probing from the known match.
            if pr.match < pr.next - 1 and pr.match == pr.match_at_last_heartbeat:
                pr.stall_rounds += 1
                if pr.stall_rounds >= 2:
                    pr.become_probe()
                    self._send_append(msg.src)
            else:
                pr.stall_rounds = 0
            pr.match_at_last_heartbeat = pr.match
        if msg.context:
            for req in self._reads.ack(msg.src, msg.context, self._voters):
                self._answer_read(req.index, req.ctx, req.origin)

    def _send_append(self, to: str, send_if_empty: bool = True) -> bool:
        """Send the next append (or the snapshot) to ``to`` if flow control allows. True if sent."""
        pr = self._progress[to]
        if pr.is_paused():
            return False
        log = self._log
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None or prev < log.first_index() - 1:
            return self._send_snapshot(to, pr)
        last = log.last_index()
        entries: list[Entry] = []
        if pr.next <= last:
            entries = log.entries(pr.next, min(last + 1, pr.next + self.config.max_entries_per_msg))
        if not entries and not send_if_empty:
            return False
        self._msgs.append(
            Message(
                MT.APPEND,
                self._id,
                to,
                self._term,
                log_term=prev_term,
                index=prev,
                entries=tuple(entries),
                commit=log.committed,
            )
        )
        pr.sent_entries(entries[-1].index if entries else None)
        pr.commit_sent = log.committed
        pr.sent_since_heartbeat = True
        return True

    def _send_snapshot(self, to: str, pr: Progress) -> bool:
        snap = self._log.storage.snapshot()
        if snap is None or snap.index < self._log.first_index() - 1:
            # The application compacted without a snapshot covering the gap; wait for one.
            return False
        self._msgs.append(Message(MT.SNAPSHOT, self._id, to, self._term, snapshot=snap))
        pr.become_snapshot(snap.index)
        return True

    def _maybe_commit(self) -> bool:
        """Advance the commit index to the highest entry of this term stored on a majority (§5.4.2)."""
        matches = sorted(
            (self._log.last_index() if vid == self._id else self._progress[vid].match)
            for vid in self._voters
            if vid in self._progress
        )
        quorum = len(self._voters) // 2 + 1
        if len(matches) < quorum:
            return False
        candidate = matches[len(matches) - quorum]
        if candidate > self._log.committed and self._log.term(candidate) == self._term:
            return self._log.commit_to(candidate)
        return False

    def _after_commit(self) -> None:
        """Things that wait for the commit index: deferred reads, and a removed leader stepping down."""
        if self._reads.deferred and self._committed_in_term():
            for ctx, origin in self._reads.take_deferred():
                self._leader_read(ctx, origin)
        if self._id not in self._voters and self._log.committed >= self._pending_conf_index:
            # We were removed and that is now committed: hand over quickly, then stop leading.
            best = max(
                (vid for vid in self._voters if vid in self._progress),
                key=lambda vid: self._progress[vid].match,
                default=None,
            )
            if best is not None and self._progress[best].match == self._log.last_index():
                self._send(MT.TIMEOUT_NOW, best)
            self._become_follower(self._term, None)

    def _committed_in_term(self) -> bool:
        return self._log.term(self._log.committed) == self._term

    def _check_can_propose(self) -> None:
        if self._role != "leader":
            raise NotLeader(self._lead)
        if self._lead_transferee is not None:
            raise ProposalDropped(f"leadership transfer to {self._lead_transferee} in progress")
        if self._id not in self._voters:
            raise ProposalDropped("this leader is being removed from the cluster")

    def _append_local(self, kind: str, data: bytes) -> int:
        index = self._log.last_index() + 1
        entry = Entry(self._term, index, kind, data)  # type: ignore[arg-type]
        self._log.append([entry])
        self._update_voters_after_append([entry], truncated=False)
        if len(self._voters) == 1 and self._id in self._voters:
            if self._maybe_commit():
                self._after_commit()
        # Batching: appends go out when the application next collects a Ready, so every proposal made
        # until then shares one message per follower (within flow-control limits).
        self._append_pending = True
        return index

    def _flush_appends(self) -> None:
        self._append_pending = False
        if self._role != "leader":
            return
        for pid in list(self._progress):
            if pid != self._id:
                while self._send_append(pid, send_if_empty=False):
                    pass

    # --- ReadIndex ----------------------------------------------------------------------------------

    def _leader_read(self, ctx: bytes, origin: str) -> None:
        if not self._committed_in_term():
            # A new leader does not know the latest commit index until its noop commits: defer.
            self._reads.defer(ctx, origin)
        elif self._voters == {self._id}:
            self._answer_read(self._log.committed, ctx, origin)
        else:
            self._broadcast_heartbeat(self._reads.add(self._log.committed, ctx, origin, self._id))

    def _answer_read(self, index: int, ctx: bytes, origin: str) -> None:
        if origin == self._id:
            self._read_states.append(ReadState(index, ctx))
        else:
            self._send(MT.READ_INDEX_RESP, origin, index=index, context=ctx)

    # --- leadership transfer ------------------------------------------------------------------------

    def _start_transfer(self, to: str) -> None:
        if to == self._id or to not in self._voters or self._lead_transferee == to:
            return
        self._lead_transferee = to
        # The transfer must finish within one election timeout; the leader tick aborts it after that.
        self._election_elapsed = 0
        if self._progress[to].match == self._log.last_index():
            self._send(MT.TIMEOUT_NOW, to)
        else:
            self._send_append(to)

    # --- roles --------------------------------------------------------------------------------------

    def _promotable(self) -> bool:
        return self._id in self._voters

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = None
        self._lead = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        et = self.config.election_ticks
        self._randomized_timeout = self._rng.randrange(et, 2 * et)
        self._votes = {}
        self._progress = {}
        self._lead_transferee = None
        self._reads.reset()

    def _become_follower(self, term: int, lead: str | None) -> None:
        self._reset(term)
        self._role = "follower"
        self._lead = lead

    def _start_campaign(self, transfer: bool) -> None:
        if self.config.pre_vote and not transfer:
            self._reset(self._term)
            self._role = "pre_candidate"
            self._request_votes(MT.PRE_VOTE, self._term + 1, b"")
        else:
            self._campaign_for_real(transfer)

    def _campaign_for_real(self, transfer: bool) -> None:
        self._reset(self._term + 1)
        self._role = "candidate"
        self._vote = self._id
        self._request_votes(MT.VOTE, self._term, TRANSFER_CONTEXT if transfer else b"")

    def _request_votes(self, mtype: MessageType, term: int, ctx: bytes) -> None:
        self._votes = {self._id: True}
        granted, _ = self._tally()
        if granted:
            if mtype == MT.PRE_VOTE:
                self._campaign_for_real(transfer=False)
            else:
                self._become_leader()
            return
        last_index, last_term = self._log.last_index(), self._log.last_term()
        for vid in sorted(self._voters):
            if vid != self._id:
                self._msgs.append(
                    Message(mtype, self._id, vid, term, log_term=last_term, index=last_index, context=ctx)
                )

    def _tally(self) -> tuple[bool, bool]:
        quorum = len(self._voters) // 2 + 1
        yes = sum(1 for vid, v in self._votes.items() if v and vid in self._voters)
        no = sum(1 for vid, v in self._votes.items() if not v and vid in self._voters)
        return yes >= quorum, no >= quorum

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._role = "leader"
        self._lead = self._id
        self._init_progress()
        # Any config entry in our log may be uncommitted; no new change until our noop commits.
        self._pending_conf_index = self._log.last_index() + 1
        self._append_local("noop", encode_noop(self._voters))

    def _init_progress(self) -> None:
        nxt = self._log.last_index() + 1
        # Sorted so that message order (and so a seeded simulation) does not depend on set hashing.
        for vid in sorted(self._voters):
            if vid not in self._progress:
                pr = Progress(nxt, self.config.max_inflight_msgs)
                # A peer we just started tracking counts as active until the next CheckQuorum round.
                pr.recent_active = True
                self._progress[vid] = pr
        for vid in list(self._progress):
            if vid not in self._voters:
                del self._progress[vid]
        if self._id in self._progress:
            self._progress[self._id].match = nxt - 1

    def _update_voters_after_append(self, entries: list[Entry], truncated: bool) -> None:
        """A config (or noop) entry takes effect as soon as it is in the log, committed or not."""
        new_voters = None
        for ent in reversed(entries):
            if ent.kind != "normal":
                new_voters = voters_from_entry(ent)
                if new_voters is not None:
                    break
        if new_voters is None and truncated:
            new_voters = self._voters_from_log()
        if new_voters is not None and new_voters != self._voters:
            self._voters = new_voters
            if self._role == "leader":
                self._init_progress()

    def _voters_from_log(self) -> frozenset[str]:
        log = self._log
        index = log.last_index()
        floor = log.first_index()
        while index >= floor:
            ent = log.entries(index, index + 1)[0]
            voters = voters_from_entry(ent)
            if voters is not None:
                return voters
            index -= 1
        snap = log.unstable_snapshot or log.storage.snapshot()
        if snap is not None:
            return snap.voters
        # No configuration left in the log: back to the one this node was started with.
        return frozenset(self.config.peers)

    def _send(self, mtype: MessageType, to: str, **fields: object) -> None:
        self._msgs.append(Message(mtype, self._id, to, self._term, **fields))  # type: ignore[arg-type]
