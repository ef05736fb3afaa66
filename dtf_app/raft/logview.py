"""The core's view of its log: durable storage plus the unstable tail not yet persisted.

Like etcd's ``raftLog`` + ``unstable``: new entries (a leader's proposals, a follower's received appends)
and a received snapshot live here until the application has persisted them (``Ready`` then
``advance``). Entries from ``offset`` on shadow whatever storage holds at those indices, which is how a
conflicting suffix gets replaced: the application's ``append`` truncates storage from the first entry on.
"""

from __future__ import annotations

from dtf_app.raft.storage import LogStorage
from dtf_app.raft.types import Entry, Snapshot


class RaftLog:
    """Stable entries (storage) + unstable entries/snapshot, with commit and apply positions."""

    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        self.unstable_snapshot: Snapshot | None = None
        # Unstable entries up to this index (and the snapshot, if flagged) were handed out in a Ready.
        self.persisting_to = self.offset - 1
        self.snapshot_in_progress = False
        self.committed = storage.first_index() - 1
        # Highest index handed to the application (entries or snapshot). A restarted application's state
        # is the storage's snapshot, so entries are handed out again from just after it.
        snap = storage.snapshot()
        self.applied = snap.index if snap is not None else storage.first_index() - 1

    # --- positions ----------------------------------------------------------------------------------

    def first_index(self) -> int:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index
        return min(self.storage.last_index(), self.offset - 1)

    def term(self, index: int) -> int | None:
        """Term at ``index``, or None when it is compacted away or beyond the end."""
        if index == 0:
            return 0
        snap = self.unstable_snapshot
        if snap is not None and index <= snap.index:
            return snap.term if index == snap.index else None
        if index >= self.offset:
            pos = index - self.offset
            return self.unstable[pos].term if pos < len(self.unstable) else None
        if index < self.storage.first_index() - 1 or index > self.storage.last_index():
            return None
        return self.storage.term(index)

    def last_term(self) -> int:
        return self.term(self.last_index()) or 0

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Would a candidate with this last entry have a log at least as up to date as ours (§5.4.1)?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    # --- reading entries ----------------------------------------------------------------------------

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries in ``[lo, hi)``; ``lo`` must not be compacted."""
        if lo >= hi:
            return []
        out: list[Entry] = []
        if lo < self.offset:
            out = self.storage.entries(lo, min(hi, self.offset))
        if hi > self.offset:
            start = max(lo, self.offset) - self.offset
            out = out + self.unstable[start : hi - self.offset]
        return out

    def has_next_committed(self) -> bool:
        return self.committed > self.applied and self.applied + 1 >= self.first_index()

    def next_committed(self, max_count: int = 1 << 30) -> list[Entry]:
        if not self.has_next_committed():
            return []
        hi = min(self.committed, self.applied + max_count) + 1
        return self.entries(self.applied + 1, hi)

    def unpersisted(self) -> list[Entry]:
        """Unstable entries not yet handed out for persistence."""
        start = self.persisting_to + 1 - self.offset
        return self.unstable[max(start, 0) :]

    # --- changing the log ---------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> bool:
        """Add entries that follow on from or replace a suffix of the log. True if a suffix was cut."""
        if not entries:
            return False
        after = entries[0].index
        truncated = after <= self.last_index()
        if after == self.offset + len(self.unstable):
            self.unstable.extend(entries)
        elif after <= self.offset:
            # Replace (part of) the stable log too: storage is truncated when these are persisted.
            self.offset = after
            self.unstable = list(entries)
        else:
            del self.unstable[after - self.offset :]
            self.unstable.extend(entries)
        self.persisting_to = min(self.persisting_to, after - 1)
        return truncated

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or is new); 0 if all match."""
        for ent in entries:
            if self.term(ent.index) != ent.term:
                return ent.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= ``index`` whose term is <= ``term`` (etcd's fast back-off hint)."""
        floor = self.first_index() - 1
        while index > floor:
            t = self.term(index)
            if t is None or t <= term:
                break
            index -= 1
        return index

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index
            return True
        return False

    def restore(self, snap: Snapshot) -> None:
        """Adopt a received snapshot as the whole log."""
        self.committed = snap.index
        self.unstable = []
        self.offset = snap.index + 1
        self.persisting_to = snap.index
        self.unstable_snapshot = snap
        self.snapshot_in_progress = False

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` (with ``term``) are now durable in storage."""
        if index < self.offset or self.term(index) != term:
            return
        del self.unstable[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.unstable_snapshot is not None and self.unstable_snapshot.index == index:
            self.unstable_snapshot = None
            self.snapshot_in_progress = False
