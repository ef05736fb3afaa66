"""A leader's view of each follower's replication: match/next indices and flow control.

Modelled on etcd's ``tracker/progress.go``. A follower is in one of three states:

* ``probe``: we do not know where its log ends; send one append per heartbeat round and wait for the
  answer (``paused``), backing ``next`` off on rejection using the follower's conflict hint.
* ``replicate``: its log is known to match; stream appends optimistically, limited by ``inflights``.
* ``snapshot``: its next entry was compacted away; a snapshot is in flight, send nothing else until it is
  acknowledged (or the wait times out, because the network may lose the snapshot).
"""

from __future__ import annotations

from collections import deque
from typing import Literal

ProgressState = Literal["probe", "replicate", "snapshot"]


class Progress:
    """Replication state of one follower, kept by the leader."""

    __slots__ = (
        "match",
        "next",
        "state",
        "paused",
        "pending_snapshot",
        "snapshot_wait",
        "inflights",
        "max_inflight",
        "recent_active",
        "stall_rounds",
        "match_at_last_heartbeat",
        "commit_sent",
        "sent_since_heartbeat",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state: ProgressState = "probe"
        self.paused = False
        self.pending_snapshot = 0
        self.snapshot_wait = 0
        # Last index of each append in flight (replicate state), oldest first.
        self.inflights: deque[int] = deque()
        self.max_inflight = max_inflight
        # Heard from since the last CheckQuorum round.
        self.recent_active = False
        # Heartbeat rounds in which replicate-state data stayed unacknowledged (a lost append).
        self.stall_rounds = 0
        self.match_at_last_heartbeat = 0
        # The commit index our last message carried, and whether an append went out since the last
        # heartbeat round: such a follower needs no heartbeat unless its commit index is behind.
        self.commit_sent = 0
        self.sent_since_heartbeat = False

    def __repr__(self) -> str:
        return f"Progress({self.state} match={self.match} next={self.next} inflight={len(self.inflights)})"

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.paused = False
        self.pending_snapshot = 0
        self.snapshot_wait = 0
        self.inflights.clear()
        self.stall_rounds = 0

    def become_probe(self) -> None:
        if self.state == "snapshot":
            # Resume after the snapshot even if the follower did not confirm it.
            pending = self.pending_snapshot
            self._reset("probe")
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset("probe")
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset("replicate")
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset("snapshot")
        self.pending_snapshot = snapshot_index

    def is_paused(self) -> bool:
        if self.state == "probe":
            return self.paused
        if self.state == "replicate":
            return len(self.inflights) >= self.max_inflight
        return True

    def sent_entries(self, last_index: int | None) -> None:
        """Record an append that carried entries up to ``last_index`` (None: no entries)."""
        if self.state == "replicate":
            if last_index is not None:
                self.next = last_index + 1
                self.inflights.append(last_index)
        elif self.state == "probe":
            self.paused = True

    def maybe_update(self, index: int) -> bool:
        """The follower's log matches up to ``index``; False if that is old news."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.paused = False
        self.next = max(self.next, index + 1)
        return updated

    def free_inflights_to(self, index: int) -> None:
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append at ``rejected``; back ``next`` off. False if stale."""
        if self.state == "replicate":
            if rejected <= self.match:
                return False
            # Replicating optimistically went wrong: restart from the known match.
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.paused = False
        return True
