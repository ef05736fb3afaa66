"""The storage interface the Raft core reads, and an in-memory implementation of it.

The core only ever *reads* storage (``LogStorage``); the application writes to it while handling a
``Ready`` (append entries, set the hard state, install snapshots) and compacts it after making snapshots.
``MemoryStorage`` mirrors etcd's ``MemoryStorage``: tests and simulations use one per node as that node's
durable state. ``dtf_app/raft/log.py`` is the durable, on-disk implementation of the same protocol.

Index conventions: entries live at ``[first_index(), last_index()]``; ``term(first_index() - 1)`` is the
term of the snapshot (or 0 for an empty log), so the core can always check the entry preceding the first
one it holds. The voter set at any index is learned from the noop/config entries stored (see
``dtf_app.raft.types.voters_from_entry``) or, below them, from the snapshot.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

from dtf_app.raft.types import Entry, HardState, Snapshot, voters_from_entry


@runtime_checkable
class LogStorage(Protocol):
    """The read side of a node's durable state, as the core uses it."""

    def initial_state(self) -> tuple[HardState, frozenset[str] | None]:
        """Persisted hard state and the voters of the latest config (entry or snapshot), if any."""
        ...

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``; ``lo >= first_index()`` and ``hi <= last_index() + 1``."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, for ``first_index() - 1 <= index <= last_index()``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot | None: ...


class EntryIndex(ABC):
    """The read side of ``LogStorage`` over entries held in memory after a compaction point.

    Shared by :class:`MemoryStorage` and the durable ``log.DurableStorage`` (which keeps the same
    in-memory view of what its files hold); subclasses set the attributes and ``_voters_at``.
    """

    _hard_state: HardState
    _snapshot: Snapshot | None
    _base_index: int
    _base_term: int
    _entries: list[Entry]

    @abstractmethod
    def _voters_at(self, index: int) -> frozenset[str] | None:
        """The voter set in force at ``index`` (from config/noop entries, else the compaction point)."""

    def initial_state(self) -> tuple[HardState, frozenset[str] | None]:
        """Persisted hard state and the voters of the latest config entry (or snapshot/compaction point)."""
        return self._hard_state, self._voters_at(self.last_index())

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``."""
        if lo <= self._base_index:
            raise IndexError(f"entries from {lo} were compacted (first index is {self.first_index()})")
        if hi > self.last_index() + 1:
            raise IndexError(f"entries up to {hi - 1} requested, last index is {self.last_index()}")
        off = self._base_index + 1
        return self._entries[lo - off : hi - off]

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, for ``first_index() - 1 <= index <= last_index()``."""
        if index == self._base_index:
            return self._base_term
        if index < self._base_index or index > self.last_index():
            raise IndexError(
                f"term of {index} unavailable: storage holds {self._base_index}..{self.last_index()}"
            )
        return self._entries[index - self._base_index - 1].term

    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._base_index + len(self._entries)

    def snapshot(self) -> Snapshot | None:
        return self._snapshot


class MemoryStorage(EntryIndex):
    """In-memory ``LogStorage`` with the write methods the application loop needs."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot: Snapshot | None = None
        # The compacted prefix ends at _base_index; its last entry's term and the voters in force there
        # are kept so term(first_index() - 1) and create_snapshot keep working after compaction.
        self._base_index = 0
        self._base_term = 0
        self._base_voters: frozenset[str] | None = None
        self._entries: list[Entry] = []

    # --- write side (the application's loop) --------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def append(self, entries: list[Entry]) -> None:
        """Append ``entries``; everything stored from ``entries[0].index`` on is replaced first."""
        if not entries:
            return
        first = entries[0].index
        if first > self.last_index() + 1:
            raise ValueError(f"gap: appending at {first} but last index is {self.last_index()}")
        if first <= self._base_index:
            # Already covered by the compacted prefix/snapshot: keep only the part after it.
            entries = entries[self._base_index + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        del self._entries[first - self._base_index - 1 :]
        self._entries.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log with ``snap`` (a received snapshot). Older snapshots are ignored."""
        if self._snapshot is not None and snap.index <= self._snapshot.index:
            return
        self._snapshot = snap
        self._base_index, self._base_term, self._base_voters = snap.index, snap.term, snap.voters
        self._entries = []
        if self._hard_state.commit < snap.index:
            self._hard_state = HardState(self._hard_state.term, self._hard_state.vote, snap.index)

    def create_snapshot(self, index: int, data: bytes) -> Snapshot:
        """Record the application's state ``data`` as of applied ``index`` and return the snapshot."""
        if self._snapshot is not None and index < self._snapshot.index:
            raise ValueError(f"snapshot at {index} is older than the stored one at {self._snapshot.index}")
        if index > self.last_index():
            raise ValueError(f"snapshot at {index} beyond last index {self.last_index()}")
        voters = self._voters_at(index)
        snap = Snapshot(index=index, term=self.term(index), voters=voters or frozenset(), data=data)
        self._snapshot = snap
        return snap

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (a snapshot should cover them); then ``first_index() == index+1``."""
        if index <= self._base_index:
            return
        if index > self.last_index():
            raise ValueError(f"cannot compact to {index}: last index is {self.last_index()}")
        voters = self._voters_at(index)
        term = self.term(index)
        del self._entries[: index - self._base_index]
        self._base_index, self._base_term, self._base_voters = index, term, voters

    # --- helpers ------------------------------------------------------------------------------------

    def _voters_at(self, index: int) -> frozenset[str] | None:
        # Scan back from index: each leader's noop carries the voter set, so this stops within a term.
        pos = min(index, self.last_index()) - self._base_index - 1
        while pos >= 0:
            voters = voters_from_entry(self._entries[pos])
            if voters is not None:
                return voters
            pos -= 1
        return self._base_voters
