"""The single-node durable command log and the group-committing replicator over it.

A coordinator acknowledges a command only after it is on disk: :meth:`Replicator.propose` returns once
the record is written and fsynced, then applied to the state machine. Proposals that arrive while an
fsync is in flight are written together by the next one (group commit), so a burst of submissions costs
one fsync, not one each.

File format (``commands.log``, version 2): the file magic ``DTFCMD2\\n``, then records of a 14-byte
header -- a 2-byte record magic, the payload length (u32), a CRC32 of magic and length (u32) and a CRC32
of the payload (u32) -- and the payload, the JSON ``{"i": index, "c": command}``. The header checksum is
what tells damage from a crash: a flipped bit in a length field fails the header CRC instead of looking
like a record that runs past the end of the file.

Opening applies the rule the Raft log follows (dtf_app/raft/log.py): only an incomplete record at the
very end -- a crash in the middle of the last write -- is a torn tail, cut off with a warning. Damage
anywhere else (a bad header or payload with a valid record after it, a CRC-valid record out of index
order) raises :class:`CommandLogCorruptionError` naming the file and the byte offset and changes nothing
on disk: dropping everything after it would silently lose acknowledged commands. Files of version 1
(records of ``[u32 length][u32 crc32][payload]``, no magic) are read with the same rule and rewritten
in version 2 at open (temp file, fsync, rename, fsync dir).

The state snapshot (``state.snapshot``) is ``DTFSNAP2\\n``, the payload length (u64) and CRC32 (u32),
then the payload; it is verified at load (:class:`SnapshotCorruptionError` names the file) and written
atomically (temp file, fsync, rename, fsync dir), after which the log restarts empty, which bounds
replay time. A version-1 snapshot (bare JSON) still loads.

The Raft log (dtf_app/raft/log.py) replaced this log: a coordinator no longer writes it. It stays for
data dirs of older DTF versions, which :func:`import_into_raft` turns into the Raft log's first snapshot
once, at start.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from dtf_app import fsutil
from dtf_app.coordinator import bulk
from dtf_app.coordinator.state import State

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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


class CommandLog:
    """Append-only command records with checksums, plus an atomically replaced state snapshot."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOG_NAME
        self.snapshot_path = self.directory / SNAPSHOT_NAME
        self._fd: int | None = None
        self.last_index = 0
        self.entries_since_snapshot = 0
        self.bytes_since_snapshot = 0

    def open(self) -> tuple[bytes | None, list[tuple[int, dict[str, Any]]]]:
        """Open (creating) the log; return the snapshot bytes (or None) and the records after it.

        Raises :class:`CommandLogCorruptionError` (or :class:`SnapshotCorruptionError`) for damage that
        is not a torn tail, before anything on disk is changed.
        """
        fsutil.private_dir(self.directory)
        snapshot: bytes | None = None
        snap_index = 0
        if self.snapshot_path.exists():
            fsutil.private_file(self.snapshot_path)
            snapshot, snap_index = decode_snapshot(self.snapshot_path.read_bytes(), self.snapshot_path)
        data = self.path.read_bytes() if self.path.exists() else b""
        # A file whose magic never fully reached the disk holds nothing: start it afresh.
        fresh = data != FILE_MAGIC and len(data) <= len(FILE_MAGIC) and FILE_MAGIC.startswith(data.rstrip(b"\0"))
        v1 = not fresh and not data.startswith(FILE_MAGIC)
        records, good_end, bodies = self._scan(data, v1, snap_index) if not fresh else ([], 0, [])
        if v1 and good_end != len(data):
            log.warning("command log %s: dropped a torn tail of %d bytes at offset %d", self.path,
                        len(data) - good_end, good_end)
        if fresh or v1:
            # Version 1 is rewritten as version 2 once, atomically (the old file stays until the rename).
            self._rewrite(bodies)
            if v1:
                log.info("command log %s: converted %d records to format 2", self.path, len(bodies))
            good_end = len(FILE_MAGIC) + sum(_HEADER.size + len(b) for b in bodies)
        elif good_end != len(data):
            # A crash mid-write leaves a partial last record; nothing in it was acknowledged.
            log.warning("command log %s: cut a torn tail of %d bytes at offset %d", self.path,
                        len(data) - good_end, good_end)
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, good_end)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._fd = fsutil.open_private(self.path, os.O_RDWR | os.O_APPEND)
        self.last_index = records[-1][0] if records else snap_index
        self.entries_since_snapshot = len(records)
        self.bytes_since_snapshot = good_end - len(FILE_MAGIC)
        return snapshot, records

    def _scan(self, data: bytes, v1: bool, snap_index: int
              ) -> tuple[list[tuple[int, dict[str, Any]]], int, list[bytes]]:
        """Records after the snapshot, where the intact part ends, and (format 1) their payloads."""
        parse = _parse_v1 if v1 else _parse_v2
        pos = 0 if v1 else len(FILE_MAGIC)
        records: list[tuple[int, dict[str, Any]]] = []
        bodies: list[bytes] = []
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
                    f"command log {self.path} is damaged at byte offset {pos} ({bad}) and {where}: this is "
                    "not a torn tail from a crash, so acknowledged commands would be lost. Nothing was "
                    "changed on disk; restore the data dir from a backup") from None
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
                    f"command log {self.path} at byte offset {pos}: a record passes its checksum but does "
                    f"not fit the log ({exc}). Nothing was changed on disk; restore the data dir from a "
                    "backup") from None
            previous = index
            if index > snap_index:
                records.append((index, command))
                if v1:
                    bodies.append(body)  # to be rewritten in format 2
            pos = end
        return records, pos, bodies

    def _rewrite(self, bodies: list[bytes]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = fsutil.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_all(fd, FILE_MAGIC + b"".join(_frame(body) for body in bodies))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)

    def append(self, commands: list[dict[str, Any]]) -> int:
        """Write records (not yet durable: call :meth:`sync`); returns the last index written."""
        assert self._fd is not None, "open() first"
        chunks = []
        for command in commands:
            self.last_index += 1
            chunks.append(encode_record(self.last_index, command))
        data = b"".join(chunks)
        _write_all(self._fd, data)
        self.entries_since_snapshot += len(commands)
        self.bytes_since_snapshot += len(data)
        return self.last_index

    def sync(self) -> None:
        """fsync the log file."""
        assert self._fd is not None
        os.fsync(self._fd)

    def write_snapshot(self, data: bytes) -> None:
        """Atomically replace the snapshot with ``data`` (covering every record so far), then empty the log."""
        tmp = self.snapshot_path.with_suffix(".tmp")
        fd = fsutil.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_all(fd, encode_snapshot(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.snapshot_path)
        _fsync_dir(self.directory)
        assert self._fd is not None
        os.ftruncate(self._fd, len(FILE_MAGIC))  # keep the file magic; every record is in the snapshot
        os.fsync(self._fd)
        self.entries_since_snapshot = 0
        self.bytes_since_snapshot = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Proposal:
    __slots__ = ("commands", "done", "results", "error")

    def __init__(self, commands: list[dict[str, Any]]) -> None:
        self.commands = commands
        self.done = trio.Event()
        self.results: list[Any] = []
        self.error: BaseException | None = None


class Replicator:
    """Durably orders commands and applies them: the single-node stand-in for the Raft driver.

    ``on_applied(index, command, result, events)`` is called for each applied command (the store puts
    the events; the service reacts, e.g. pushes cancels or schedules).
    """

    def __init__(self, cmdlog: CommandLog, state: State,
                 on_applied: Callable[[int, dict[str, Any], Any, list[dict[str, Any]]], None],
                 *, snapshot_every: int = 20_000, snapshot_bytes: int = 256 * 1024 * 1024) -> None:
        self.cmdlog = cmdlog
        self.state = state
        self.on_applied = on_applied
        self.snapshot_every = snapshot_every
        self.snapshot_bytes = snapshot_bytes
        self._queue: list[_Proposal] = []
        self._wakeup = trio.Event()
        self._closed = False
        self.fsyncs = 0
        self.before_snapshot: Callable[[], Any] | None = None

    async def propose(self, commands: list[dict[str, Any]]) -> list[Any]:
        """Make the commands durable and applied; returns their results in order."""
        if self._closed:
            raise RuntimeError("the coordinator is shutting down")
        proposal = _Proposal(commands)
        self._queue.append(proposal)
        self._wakeup.set()
        await proposal.done.wait()
        if proposal.error is not None:
            raise proposal.error
        return proposal.results

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The committer: write everything queued, one fsync, apply, wake the proposers; repeat."""
        task_status.started()
        try:
            while True:
                if not self._queue:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                batch, self._queue = self._queue, []
                commands = [c for p in batch for c in p.commands]
                try:
                    # Encoding (big for a big submit) and fsync (milliseconds) run off the event loop,
                    # while new proposals queue up; nothing else touches the log or these commands.
                    last = await trio.to_thread.run_sync(self._append_and_sync, commands)
                    self.fsyncs += 1
                except OSError as exc:
                    for proposal in batch:
                        proposal.error = exc
                        proposal.done.set()
                    continue
                index = last - len(commands) + 1
                since_yield = time.monotonic()
                for proposal in batch:
                    for command in proposal.commands:
                        if time.monotonic() - since_yield > bulk.SLICE_S:
                            # Between two commands the state is whole: let the event loop run (a big
                            # submit is many commands), so /status and heartbeats are served meanwhile.
                            await trio.sleep(0)
                            since_yield = time.monotonic()
                        result, events = self.state.apply(command, index)
                        self.on_applied(index, command, result, events)
                        proposal.results.append(result)
                        index += 1
                    proposal.done.set()
                # Bounded replay: snapshot after many entries or many bytes, whichever comes first.
                if (self.cmdlog.entries_since_snapshot >= self.snapshot_every
                        or self.cmdlog.bytes_since_snapshot >= self.snapshot_bytes):
                    await self.snapshot()
        finally:
            self._closed = True
            for proposal in self._queue:
                proposal.error = RuntimeError("the coordinator is shutting down")
                proposal.done.set()

    def _append_and_sync(self, commands: list[dict[str, Any]]) -> int:
        last = self.cmdlog.append(commands)
        self.cmdlog.sync()
        return last

    async def snapshot(self) -> None:
        """Snapshot the state and restart the log (after the store caught up, so no event is lost)."""
        if self.before_snapshot is not None:
            await self.before_snapshot()
        data = await bulk.encode_snapshot(self.state)  # == state.snapshot(), without stalling the loop
        await trio.to_thread.run_sync(self.cmdlog.write_snapshot, data)
        log.info("state snapshot at index %d (%d bytes)", self.state.applied_index, len(data))


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
    cmdlog = CommandLog(legacy)
    snapshot, records = cmdlog.open()
    cmdlog.close()
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
