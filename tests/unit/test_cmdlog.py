"""The durable command log: round trip, torn tail vs. damage, format 1 files, snapshots, group commit."""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib
from pathlib import Path

import pytest
import trio

from dtf_app.coordinator.cmdlog import (
    FILE_MAGIC,
    CommandLog,
    CommandLogCorruptionError,
    Replicator,
    SnapshotCorruptionError,
    encode_snapshot,
)
from dtf_app.coordinator.state import State

HEADER = 14  # magic(2) length(4) header crc(4) payload crc(4)


def _write(directory: Path, count: int) -> list[int]:
    """A log of ``count`` records; returns each record's start offset."""
    log = CommandLog(directory)
    log.open()
    for n in range(count):
        log.append([{"op": "X", "n": n}])
    log.sync()
    log.close()
    data = (directory / "commands.log").read_bytes()
    offsets, pos = [], len(FILE_MAGIC)
    while pos < len(data):
        offsets.append(pos)
        (length,) = struct.unpack_from("<I", data, pos + 2)
        pos += HEADER + length
    assert pos == len(data)
    return offsets


def test_round_trip_and_torn_tail(tmp_path: Path) -> None:
    log = CommandLog(tmp_path)
    assert log.open() == (None, [])
    log.append([{"op": "A", "n": 1}, {"op": "B", "n": 2}])
    log.sync()
    log.append([{"op": "C", "n": 3}])
    log.sync()
    log.close()
    size = (tmp_path / "commands.log").stat().st_size
    with open(tmp_path / "commands.log", "r+b") as handle:
        handle.truncate(size - 3)  # a crash in the middle of the last record
    log = CommandLog(tmp_path)
    snapshot, records = log.open()
    assert snapshot is None
    assert [(i, c["op"]) for i, c in records] == [(1, "A"), (2, "B")]
    # The next append continues after the last good record, over the cut tail.
    assert log.append([{"op": "D"}]) == 3
    log.sync()
    log.close()
    _, records = CommandLog(tmp_path).open()
    assert [c["op"] for _, c in records] == ["A", "B", "D"]


def test_corrupt_byte_stops_replay_at_the_bad_record(tmp_path: Path) -> None:
    log = CommandLog(tmp_path)
    log.open()
    log.append([{"op": "A"}, {"op": "B"}])
    log.sync()
    log.close()
    data = bytearray((tmp_path / "commands.log").read_bytes())
    data[-2] ^= 0xFF  # the last record's payload: a write the crash did not let finish
    (tmp_path / "commands.log").write_bytes(bytes(data))
    _, records = CommandLog(tmp_path).open()
    assert [c["op"] for _, c in records] == ["A"]


@pytest.mark.parametrize("where", ["payload", "length", "header_crc", "magic"])
def test_a_flipped_bit_in_the_middle_is_an_error_and_changes_nothing(tmp_path: Path, where: str) -> None:
    offsets = _write(tmp_path, 50)
    path = tmp_path / "commands.log"
    before = path.read_bytes()
    data = bytearray(before)
    at = offsets[20] + {"payload": HEADER + 5, "length": 3, "header_crc": 7, "magic": 0}[where]
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    damaged = path.read_bytes()
    with pytest.raises(CommandLogCorruptionError) as info:
        CommandLog(tmp_path).open()
    message = str(info.value)
    assert str(path) in message and f"byte offset {offsets[20]}" in message
    assert "\n" not in message
    assert path.read_bytes() == damaged  # nothing truncated


def test_a_flipped_length_bit_in_the_last_record_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    offsets = _write(tmp_path, 5)
    path = tmp_path / "commands.log"
    data = bytearray(path.read_bytes())
    data[offsets[-1] + 4] ^= 0x01  # the length now claims far more bytes than the file has
    path.write_bytes(bytes(data))
    with pytest.raises(CommandLogCorruptionError, match=f"byte offset {offsets[-1]}"):
        CommandLog(tmp_path).open()
    assert path.read_bytes() == bytes(data)


@pytest.mark.parametrize("cut", ["inside_header", "inside_payload", "zeros"])
def test_an_incomplete_last_record_is_a_torn_tail(tmp_path: Path, cut: str) -> None:
    offsets = _write(tmp_path, 10)
    path = tmp_path / "commands.log"
    data = path.read_bytes()
    if cut == "inside_header":
        data = data[:offsets[-1] + 5]
    elif cut == "inside_payload":
        data = data[:-3]
    else:  # the file grew but the last write's pages never reached the disk
        data = data[:offsets[-1]] + b"\0" * (len(data) - offsets[-1])
    path.write_bytes(data)
    log = CommandLog(tmp_path)
    _, records = log.open()
    assert [c["n"] for _, c in records] == list(range(9))
    assert path.stat().st_size == offsets[-1]
    assert log.append([{"op": "X", "n": 9}]) == 10
    log.sync()
    log.close()
    _, records = CommandLog(tmp_path).open()
    assert [c["n"] for _, c in records] == list(range(10))


def test_a_checksum_valid_record_out_of_order_is_an_error(tmp_path: Path) -> None:
    offsets = _write(tmp_path, 3)
    path = tmp_path / "commands.log"
    data = path.read_bytes()
    # Drop the middle record: every remaining record is intact, but index 2 is missing.
    path.write_bytes(data[:offsets[1]] + data[offsets[2]:])
    with pytest.raises(CommandLogCorruptionError, match="index 3 follows index 1"):
        CommandLog(tmp_path).open()


def _v1_record(index: int, command: dict) -> bytes:
    body = json.dumps({"i": index, "c": command}, separators=(",", ":")).encode()
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


def test_a_format_1_log_and_snapshot_open_and_are_converted(tmp_path: Path) -> None:
    state = State()
    state.apply({"op": "CreateApiKey", "time": 1.0, "name": "k0", "role": "viewer", "key_hash": "h0"}, 1)
    (tmp_path / "state.snapshot").write_bytes(state.snapshot())  # format 1: bare JSON
    old = b"".join(_v1_record(i, {"op": "X", "n": i}) for i in range(1, 6))
    (tmp_path / "commands.log").write_bytes(old + _v1_record(6, {"op": "X", "n": 6})[:-4])  # torn tail
    log = CommandLog(tmp_path)
    snapshot, records = log.open()
    assert snapshot is not None and State.restore(snapshot).applied_index == 1
    assert [i for i, _ in records] == [2, 3, 4, 5]
    assert (tmp_path / "commands.log").read_bytes().startswith(FILE_MAGIC)
    assert log.append([{"op": "X", "n": 6}]) == 6
    log.sync()
    log.close()
    _, records = CommandLog(tmp_path).open()
    assert [i for i, _ in records] == [2, 3, 4, 5, 6]


def test_a_format_1_log_damaged_in_the_middle_is_an_error(tmp_path: Path) -> None:
    records = [_v1_record(i, {"op": "X", "n": i}) for i in range(1, 20)]
    data = bytearray(b"".join(records))
    at = sum(len(r) for r in records[:7])
    data[at + 1] ^= 0x04  # a length field: the record now seems to run past the end of the file
    (tmp_path / "commands.log").write_bytes(bytes(data))
    with pytest.raises(CommandLogCorruptionError, match=f"byte offset {at}"):
        CommandLog(tmp_path).open()
    assert (tmp_path / "commands.log").read_bytes() == bytes(data)


def test_a_damaged_snapshot_is_an_error_naming_the_file(tmp_path: Path) -> None:
    state = State()
    state.apply({"op": "CreateApiKey", "time": 1.0, "name": "k0", "role": "viewer", "key_hash": "h0"}, 1)
    raw = bytearray(encode_snapshot(state.snapshot()))
    path = tmp_path / "state.snapshot"
    path.write_bytes(bytes(raw))
    snapshot, _ = CommandLog(tmp_path).open()
    assert State.restore(snapshot).applied_index == 1
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorruptionError, match=str(path)):
        CommandLog(tmp_path).open()
    path.write_bytes(b"{not json")
    with pytest.raises(SnapshotCorruptionError, match=str(path)):
        CommandLog(tmp_path).open()


def test_log_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    old = os.umask(0)
    try:
        log = CommandLog(directory)
        log.open()
        log.append([{"op": "X"}])
        log.sync()
        log.write_snapshot(State().snapshot())
        log.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("commands.log", "state.snapshot"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600


async def test_group_commit_and_snapshot(tmp_path: Path) -> None:
    applied: list[int] = []
    state = State()
    log = CommandLog(tmp_path)
    log.open()
    rep = Replicator(log, state, lambda i, c, r, e: applied.append(i), snapshot_every=50)
    async with trio.open_nursery() as nursery:
        await nursery.start(rep.run)

        async def one(n: int) -> None:
            await rep.propose([{"op": "CreateApiKey", "time": 1.0, "name": f"k{n}", "role": "viewer",
                                "key_hash": str(n)}])

        async with trio.open_nursery() as inner:
            for n in range(120):
                inner.start_soon(one, n)
        nursery.cancel_scope.cancel()
    assert applied == list(range(1, 121))
    assert rep.fsyncs < 120  # concurrent proposals shared fsyncs
    log.close()
    log2 = CommandLog(tmp_path)
    snapshot, records = log2.open()
    assert snapshot is not None
    restored = State.restore(snapshot)
    for index, command in records:
        restored.apply(command, index)
    assert len(restored.api_keys) == 120 and restored.applied_index == 120


async def test_snapshot_also_triggers_on_log_bytes(tmp_path: Path) -> None:
    state = State()
    log = CommandLog(tmp_path)
    log.open()
    rep = Replicator(log, state, lambda i, c, r, e: None, snapshot_every=10**9, snapshot_bytes=4096)
    async with trio.open_nursery() as nursery:
        await nursery.start(rep.run)
        for n in range(40):
            await rep.propose([{"op": "CreateApiKey", "time": 1.0, "name": f"k{n}", "role": "viewer",
                                "key_hash": "x" * 200}])
        nursery.cancel_scope.cancel()
    assert (tmp_path / "state.snapshot").exists()
    assert log.bytes_since_snapshot < 4096
    log.close()
