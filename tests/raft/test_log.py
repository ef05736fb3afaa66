"""Tests for the durable Raft log (dtf_app/raft/log.py): persistence, torn tails, snapshots, equivalence.

Crash safety is tested two ways: by damaging the files the way a crash or a bad disk would (truncation at
every byte of the last record, flipped bytes, leftover temp files, half-finished checkpoints and snapshot
installs) and with a real child process killed by SIGKILL in the middle of appending.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dtf_app.raft import log as raftlog
from dtf_app.raft.log import (
    DurableStorage,
    FileLogStorage,
    LogCorruptionError,
    StorageClosedError,
    StorageLockedError,
)
from dtf_app.raft.storage import LogStorage, MemoryStorage
from dtf_app.raft.types import ConfChange, Entry, HardState, Snapshot, encode_conf_change, encode_noop
from tests.raft.helpers import pump_instant

REPO_ROOT = Path(__file__).resolve().parents[2]


def normal(term: int, index: int, data: bytes | None = None) -> Entry:
    return Entry(term=term, index=index, kind="normal", data=data if data is not None else b"e%d" % index)


def noop(term: int, index: int, voters: set[str]) -> Entry:
    return Entry(term=term, index=index, kind="noop", data=encode_noop(voters))


def config(term: int, index: int, op: str, node: str, voters_after: set[str]) -> Entry:
    data = encode_conf_change(ConfChange(op=op, node_id=node), voters_after)  # type: ignore[arg-type]
    return Entry(term=term, index=index, kind="config", data=data)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def state_of(s: DurableStorage | MemoryStorage) -> tuple:
    """Everything the read side exposes, for comparisons."""
    first, last = s.first_index(), s.last_index()
    terms = [s.term(i) for i in range(first - 1, last + 1)]
    return s.initial_state(), first, last, s.snapshot(), s.entries(first, last + 1), terms


def reopen(s: DurableStorage, **kwargs: int) -> DurableStorage:
    s.close()
    return DurableStorage(s.directory, **kwargs)


def test_satisfies_the_logstorage_protocol_and_alias(tmp_path: Path) -> None:
    with DurableStorage(tmp_path / "log") as s:
        assert isinstance(s, LogStorage)
        assert FileLogStorage is DurableStorage
        assert s.initial_state() == (HardState(), None)
        assert (s.first_index(), s.last_index(), s.term(0), s.snapshot()) == (1, 0, 0, None)
        assert s.entries(1, 1) == []


def test_round_trip_across_reopen(tmp_path: Path) -> None:
    s = DurableStorage(tmp_path / "log")
    entries = [noop(1, 1, {"a", "b", "c"})] + [normal(1, i, os.urandom(i % 50)) for i in range(2, 200)]
    s.append(entries[:50])
    s.append(entries[50:])
    s.set_hard_state(HardState(term=1, vote="a", commit=120))
    s.sync()
    before = state_of(s)
    s = reopen(s)
    assert state_of(s) == before
    assert s.entries(1, 200) == entries
    assert s.entries(10, 13) == entries[9:12]
    assert s.term(150) == 1
    with pytest.raises(IndexError):
        s.entries(1, 201)
    with pytest.raises(IndexError):
        s.term(200)
    s.close()


def test_append_truncates_a_conflicting_suffix_durably(tmp_path: Path) -> None:
    s = DurableStorage(tmp_path / "log")
    s.append([normal(1, i) for i in range(1, 11)])
    s.append([normal(2, 6, b"new6"), normal(2, 7, b"new7")])
    assert s.last_index() == 7
    assert [e.term for e in s.entries(1, 8)] == [1] * 5 + [2, 2]
    s.append([normal(2, 8)])
    s = reopen(s)
    assert s.last_index() == 8
    assert s.entries(6, 9) == [normal(2, 6, b"new6"), normal(2, 7, b"new7"), normal(2, 8)]
    # Replacing from the very first entry works too.
    s.append([normal(3, 1, b"x")])
    s = reopen(s)
    assert s.entries(1, 2) == [normal(3, 1, b"x")] and s.last_index() == 1
    with pytest.raises(ValueError, match="gap"):
        s.append([normal(3, 5)])
    with pytest.raises(ValueError, match="contiguous"):
        s.append([normal(3, 2), normal(3, 4)])
    assert s.last_index() == 1
    s.close()


def test_hard_state_is_durable_with_and_without_vote(tmp_path: Path) -> None:
    s = DurableStorage(tmp_path / "log")
    for hs in [HardState(1, None, 0), HardState(2, "nödé-ß", 0), HardState(2, "nödé-ß", 0)]:
        s.set_hard_state(hs)
        s.sync()
        s = reopen(s)
        assert s.initial_state()[0] == hs
    s.set_hard_state(HardState(7, None, 0))
    s = reopen(s)
    assert s.hard_state == HardState(7, None, 0)
    s.close()


def test_sync_is_one_fsync_for_many_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = DurableStorage(tmp_path / "log")
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(raftlog.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    for i in range(1, 101):
        s.append([normal(1, i)])
        s.set_hard_state(HardState(1, "a", i))
    s.sync()
    assert len(calls) == 1
    s.sync()  # nothing new written: no fsync at all
    assert len(calls) == 1
    s.close()


def _build_then_last_write(directory: Path, last_write: str) -> tuple[tuple, int, int]:
    """A synced log, then one more record; returns (state before it, segment size before, after)."""
    s = DurableStorage(directory)
    s.append([noop(1, 1, {"a", "b"})] + [normal(1, i) for i in range(2, 20)])
    s.set_hard_state(HardState(1, "a", 10))
    s.sync()
    before = state_of(s)
    seg = segments(directory)[-1]
    size_before = seg.stat().st_size
    if last_write == "entries":
        s.append([normal(1, 20, b"last entry payload" * 3), normal(2, 21, b"")])
    elif last_write == "truncate+entries":
        s.append([normal(2, 15, b"replacement")])
    else:
        s.set_hard_state(HardState(2, "b", 12))
    s.close()
    return before, size_before, seg.stat().st_size


@pytest.mark.parametrize("last_write", ["entries", "truncate+entries", "hard_state"])
def test_torn_tail_at_every_offset_reopens_to_the_last_good_record(tmp_path: Path, last_write: str) -> None:
    template = tmp_path / "template"
    before, size_before, size_after = _build_then_last_write(template, last_write)
    assert size_after > size_before
    for cut in range(size_before, size_after):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(template, work)
        os.truncate(segments(work)[-1], cut)
        with DurableStorage(work) as s:
            assert state_of(s) == before, f"cut at {cut}"
        # The torn bytes are gone for good: the log is clean and appendable after reopening.
        assert segments(work)[-1].stat().st_size == size_before
        with DurableStorage(work) as s:
            s.append([normal(5, s.last_index() + 1)])
        with DurableStorage(work) as s:
            assert s.term(s.last_index()) == 5
        shutil.rmtree(work)


@pytest.mark.parametrize("last_write", ["entries", "truncate+entries", "hard_state"])
def test_flipped_byte_in_last_record_reopens_to_the_last_good_record(tmp_path: Path, last_write: str) -> None:
    template = tmp_path / "template"
    before, size_before, size_after = _build_then_last_write(template, last_write)
    for pos in range(size_before, size_after):
        work = tmp_path / f"flip{pos}"
        shutil.copytree(template, work)
        seg = segments(work)[-1]
        raw = bytearray(seg.read_bytes())
        raw[pos] ^= 0x5A
        seg.write_bytes(bytes(raw))
        with DurableStorage(work) as s:
            assert state_of(s) == before, f"flip at {pos}"
        shutil.rmtree(work)


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    before, _, _ = _build_then_last_write(tmp_path / "log", "hard_state")
    seg = segments(tmp_path / "log")[-1]
    raw = seg.read_bytes()
    # What some filesystems leave after a crash: the file grew but the data blocks are zeros.
    seg.write_bytes(raw[: len(raw) - 30] + b"\0" * 4096)
    with DurableStorage(tmp_path / "log") as s:
        assert state_of(s) == before


def test_damage_in_the_middle_is_an_error_not_a_silent_truncation(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with DurableStorage(directory) as s:
        for i in range(1, 30):
            s.append([normal(1, i, b"payload-%d" % i)])
    seg = segments(directory)[-1]
    raw = bytearray(seg.read_bytes())
    pos = raw.index(b"payload-3")
    raw[pos] ^= 0x01
    seg.write_bytes(bytes(raw))
    with pytest.raises(LogCorruptionError, match=r"damaged at offset \d+ .*valid record follows"):
        DurableStorage(directory)
    # The files are left untouched for inspection, and the lock was released.
    assert seg.read_bytes() == bytes(raw)


def test_torn_record_in_an_older_segment_is_an_error(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with DurableStorage(directory, segment_bytes=1024) as s:
        s.append([normal(1, i, b"z" * 40) for i in range(1, 100)])
        for i in range(100, 200):
            s.append([normal(1, i, b"z" * 40)])
    segs = segments(directory)
    assert len(segs) >= 3
    os.truncate(segs[1], segs[1].stat().st_size - 5)
    with pytest.raises(LogCorruptionError, match="later segments follow"):
        DurableStorage(directory)


def test_directory_is_locked_while_open(tmp_path: Path) -> None:
    s = DurableStorage(tmp_path / "log")
    with pytest.raises(StorageLockedError, match="in use"):
        DurableStorage(tmp_path / "log")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StorageClosedError):
        s.append([normal(1, 1)])
    DurableStorage(tmp_path / "log").close()


def test_an_abandoned_instance_releases_the_lock(tmp_path: Path) -> None:
    s = DurableStorage(tmp_path / "log")
    s.append([normal(1, 1)])
    del s  # a "crash" in a simulation: no close(), no sync()
    with DurableStorage(tmp_path / "log") as s:
        assert s.last_index() == 1


def test_failed_fsync_makes_the_storage_refuse_further_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = DurableStorage(tmp_path / "log")
    s.append([normal(1, 1)])

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(raftlog.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        s.sync()
    with pytest.raises(StorageClosedError, match="fsync failed"):
        s.append([normal(1, 2)])
    monkeypatch.undo()
    s.close()


def test_create_snapshot_compact_and_reopen(tmp_path: Path) -> None:
    s = DurableStorage(tmp_path / "log")
    s.append([noop(1, 1, {"a", "b", "c"})] + [normal(1, i) for i in range(2, 11)] + [normal(2, 11)])
    snap = s.create_snapshot(10, b"state@10")
    assert snap == Snapshot(index=10, term=1, voters=frozenset({"a", "b", "c"}), data=b"state@10")
    s.compact(10)
    assert s.first_index() == 11
    s = reopen(s)
    assert s.snapshot() == snap
    assert (s.first_index(), s.last_index(), s.term(10), s.term(11)) == (11, 11, 1, 2)
    assert s.entries(11, 12) == [normal(2, 11)]
    with pytest.raises(IndexError):
        s.entries(10, 12)
    with pytest.raises(IndexError):
        s.term(9)
    assert s.initial_state()[1] == frozenset({"a", "b", "c"})
    # A newer snapshot replaces the file of the older one.
    s.append([normal(2, i) for i in range(12, 16)])
    snap2 = s.create_snapshot(14, b"state@14")
    assert sorted(p.name for p in (tmp_path / "log").glob("snap-*")) == [f"snap-{14:020d}-{2:020d}.snap"]
    with pytest.raises(ValueError, match="older"):
        s.create_snapshot(12, b"old")
    with pytest.raises(ValueError, match="beyond"):
        s.create_snapshot(99, b"future")
    s = reopen(s)
    assert s.snapshot() == snap2 and s.first_index() == 11  # created, not compacted yet
    s.close()


def test_leftover_temp_snapshot_is_ignored_and_removed(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with DurableStorage(directory) as s:
        s.append([normal(1, i) for i in range(1, 6)])
        snap = s.create_snapshot(3, b"good")
    # A crash in the middle of writing a newer snapshot leaves only its temp file behind.
    tmp = directory / f"snap-{5:020d}-{1:020d}.snap.tmp"
    tmp.write_bytes(b"DTFSNAP1 half-written")
    foreign = directory / "someone-else.tmp"  # the directory may be shared: only our own files are touched
    foreign.write_bytes(b"keep me")
    with DurableStorage(directory) as s:
        assert s.snapshot() == snap
    assert not tmp.exists()
    assert foreign.read_bytes() == b"keep me"


@pytest.mark.parametrize("content", [b"", b"DTFW", b"\0" * 8])
def test_new_segment_without_its_header_is_reinitialised(tmp_path: Path, content: bytes) -> None:
    directory = tmp_path / "log"
    with DurableStorage(directory) as s:
        s.append([normal(1, i) for i in range(1, 6)])
        expect = state_of(s)
    # A crash right after a roll: the file exists but its header never reached the disk.
    (directory / f"wal-{2:020d}.log").write_bytes(content)
    with DurableStorage(directory) as s:
        assert state_of(s) == expect
        s.append([normal(1, 6)])
    with DurableStorage(directory) as s:
        assert s.last_index() == 6


def test_damaged_snapshot_file_is_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with DurableStorage(directory) as s:
        s.append([normal(1, i) for i in range(1, 6)])
        s.create_snapshot(3, b"good data")
    path = next(directory.glob("snap-*.snap"))
    path.write_bytes(path.read_bytes().replace(b"good", b"evil"))
    with pytest.raises(LogCorruptionError, match="snapshot file .* is damaged"):
        DurableStorage(directory)


def test_apply_snapshot_replaces_the_log(tmp_path: Path) -> None:
    s = DurableStorage(tmp_path / "log", segment_bytes=1024)
    s.append([noop(1, 1, {"a", "b"})] + [normal(1, i, b"q" * 30) for i in range(2, 80)])
    s.set_hard_state(HardState(1, "a", 3))
    received = Snapshot(index=100, term=4, voters=frozenset({"a", "b", "c"}), data=b"leader state")
    s.apply_snapshot(received)
    expect = (
        (HardState(1, "a", 100), frozenset({"a", "b", "c"})),
        101,
        100,
        received,
        [],
        [4],
    )
    assert state_of(s) == expect
    assert len(segments(tmp_path / "log")) == 1  # the old log is gone from disk
    s = reopen(s)  # no sync needed: apply_snapshot is durable on return
    assert state_of(s) == expect
    s.apply_snapshot(Snapshot(index=50, term=3, voters=frozenset({"a"}), data=b"stale"))  # ignored
    assert s.snapshot() == received
    s.append([normal(4, 101), normal(5, 102)])
    s = reopen(s)
    assert s.entries(101, 103) == [normal(4, 101), normal(5, 102)]
    s.close()


def test_snapshot_install_interrupted_before_the_log_reset(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with DurableStorage(directory) as s:
        s.append([normal(1, i) for i in range(1, 10)])
        s.set_hard_state(HardState(1, "a", 2))
    received = Snapshot(index=20, term=3, voters=frozenset({"x", "y"}), data=b"installed")
    # The crash came after the snapshot file was renamed into place, before the checkpoint segment.
    (directory / f"snap-{20:020d}-{3:020d}.snap").write_bytes(
        raftlog._encode_snapshot(received, installed=True)
    )
    with DurableStorage(directory) as s:
        assert state_of(s) == ((HardState(1, "a", 20), frozenset({"x", "y"})), 21, 20, received, [], [3])
    with DurableStorage(directory) as s:
        assert s.first_index() == 21


def test_voters_are_learned_from_noop_and_config_entries_across_reopen(tmp_path: Path) -> None:
    s = DurableStorage(tmp_path / "log")
    s.append([noop(1, 1, {"a", "b", "c"}), normal(1, 2)])
    assert s.initial_state()[1] == frozenset({"a", "b", "c"})
    s.append([config(1, 3, "add", "d", {"a", "b", "c", "d"}), normal(1, 4)])
    s.append([config(1, 5, "remove", "a", {"b", "c", "d"}), normal(1, 6)])
    s = reopen(s)
    assert s.initial_state()[1] == frozenset({"b", "c", "d"})
    # The snapshot records the configuration as of its own index, not the latest one.
    assert s.create_snapshot(4, b"s4").voters == frozenset({"a", "b", "c", "d"})
    # Truncating away an uncommitted config entry reverts to the previous configuration.
    s.append([normal(2, 5)])
    assert s.initial_state()[1] == frozenset({"a", "b", "c", "d"})
    s = reopen(s)
    assert s.initial_state()[1] == frozenset({"a", "b", "c", "d"})
    # Below the compaction point the voters come from the compaction record.
    s.append([normal(2, 6), noop(3, 7, {"a", "b", "c", "d"})])
    s.compact(6)
    s = reopen(s)
    assert s.create_snapshot(6, b"s6").voters == frozenset({"a", "b", "c", "d"})
    s.close()


def test_compaction_keeps_disk_use_bounded(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    s = DurableStorage(directory, segment_bytes=4096)
    index = 0
    for _ in range(300):
        s.append([normal(1, index + k + 1, b"d" * 100) for k in range(10)])
        index += 10
        s.set_hard_state(HardState(1, "a", index))
        if index % 100 == 0:
            s.sync()
            s.create_snapshot(index - 20, b"state")
            s.compact(index - 20)
    total = sum(p.stat().st_size for p in segments(directory))
    assert total < 4 * 4096 + 40 * 200, f"{total} bytes in {len(segments(directory))} segments"
    before = state_of(s)
    s = reopen(s, segment_bytes=4096)
    assert state_of(s) == before
    assert (s.first_index(), s.last_index()) == (2981, 3000)
    s.close()


def test_interrupted_checkpoint_is_finished_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raftlog, "_CHECKPOINT_CHUNK", 3)  # the live tail is rewritten as several records
    directory = tmp_path / "log"
    s = DurableStorage(directory, segment_bytes=1024)
    s.append([normal(1, i, b"w" * 60) for i in range(1, 60)])
    for i in range(60, 90):
        s.append([normal(1, i, b"w" * 60)])
    s.sync()
    saved = {p.name: p.read_bytes() for p in segments(directory)}
    assert len(saved) >= 2
    s.compact(80)  # makes the older segments dead: checkpoint
    assert len(segments(directory)) == 1
    expect = state_of(s)
    s.close()
    # Put the old segments back: as if the crash came after the checkpoint's rename, before the deletes.
    for name, raw in saved.items():
        (directory / name).write_bytes(raw)
    with DurableStorage(directory, segment_bytes=1024) as s:
        assert state_of(s) == expect
    assert len(segments(directory)) == 1


def _random_entry(rng: random.Random, term: int, index: int) -> Entry:
    roll = rng.random()
    if roll < 0.1:
        return noop(term, index, set(rng.sample("abcde", rng.randint(1, 5))))
    if roll < 0.2:
        return config(term, index, "add", rng.choice("abcde"), set(rng.sample("abcde", rng.randint(1, 5))))
    return Entry(term=term, index=index, kind="normal", data=rng.randbytes(rng.randint(0, 60)))


def _outcome(fn: Callable[..., object], *args: object) -> tuple[str, object]:
    """What a call returned, or which exception type it raised (to compare two storages)."""
    try:
        return ("ok", fn(*args))
    except (ValueError, IndexError) as exc:
        return ("raised", type(exc))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equivalent_to_memory_storage_over_random_operations(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    directory = tmp_path / "log"
    mem = MemoryStorage()
    disk = DurableStorage(directory, segment_bytes=1024)
    ops_seen: set[str] = set()
    for step in range(700):
        first, last = mem.first_index(), mem.last_index()
        snap = mem.snapshot()
        roll = rng.random()
        if roll < 0.45:
            op = "append"
            start = rng.randint(max(1, first - 3), last + (2 if rng.random() < 0.05 else 1))
            term = mem.term(max(start - 1, first - 1)) if start - 1 <= last else 1
            term += rng.choice([0, 0, 1])
            batch = [_random_entry(rng, term, start + k) for k in range(rng.randint(1, 6))]
            args: tuple = (batch,)
        elif roll < 0.6:
            op, args = "set_hard_state", (HardState(rng.randint(0, 9), rng.choice([None, "a", "ü"]), last),)
        elif roll < 0.7:
            op = "create_snapshot"
            lo = max(snap.index if snap else 0, first - 2)
            args = (rng.randint(lo, max(lo, last + 1)), rng.randbytes(rng.randint(0, 20)))
        elif roll < 0.8:
            op, args = "compact", (rng.randint(max(0, first - 2), last + 1),)
        elif roll < 0.84:
            op = "apply_snapshot"
            voters = frozenset(rng.sample("abcde", rng.randint(1, 5)))
            index = max(last, snap.index if snap else 0) + rng.randint(-3, 4)
            args = (
                Snapshot(index=max(index, 0), term=rng.randint(1, 9), voters=voters, data=b"snap%d" % step),
            )
        elif roll < 0.92:
            op, args = "sync", ()
        else:
            op, args = "reopen", ()
        ops_seen.add(op)
        if op == "reopen":
            disk = reopen(disk, segment_bytes=1024)
        elif op == "sync":
            disk.sync()
        else:
            expected = _outcome(getattr(mem, op), *args)
            got = _outcome(getattr(disk, op), *args)
            assert got == expected, f"step {step}: {op}{args!r}"
        assert state_of(disk) == state_of(mem), f"step {step} after {op}"
    disk = reopen(disk, segment_bytes=1024)
    assert state_of(disk) == state_of(mem)
    disk.close()
    assert ops_seen == {
        "append",
        "set_hard_state",
        "create_snapshot",
        "compact",
        "apply_snapshot",
        "sync",
        "reopen",
    }


CHILD = textwrap.dedent(
    """
    import sys
    from dtf_app.raft.log import DurableStorage
    from dtf_app.raft.types import Entry, HardState

    def payload(i):
        return b"entry-%d-" % i * (1 + i % 7)

    s = DurableStorage(sys.argv[1], segment_bytes=8192)
    index = s.last_index()
    print("start", index, flush=True)
    while True:
        n = 1 + index % 13
        s.append([Entry(term=1, index=index + k + 1, data=payload(index + k + 1)) for k in range(n)])
        index += n
        s.set_hard_state(HardState(1, "a", index))
        if index % 3 == 0:
            s.sync()
            print("synced", index, flush=True)
        if index > 400 and index % 5 == 0:
            s.compact(index - 300)
    """
)


def _payload(i: int) -> bytes:
    return b"entry-%d-" % i * (1 + i % 7)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_sigkilled_writer_leaves_a_prefix_including_everything_synced(tmp_path: Path) -> None:
    rng = random.Random(7)
    directory = tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    synced_total = 0
    for round_no in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory)], stdout=subprocess.PIPE, env=env, text=True
        )
        assert child.stdout is not None
        start_line = child.stdout.readline().split()
        assert start_line[0] == "start", start_line
        time.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        # Only complete lines count: SIGKILL can cut the child's last line short ("synced" alone, or
        # "synced 12" of "synced 123"), and a partial line proves nothing about what was synced.
        complete = out.split("\n")[:-1]
        synced = [int(line.split()[1]) for line in complete if line.startswith("synced ")]
        last_synced = synced[-1] if synced else int(start_line[1])
        with DurableStorage(directory, segment_bytes=8192) as s:
            first, last = s.first_index(), s.last_index()
            assert last >= last_synced, f"round {round_no}: lost synced entries"
            assert s.entries(first, last + 1) == [
                Entry(term=1, index=i, data=_payload(i)) for i in range(first, last + 1)
            ]
            assert s.hard_state.commit <= last
        synced_total = max(synced_total, last_synced)
    assert synced_total > 0


def test_raft_cores_restart_from_durable_storage(tmp_path: Path) -> None:
    from dtf_app.raft.core import RaftNode
    from dtf_app.raft.types import RaftConfig

    peers = ("n1", "n2", "n3")

    def start(storages: dict[str, DurableStorage]) -> dict:
        return {
            p: RaftNode(RaftConfig(node_id=p, peers=peers), storages[p], random.Random(i))
            for i, p in enumerate(peers)
        }

    storages = {p: DurableStorage(tmp_path / p) for p in peers}
    nodes = start(storages)
    nodes["n1"].campaign()
    pump_instant(nodes, storages)
    assert nodes["n1"].role == "leader"
    for i in range(20):
        nodes["n1"].propose(b"cmd%d" % i)
        pump_instant(nodes, storages)
    committed = nodes["n1"].commit_index
    assert committed >= 20
    states = {p: state_of(s) for p, s in storages.items()}
    assert states["n1"][0][1] == frozenset(peers)  # voters learned from the leader's noop
    del nodes
    for s in storages.values():
        s.close()

    storages = {p: DurableStorage(tmp_path / p) for p in peers}
    assert {p: state_of(s) for p, s in storages.items()} == states
    nodes = start(storages)
    nodes["n2"].campaign()
    pump_instant(nodes, storages)
    assert nodes["n2"].role == "leader"
    index = nodes["n2"].propose(b"after restart")
    pump_instant(nodes, storages)
    assert nodes["n2"].commit_index >= index > committed
    assert storages["n3"].entries(index, index + 1)[0].data == b"after restart"
    for s in storages.values():
        s.close()
