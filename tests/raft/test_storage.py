"""MemoryStorage: append with truncation, compaction, snapshots and the voters it learns from entries."""

from __future__ import annotations

import pytest

from dtf_app.raft.storage import LogStorage, MemoryStorage
from dtf_app.raft.types import (
    ConfChange,
    Entry,
    HardState,
    Snapshot,
    conf_change_from_entry,
    encode_conf_change,
    encode_noop,
    voters_from_entry,
)


def log(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + i, "normal", f"{start + i}".encode()) for i, t in enumerate(terms)]


def test_is_a_log_storage() -> None:
    assert isinstance(MemoryStorage(), LogStorage)


def test_empty_storage() -> None:
    st = MemoryStorage()
    assert (st.first_index(), st.last_index(), st.term(0), st.snapshot()) == (1, 0, 0, None)
    assert st.initial_state() == (HardState(0, None, 0), None)


def test_append_truncates_a_conflicting_suffix_first() -> None:
    st = MemoryStorage()
    st.append(log(1, 1, 2, 2))
    st.append(log(3, start=3))
    assert [st.term(i) for i in range(1, st.last_index() + 1)] == [1, 1, 3]
    st.append(log(3, 3, start=4))
    assert st.last_index() == 5
    with pytest.raises(ValueError):
        st.append(log(3, start=9))


def test_compact_and_first_index() -> None:
    st = MemoryStorage()
    st.append(log(1, 1, 2, 2, 3))
    st.compact(3)
    assert st.first_index() == 4 and st.last_index() == 5
    assert st.term(3) == 2
    assert [e.index for e in st.entries(4, 6)] == [4, 5]
    with pytest.raises(IndexError):
        st.entries(3, 5)
    with pytest.raises(IndexError):
        st.term(2)
    # Appending over the compacted prefix keeps only the new part.
    st.append(log(2, 2, 4, start=3))
    assert (st.first_index(), st.last_index(), st.term(5)) == (4, 5, 4)


def test_create_snapshot_computes_term_and_voters_at_the_index() -> None:
    st = MemoryStorage()
    st.append(
        [
            Entry(1, 1, "noop", encode_noop({"a", "b", "c"})),
            Entry(1, 2, "normal", b"x"),
            Entry(1, 3, "config", encode_conf_change(ConfChange("add", "d"), {"a", "b", "c", "d"})),
            Entry(2, 4, "normal", b"y"),
        ]
    )
    snap = st.create_snapshot(2, b"state@2")
    assert snap == Snapshot(2, 1, frozenset("abc"), b"state@2")
    assert st.snapshot() == snap
    snap = st.create_snapshot(4, b"state@4")
    assert (snap.term, snap.voters) == (2, frozenset("abcd"))
    st.compact(4)
    assert st.first_index() == 5 and st.initial_state()[1] == frozenset("abcd")
    with pytest.raises(ValueError):
        st.create_snapshot(3, b"older")


def test_initial_state_reports_the_latest_config_even_uncommitted() -> None:
    st = MemoryStorage()
    st.append([Entry(1, 1, "noop", encode_noop({"a", "b", "c"}))])
    st.append([Entry(1, 2, "config", encode_conf_change(ConfChange("remove", "c"), {"a", "b"}))])
    st.set_hard_state(HardState(1, "a", 1))
    assert st.initial_state() == (HardState(1, "a", 1), frozenset({"a", "b"}))
    # Truncating the config entry away brings the previous configuration back.
    st.append([Entry(2, 2, "normal", b"z")])
    assert st.initial_state()[1] == frozenset("abc")


def test_apply_snapshot_replaces_the_log() -> None:
    st = MemoryStorage()
    st.append(log(1, 1, 1))
    snap = Snapshot(10, 4, frozenset("xyz"), b"bytes")
    st.apply_snapshot(snap)
    assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 4)
    assert st.snapshot() == snap
    assert st.initial_state()[1] == frozenset("xyz")
    assert st.hard_state.commit == 10
    st.apply_snapshot(Snapshot(5, 2, frozenset("a"), b"older"))
    assert st.snapshot() == snap


def test_voters_from_entry_encoding() -> None:
    cfg = Entry(3, 7, "config", encode_conf_change(ConfChange("remove", "b"), {"a", "c"}))
    assert voters_from_entry(cfg) == {"a", "c"}
    assert conf_change_from_entry(cfg) == ConfChange("remove", "b")
    assert voters_from_entry(Entry(3, 8, "noop", encode_noop({"a"}))) == {"a"}
    assert voters_from_entry(Entry(3, 9, "normal", b'{"voters": ["x"]}')) is None
    assert voters_from_entry(Entry(3, 10, "noop", b"")) is None
