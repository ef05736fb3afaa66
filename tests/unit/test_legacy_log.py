"""Reading the pre-Raft command log for its one-time import: records, torn tail vs. damage, format 1
files, snapshots; the reader never changes a file, and the import turns the data dir into a Raft log."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from dtf_app.coordinator.legacy_log import (
    FILE_MAGIC,
    CommandLogCorruptionError,
    SnapshotCorruptionError,
    encode_record,
    encode_snapshot,
    import_into_raft,
    read_log,
)
from dtf_app.coordinator.state import State
from dtf_app.errors import ConfigError
from dtf_app.raft.log import DurableStorage

HEADER = 14  # magic(2) length(4) header crc(4) payload crc(4)


def _write(directory: Path, count: int, first: int = 1) -> list[int]:
    """A format-2 log of ``count`` records; returns each record's start offset."""
    directory.mkdir(parents=True, exist_ok=True)
    records = [encode_record(first + n, {"op": "X", "n": n}) for n in range(count)]
    (directory / "commands.log").write_bytes(FILE_MAGIC + b"".join(records))
    offsets, pos = [], len(FILE_MAGIC)
    for record in records:
        offsets.append(pos)
        (length,) = struct.unpack_from("<I", record, 2)
        assert len(record) == HEADER + length
        pos += len(record)
    return offsets


def test_records_and_a_torn_tail_that_is_left_as_it_is(tmp_path: Path) -> None:
    assert read_log(tmp_path) == (None, [])
    _write(tmp_path, 3)
    path = tmp_path / "commands.log"
    path.write_bytes(path.read_bytes()[:-3])  # a crash in the middle of the last record
    before = path.read_bytes()
    snapshot, records = read_log(tmp_path)
    assert snapshot is None
    assert [(i, c["n"]) for i, c in records] == [(1, 0), (2, 1)]
    assert path.read_bytes() == before  # reading never repairs: the import renames the whole directory


@pytest.mark.parametrize("where", ["payload", "length", "header_crc", "magic"])
def test_a_flipped_bit_in_the_middle_is_an_error_naming_file_and_offset(tmp_path: Path, where: str) -> None:
    offsets = _write(tmp_path, 50)
    path = tmp_path / "commands.log"
    data = bytearray(path.read_bytes())
    at = offsets[20] + {"payload": HEADER + 5, "length": 3, "header_crc": 7, "magic": 0}[where]
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CommandLogCorruptionError) as info:
        read_log(tmp_path)
    message = str(info.value)
    assert str(path) in message and f"byte offset {offsets[20]}" in message
    assert "\n" not in message
    assert path.read_bytes() == bytes(data)


def test_a_flipped_length_bit_in_the_last_record_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    offsets = _write(tmp_path, 5)
    path = tmp_path / "commands.log"
    data = bytearray(path.read_bytes())
    data[offsets[-1] + 4] ^= 0x01  # the length now claims far more bytes than the file has
    path.write_bytes(bytes(data))
    with pytest.raises(CommandLogCorruptionError, match=f"byte offset {offsets[-1]}"):
        read_log(tmp_path)


@pytest.mark.parametrize("cut", ["inside_header", "inside_payload", "zeros", "last_payload_byte"])
def test_an_incomplete_last_record_is_a_torn_tail(tmp_path: Path, cut: str) -> None:
    offsets = _write(tmp_path, 10)
    path = tmp_path / "commands.log"
    data = path.read_bytes()
    if cut == "inside_header":
        data = data[:offsets[-1] + 5]
    elif cut == "inside_payload":
        data = data[:-3]
    elif cut == "zeros":  # the file grew but the last write's pages never reached the disk
        data = data[:offsets[-1]] + b"\0" * (len(data) - offsets[-1])
    else:  # the last record's payload damaged: a write the crash did not let finish
        raw = bytearray(data)
        raw[-2] ^= 0xFF
        data = bytes(raw)
    path.write_bytes(data)
    _, records = read_log(tmp_path)
    assert [c["n"] for _, c in records] == list(range(9))


def test_a_checksum_valid_record_out_of_order_is_an_error(tmp_path: Path) -> None:
    offsets = _write(tmp_path, 3)
    path = tmp_path / "commands.log"
    data = path.read_bytes()
    # Drop the middle record: every remaining record is intact, but index 2 is missing.
    path.write_bytes(data[:offsets[1]] + data[offsets[2]:])
    with pytest.raises(CommandLogCorruptionError, match="index 3 follows index 1"):
        read_log(tmp_path)


def _v1_record(index: int, command: dict) -> bytes:
    body = json.dumps({"i": index, "c": command}, separators=(",", ":")).encode()
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


def _key_command(n: int) -> dict:
    return {"op": "CreateApiKey", "time": 1.0, "name": f"k{n}", "role": "viewer", "key_hash": f"h{n}"}


def test_a_format_1_log_and_snapshot_are_read(tmp_path: Path) -> None:
    state = State()
    state.apply(_key_command(0), 1)
    (tmp_path / "state.snapshot").write_bytes(state.snapshot())  # format 1: bare JSON
    old = b"".join(_v1_record(i, {"op": "X", "n": i}) for i in range(1, 6))
    (tmp_path / "commands.log").write_bytes(old + _v1_record(6, {"op": "X", "n": 6})[:-4])  # torn tail
    snapshot, records = read_log(tmp_path)
    assert snapshot is not None and State.restore(snapshot).applied_index == 1
    assert [i for i, _ in records] == [2, 3, 4, 5]  # record 1 is in the snapshot


def test_a_format_1_log_damaged_in_the_middle_is_an_error(tmp_path: Path) -> None:
    records = [_v1_record(i, {"op": "X", "n": i}) for i in range(1, 20)]
    data = bytearray(b"".join(records))
    at = sum(len(r) for r in records[:7])
    data[at + 1] ^= 0x04  # a length field: the record now seems to run past the end of the file
    (tmp_path / "commands.log").write_bytes(bytes(data))
    with pytest.raises(CommandLogCorruptionError, match=f"byte offset {at}"):
        read_log(tmp_path)


def test_a_damaged_snapshot_is_an_error_naming_the_file(tmp_path: Path) -> None:
    state = State()
    state.apply(_key_command(0), 1)
    raw = bytearray(encode_snapshot(state.snapshot()))
    path = tmp_path / "state.snapshot"
    path.write_bytes(bytes(raw))
    snapshot, _ = read_log(tmp_path)
    assert snapshot is not None and State.restore(snapshot).applied_index == 1
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorruptionError, match=str(path)):
        read_log(tmp_path)
    path.write_bytes(b"{not json")
    with pytest.raises(SnapshotCorruptionError, match=str(path)):
        read_log(tmp_path)


def test_the_import_makes_the_raft_log_s_first_snapshot_and_keeps_the_old_files(tmp_path: Path) -> None:
    legacy = tmp_path / "log"
    legacy.mkdir()
    state = State()
    state.apply(_key_command(0), 1)
    (legacy / "state.snapshot").write_bytes(encode_snapshot(state.snapshot()))
    (legacy / "commands.log").write_bytes(FILE_MAGIC + b"".join(encode_record(i, _key_command(i)) for i in (2, 3)))
    with pytest.raises(ConfigError, match="without --peers"):
        import_into_raft(tmp_path, "c1", is_single=False)  # a cluster member cannot import it alone
    assert legacy.is_dir()
    import_into_raft(tmp_path, "c1", is_single=True)
    assert not legacy.exists() and (tmp_path / "log.imported" / "commands.log").exists()
    storage = DurableStorage(tmp_path / "raft")
    try:
        snapshot = storage.snapshot()
        assert snapshot is not None and snapshot.index == 3 and snapshot.voters == frozenset({"c1"})
        restored = State.restore(snapshot.data)
        assert sorted(restored.api_keys) == ["k0", "k2", "k3"]
        assert storage.hard_state.commit == 3
    finally:
        storage.close()
