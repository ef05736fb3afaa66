"""Reading the pre-Raft single-node command log, to import it into the Raft log once.

Older DTF versions kept a coordinator's state in ``<data-dir>/log``: a command log and a state snapshot.
The Raft log (dtf_app/raft/log.py) is now the only durable log, single node included; nothing writes the
old files any more. :func:`import_into_raft` reads them at start (:func:`read_log`, which never changes
anything on disk), replays them into a state, stores that as the Raft log's first snapshot and renames
the directory to ``log.imported``. ``dtf restore`` also produces this layout (a snapshot and an empty
log), so a restored data dir goes through the same import.

File format (``commands.log``, version 2): the file magic ``DTFCMD2\\n``, then records of a 14-byte
header -- a 2-byte record magic, the payload length (u32), a CRC32 of magic and length (u32) and a CRC32
of the payload (u32) -- and the payload, the JSON ``{"i": index, "c": command}``. The header checksum is
what tells damage from a crash: a flipped bit in a length field fails the header CRC instead of looking
like a record that runs past the end of the file. Version 1 files hold records of
``[u32 length][u32 crc32][payload]`` and no magic.

The rule the Raft log follows: only an incomplete record at the very end -- a crash in the middle of the
last write -- is a torn tail, ignored with a warning. Damage anywhere else (a bad header or payload with a
valid record after it, a CRC-valid record out of index order) raises :class:`CommandLogCorruptionError`
naming the file and the byte offset: dropping everything after it would silently lose acknowledged
commands.

The state snapshot (``state.snapshot``) is ``DTFSNAP2\\n``, the payload length (u64) and CRC32 (u32),
then the payload (version 1: bare JSON); it is verified (:class:`SnapshotCorruptionError` names the file).
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path
from typing import Any

log = logging.getLogger("dtf.coordinator.log")

LOG_NAME = "commands.log"
SNAPSHOT_NAME = "state.snapshot"
FILE_MAGIC = b"DTFCMD2\n"
RECORD_MAGIC = b"\xc3\xd1"
SNAPSHOT_MAGIC = b"DTFSNAP2\n"
# magic(2) length(4) header crc(4) payload crc(4); the header CRC covers magic and length.
_HEADER = struct.Struct("<2sIII")
_HEAD_PART = struct.Struct("<2sI")
_SNAP_HEAD = struct.Struct("<QI")
_V1_HEADER = struct.Struct("<II")


class CommandLogCorruptionError(Exception):
    """The command log is damaged somewhere other than a torn tail; nothing was changed on disk."""

    exit_code = 2  # node.py: a start problem, reported in one line


class SnapshotCorruptionError(CommandLogCorruptionError):
    """The state snapshot fails its checksum or cannot be parsed."""


def encode_record(index: int, command: dict[str, Any]) -> bytes:
    """One version-2 record."""
    body = json.dumps({"i": index, "c": command}, separators=(",", ":"), default=str).encode()
    return _frame(body)


def _frame(body: bytes) -> bytes:
    head = _HEAD_PART.pack(RECORD_MAGIC, len(body))
    return _HEADER.pack(RECORD_MAGIC, len(body), zlib.crc32(head), zlib.crc32(body)) + body


class _Bad(Exception):
    """Internal: the bytes at an offset are not a valid record; ``incomplete`` when a crash explains it."""

    def __init__(self, reason: str, incomplete: bool) -> None:
        super().__init__(reason)
        self.incomplete = incomplete


def _parse_v2(data: bytes, pos: int) -> tuple[bytes, int]:
    """(payload, next offset) of the record at ``pos``, or raise ``_Bad``."""
    rest = len(data) - pos
    if rest < _HEADER.size:
        raise _Bad("partial record header", incomplete=True)
    magic, length, head_crc, body_crc = _HEADER.unpack_from(data, pos)
    if magic != RECORD_MAGIC or zlib.crc32(data[pos:pos + _HEAD_PART.size]) != head_crc:
        # A header whose bytes from some point on are zeros is one the crash did not let reach the disk.
        unwritten = len(data[pos:].rstrip(b"\0")) < _HEADER.size
        raise _Bad("bad record header (magic or header checksum)", incomplete=unwritten)
    end = pos + _HEADER.size + length
    if end > len(data):
        raise _Bad(f"record of {length} bytes runs past the end of the file", incomplete=True)
    body = data[pos + _HEADER.size:end]
    if zlib.crc32(body) != body_crc:
        # The last record's payload not (fully) on disk is a torn write; earlier ones are damage.
        raise _Bad("payload checksum mismatch", incomplete=end == len(data))
    return body, end


def _parse_v1(data: bytes, pos: int) -> tuple[bytes, int]:
    rest = len(data) - pos
    if rest < _V1_HEADER.size:
        raise _Bad("partial record header", incomplete=True)
    length, crc = _V1_HEADER.unpack_from(data, pos)
    end = pos + _V1_HEADER.size + length
    if end > len(data):
        raise _Bad(f"record of {length} bytes runs past the end of the file", incomplete=True)
    body = data[pos + _V1_HEADER.size:end]
    if zlib.crc32(body) != crc:
        raise _Bad("payload checksum mismatch", incomplete=end == len(data))
    return body, end


def _valid_record_after(data: bytes, pos: int, v1: bool) -> int | None:
    """Offset of the first checksum-valid record after ``pos`` (is the damage at ``pos`` a torn tail?)."""
    start = pos + 1
    if v1:
        # No record magic: try every offset (only ever done once, on a damaged old-format file).
        while start + _V1_HEADER.size <= len(data):
            try:
                body, _ = _parse_v1(data, start)
                if isinstance(json.loads(body).get("i"), int):
                    return start
            except (_Bad, ValueError, AttributeError):
                pass
            start += 1
        return None
    while True:
        start = data.find(RECORD_MAGIC, start)
        if start < 0:
            return None
        try:
            _parse_v2(data, start)
            return start
        except _Bad:
            start += 1


def encode_snapshot(payload: bytes) -> bytes:
    """A snapshot file's bytes: magic, length, CRC32, payload."""
    return SNAPSHOT_MAGIC + _SNAP_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode_snapshot(raw: bytes, path: Path) -> tuple[bytes, int]:
    """The verified snapshot payload (the state's JSON) and its applied index."""
    if raw.startswith(SNAPSHOT_MAGIC):
        head_end = len(SNAPSHOT_MAGIC) + _SNAP_HEAD.size
        if len(raw) < head_end:
            raise SnapshotCorruptionError(f"state snapshot {path} is damaged: its header is cut short "
                                          f"({len(raw)} bytes); restore the data dir from a backup")
        length, crc = _SNAP_HEAD.unpack_from(raw, len(SNAPSHOT_MAGIC))
        payload = raw[head_end:]
        if len(payload) != length or zlib.crc32(payload) != crc:
            raise SnapshotCorruptionError(
                f"state snapshot {path} is damaged: checksum or length mismatch (header says {length} "
                f"bytes, file holds {len(payload)}); refusing to start from it. Restore the data dir from a "
                "backup")
    elif raw.lstrip()[:1] == b"{":
        payload = raw  # version 1: bare JSON, no checksum; parsing is the only check there is
    else:
        raise SnapshotCorruptionError(f"state snapshot {path} is not a DTF snapshot (unknown header); "
                                      "restore the data dir from a backup")
    try:
        index = json.loads(payload)["applied_index"]
        if not isinstance(index, int):
            raise TypeError("applied_index is not an integer")
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotCorruptionError(f"state snapshot {path} cannot be read ({exc}); restore the data dir "
                                      "from a backup") from None
    return payload, index


def read_log(directory: Path) -> tuple[bytes | None, list[tuple[int, dict[str, Any]]]]:
    """The snapshot payload (or None) and the records after it, read without changing anything on disk.

    Raises :class:`CommandLogCorruptionError` (or :class:`SnapshotCorruptionError`) for damage that is
    not a torn tail."""
    path, snapshot_path = directory / LOG_NAME, directory / SNAPSHOT_NAME
    snapshot: bytes | None = None
    snap_index = 0
    if snapshot_path.exists():
        snapshot, snap_index = decode_snapshot(snapshot_path.read_bytes(), snapshot_path)
    data = path.read_bytes() if path.exists() else b""
    # A file whose magic never fully reached the disk holds nothing.
    if len(data) <= len(FILE_MAGIC) and FILE_MAGIC.startswith(data.rstrip(b"\0")):
        return snapshot, []
    v1 = not data.startswith(FILE_MAGIC)
    records, good_end = _scan(path, data, v1, snap_index)
    if good_end != len(data):
        # A crash mid-write leaves a partial last record; nothing in it was acknowledged.
        log.warning("command log %s: ignored a torn tail of %d bytes at offset %d", path, len(data) - good_end,
                    good_end)
    return snapshot, records


def _scan(path: Path, data: bytes, v1: bool, snap_index: int) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """Records after the snapshot, and where the intact part ends."""
    parse = _parse_v1 if v1 else _parse_v2
    pos = 0 if v1 else len(FILE_MAGIC)
    records: list[tuple[int, dict[str, Any]]] = []
    previous: int | None = None
    while pos < len(data):
        try:
            body, end = parse(data, pos)
        except _Bad as bad:
            later = _valid_record_after(data, pos, v1)
            if bad.incomplete and later is None:
                break  # a torn tail
            where = (f"a valid record follows at offset {later}" if later is not None
                     else "it is not an incomplete last record")
            raise CommandLogCorruptionError(
                f"command log {path} is damaged at byte offset {pos} ({bad}) and {where}: this is not a torn "
                "tail from a crash, so acknowledged commands would be lost. Nothing was changed on disk; "
                "restore the data dir from a backup") from None
        try:
            record = json.loads(body)
            index, command = record["i"], record["c"]
            if not isinstance(index, int) or not isinstance(command, dict):
                raise TypeError("not an index and a command")
            if previous is None and index > snap_index + 1:
                raise ValueError(f"first index {index} leaves a gap after the snapshot at {snap_index}")
            if previous is not None and index != previous + 1:
                raise ValueError(f"index {index} follows index {previous}")
        except (ValueError, KeyError, TypeError) as exc:
            raise CommandLogCorruptionError(
                f"command log {path} at byte offset {pos}: a record passes its checksum but does not fit the "
                f"log ({exc}). Nothing was changed on disk; restore the data dir from a backup") from None
        previous = index
        if index > snap_index:
            records.append((index, command))
        pos = end
    return records, pos


def import_into_raft(data_dir: Path, node_id: str, *, is_single: bool) -> None:
    """A data dir of the pre-Raft single-node command log: import it once as the Raft log's snapshot."""
    from dtf_app.coordinator.state import State
    from dtf_app.errors import ConfigError
    from dtf_app.raft.log import DurableStorage
    from dtf_app.raft.types import HardState, Snapshot

    legacy = data_dir / "log"
    raft_dir = data_dir / "raft"
    if not legacy.is_dir():
        return
    if raft_dir.exists() and any(raft_dir.glob("wal-*.log")):
        log.warning("%s holds a pre-Raft command log, but the Raft log in %s exists already: the old log is "
                    "ignored (move it away to silence this)", legacy, raft_dir)
        return
    if not is_single:
        raise ConfigError(f"{legacy} holds a single-node command log from an older DTF: start this coordinator "
                          "once without --peers to import it, then add peers")
    snapshot, records = read_log(legacy)
    state = State.restore(snapshot) if snapshot is not None else State()
    for index, command in records:
        state.apply(command, index)
    index = state.applied_index
    if index:
        storage = DurableStorage(raft_dir)
        try:
            storage.apply_snapshot(Snapshot(index=index, term=1, voters=frozenset({node_id}), data=state.snapshot()))
            storage.set_hard_state(HardState(term=1, vote=node_id, commit=index))
            storage.sync()
        finally:
            storage.close()
    legacy.rename(data_dir / "log.imported")
    log.warning("imported the command log of an older DTF (%d entries) into the Raft log; the old files "
                "are kept in %s", index, data_dir / "log.imported")
