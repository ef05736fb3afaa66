"""Durable Raft log storage: an append-only write-ahead log plus snapshot files, on local disk.

``DurableStorage`` implements the ``LogStorage`` read side the core uses and the same write methods as
``MemoryStorage`` (see ``dtf_app/raft/storage.py``), with the persistence rules of DESIGN.md section 7:
whatever a ``Ready`` asks to persist is written at once (one ``os.write`` per call) and made durable by
``sync()`` (one fsync for everything written since the previous one: group commit).

On-disk layout of the directory (modelled on hashicorp/raft's LogStore + StableStore + SnapshotStore and
etcd's WAL)::

    LOCK                              flock'd while open, so two processes never share a log
    wal-<seq:020d>.log                segments, replayed in sequence order
    snap-<index:020d>-<term:020d>.snap  the newest snapshot; older ones are deleted once it is durable
    wal-*.log.tmp, snap-*.snap.tmp    half-written files from a crash; ignored and removed at open

A segment is ``SEGMENT_MAGIC`` followed by records. A record is a 12-byte header -- a 2-byte record magic,
a type byte, a reserved byte, the body length (u32) and a CRC32 over type, reserved byte, length and
body -- then the body. Record types:

* ``ENTRIES``: ``first_index, count`` then per entry ``term, kind, len, data``. It always continues the
  log exactly at ``last_index() + 1``; anything else found at replay is corruption.
* ``HARD_STATE``: ``term, commit, vote``. The latest one wins (hard state lives in the log, so it is
  group-committed with the entries instead of costing a second file and fsync per Ready).
* ``REPLACE``: the truncate-from marker -- same body as ``ENTRIES``, but it first drops every stored entry
  from ``first_index`` on. Truncation and the replacing entries are one record, so a crash can never
  leave the truncation without its replacement.
* ``COMPACT``: entries up to ``index`` (whose term and voter set it records) are gone; with the RESET
  flag the whole log is replaced by that point (snapshot installs and checkpoints).

Why the record magic: when the last segment ends in a damaged record we must tell a torn tail (the last
write was interrupted by a crash: truncate it away, log it, carry on) from damage in the middle (valid
records follow the bad one: refuse to open rather than silently drop acknowledged data). The magic lets
``bytes.find`` locate candidate records after the damage at C speed; each candidate is checked by CRC.
(Entry data that itself embeds a CRC-valid record of this format could make a torn tail look like damage
in the middle: the open then fails loudly, it never drops data silently.)

Disk use stays bounded: segments roll at ``segment_bytes``; when ``compact()`` makes whole old segments
dead, the live state (base point, hard state, live entries) is rewritten into a fresh "checkpoint"
segment (temp file, fsync, rename, fsync directory) starting with a RESET record, and the older segments
are deleted. A crash between the rename and the deletes is harmless: replay starts at the newest segment
that begins with a RESET record.

Snapshots are files of their own (magic, index, term, voters, data, CRC32), written atomically: temp
file, fsync, rename, fsync directory; the newest one is kept. ``create_snapshot`` only writes the file
(like ``MemoryStorage``, it does not compact). ``apply_snapshot`` (a snapshot received from the leader)
writes the file flagged "installed", then a checkpoint segment resetting the log to it, and is durable on
return; if a crash falls between the two, the next open sees an installed snapshot ahead of the log and
finishes the install.

The voter set is learned like ``MemoryStorage`` does: from ``voters_from_entry`` over the stored entries,
and below them from the compaction point / snapshot, so ``initial_state()`` reports the latest
configuration and ``create_snapshot(index)`` records the voters as of ``index``.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from bisect import bisect_left, bisect_right
from pathlib import Path
from types import TracebackType

from dtf_app import fsutil
from dtf_app.raft.storage import EntryIndex
from dtf_app.raft.types import Entry, HardState, Snapshot, voters_from_entry

try:  # POSIX only; on Windows the directory is simply not locked.
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DurableStorage",
    "FileLogStorage",
    "LogCorruptionError",
    "StorageClosedError",
    "StorageLockedError",
]

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"DTFWAL1\n"
SNAPSHOT_MAGIC = b"DTFSNAP1"
RECORD_MAGIC = b"\xd7\xf1"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

REC_ENTRIES = 1
REC_HARD_STATE = 2
REC_REPLACE = 3
REC_COMPACT = 4
_RECORD_TYPES = (REC_ENTRIES, REC_HARD_STATE, REC_REPLACE, REC_COMPACT)
COMPACT_RESET = 1

# magic(2) type(1) reserved(1) body length(4) crc(4); the CRC covers bytes 2..8 of the header + body.
_HEADER = struct.Struct("<2sBBII")
_CRC_PART = struct.Struct("<BBI")
_ENTRIES_HEAD = struct.Struct("<QI")
_ENTRY_HEAD = struct.Struct("<QBI")
_HARD_STATE = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
_COMPACT = struct.Struct("<QQB")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_SNAP_HEAD = struct.Struct("<QQB")
SNAPSHOT_INSTALLED = 1

_KIND_CODES = {"normal": 0, "noop": 1, "config": 2}
_KIND_NAMES = {code: name for name, code in _KIND_CODES.items()}
_NO_VOTE = 0xFFFF
_CHECKPOINT_CHUNK = 4096  # entries per record when a checkpoint rewrites the live tail

_SEGMENT_RE = re.compile(r"^wal-(\d{20})\.log$")
_SNAPSHOT_RE = re.compile(r"^snap-(\d{20})-(\d{20})\.snap$")


class LogCorruptionError(Exception):
    """The on-disk log or a snapshot is damaged somewhere other than a torn tail; it cannot be trusted."""


class StorageClosedError(Exception):
    """The storage was closed, or a write/fsync failed earlier so its files can no longer be trusted."""


class StorageLockedError(RuntimeError):
    """Another open ``DurableStorage`` (in this or another process) holds the directory's lock."""


# --- encoding ------------------------------------------------------------------------------------------


def _record(rtype: int, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(_CRC_PART.pack(rtype, 0, len(body))))
    return _HEADER.pack(RECORD_MAGIC, rtype, 0, len(body), crc) + body


def _encode_entries(entries: list[Entry], rtype: int = REC_ENTRIES) -> bytes:
    parts = [_ENTRIES_HEAD.pack(entries[0].index, len(entries))]
    pack = _ENTRY_HEAD.pack
    for e in entries:
        parts.append(pack(e.term, _KIND_CODES[e.kind], len(e.data)))
        parts.append(e.data)
    return _record(rtype, b"".join(parts))


def _encode_hard_state(hs: HardState) -> bytes:
    if hs.vote is None:
        vote = _U16.pack(_NO_VOTE)
    else:
        raw = hs.vote.encode()
        vote = _U16.pack(len(raw)) + raw
    return _record(REC_HARD_STATE, _HARD_STATE.pack(hs.term, hs.commit) + vote)


def _encode_voters(voters: frozenset[str] | None) -> bytes:
    if voters is None:
        return _I32.pack(-1)
    parts = [_I32.pack(len(voters))]
    for voter in sorted(voters):
        raw = voter.encode()
        parts.append(_U16.pack(len(raw)) + raw)
    return b"".join(parts)


def _decode_voters(buf: bytes | memoryview, pos: int) -> tuple[frozenset[str] | None, int]:
    (count,) = _I32.unpack_from(buf, pos)
    pos += 4
    if count < 0:
        return None, pos
    voters = []
    for _ in range(count):
        (n,) = _U16.unpack_from(buf, pos)
        voters.append(bytes(buf[pos + 2 : pos + 2 + n]).decode())
        pos += 2 + n
    return frozenset(voters), pos


def _encode_compact(index: int, term: int, voters: frozenset[str] | None, reset: bool) -> bytes:
    body = _COMPACT.pack(index, term, COMPACT_RESET if reset else 0) + _encode_voters(voters)
    return _record(REC_COMPACT, body)


def _encode_snapshot(snap: Snapshot, installed: bool) -> bytes:
    body = b"".join(
        [
            SNAPSHOT_MAGIC,
            _SNAP_HEAD.pack(snap.index, snap.term, SNAPSHOT_INSTALLED if installed else 0),
            _encode_voters(frozenset(snap.voters)),
            _U64.pack(len(snap.data)),
            snap.data,
        ]
    )
    return body + struct.pack("<I", zlib.crc32(body))


def _decode_snapshot(raw: bytes, path: Path) -> tuple[Snapshot, bool]:
    """The snapshot in a file and whether it was received from a leader (``apply_snapshot``)."""
    try:
        if len(raw) < len(SNAPSHOT_MAGIC) + 4 or not raw.startswith(SNAPSHOT_MAGIC):
            raise ValueError("bad magic")
        (crc,) = struct.unpack_from("<I", raw, len(raw) - 4)
        body = raw[:-4]
        if zlib.crc32(body) != crc:
            raise ValueError("CRC mismatch")
        index, term, flags = _SNAP_HEAD.unpack_from(body, len(SNAPSHOT_MAGIC))
        voters, pos = _decode_voters(body, len(SNAPSHOT_MAGIC) + _SNAP_HEAD.size)
        (size,) = _U64.unpack_from(body, pos)
        data = body[pos + 8 : pos + 8 + size]
        if len(data) != size or pos + 8 + size != len(body):
            raise ValueError("length mismatch")
    except (ValueError, struct.error) as exc:
        raise LogCorruptionError(
            f"snapshot file {path} is damaged ({exc}); snapshots are written atomically, so the disk or "
            "another program altered it. Restore the directory from a peer (wipe it to rejoin as new)."
        ) from None
    snap = Snapshot(index=index, term=term, voters=voters or frozenset(), data=data)
    return snap, bool(flags & SNAPSHOT_INSTALLED)


class _BadRecord(Exception):
    """Internal: the bytes at an offset are not a valid record (a tear or damage)."""


def _parse_record(buf: bytes, pos: int) -> tuple[int, memoryview, int]:
    """Return ``(type, body, next_pos)`` for the record at ``pos`` or raise ``_BadRecord``."""
    if len(buf) - pos < _HEADER.size:
        raise _BadRecord("partial record header")
    magic, rtype, reserved, length, crc = _HEADER.unpack_from(buf, pos)
    if magic != RECORD_MAGIC:
        raise _BadRecord("no record magic")
    end = pos + _HEADER.size + length
    if end > len(buf):
        raise _BadRecord(f"record of {length} bytes runs past the end of the file")
    body = memoryview(buf)[pos + _HEADER.size : end]
    if zlib.crc32(body, zlib.crc32(_CRC_PART.pack(rtype, reserved, length))) != crc:
        raise _BadRecord("CRC mismatch")
    if rtype not in _RECORD_TYPES or reserved != 0:
        raise _BadRecord(f"unknown record type {rtype}")
    return rtype, body, end


def _valid_record_after(buf: bytes, pos: int) -> int | None:
    """Offset of the first CRC-valid record starting after ``pos``, if any (tear vs. middle damage)."""
    start = pos + 1
    while True:
        start = buf.find(RECORD_MAGIC, start)
        if start < 0:
            return None
        try:
            _parse_record(buf, start)
            return start
        except _BadRecord:
            start += 1


def _fsync_dir(path: Path) -> None:
    # Makes file creations/renames/deletions in the directory durable (POSIX; not possible on Windows).
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_file_atomically(path: Path, data: bytes) -> None:
    """Write temp, fsync, rename over ``path``, fsync the directory: readers see all or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class _Segment:
    __slots__ = ("seq", "path", "max_index")

    def __init__(self, seq: int, path: Path, max_index: int = 0) -> None:
        self.seq = seq
        self.path = path
        # Highest entry index ever written into this segment: once compaction passes it, nothing in the
        # segment is live any more.
        self.max_index = max_index


class DurableStorage(EntryIndex):
    """The durable ``LogStorage``: write-ahead log segments plus atomically written snapshot files.

    Reads are served from memory (every entry after the compaction point is kept as an ``Entry``). Not
    thread-safe: one caller at a time, e.g. a driver that runs its whole persist step (appends, hard
    state, ``sync()``) in a worker thread while the core waits for it. After a failed write or fsync the
    instance refuses further use (``StorageClosedError``): reopen it to recover from what is on disk.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> None:
        if segment_bytes < 1024:
            raise ValueError(f"segment_bytes must be at least 1024, got {segment_bytes}")
        self._dir = Path(directory)
        self._segment_bytes = segment_bytes
        # Entries carry every replicated command (key hashes, task configs): owner only, whatever the umask.
        fsutil.private_dir(self._dir)

        self._hard_state = HardState()
        self._snapshot: Snapshot | None = None
        self._snapshot_installed = False  # only read at open
        self._base_index = 0
        self._base_term = 0
        self._base_voters: frozenset[str] | None = None
        self._entries: list[Entry] = []
        # Indices (ascending) of stored entries carrying a voter set, and those sets: voters at any index
        # by bisection instead of a backwards scan.
        self._conf_indexes: list[int] = []
        self._conf_voters: list[frozenset[str]] = []

        self._segments: list[_Segment] = []
        self._fd = -1
        self._size = 0  # bytes in the active (last) segment
        self._dirty = False  # written since the last fsync
        self._dir_dirty = False  # a segment was created since the last fsync
        self._failed: str | None = None
        self._lock_fd = -1
        self.fsyncs = 0  # statistics: fsyncs of the active segment so far

        self._lock()
        try:
            fsutil.private_files(self._dir, "LOCK", "wal-*.log", "snap-*.snap")
            self._open()
        except BaseException:
            self._release()
            raise

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def directory(self) -> Path:
        return self._dir

    # --- write side -----------------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append ``entries``; everything stored from ``entries[0].index`` on is replaced first."""
        self._check_writable()
        if not entries:
            return
        first = entries[0].index
        for offset, entry in enumerate(entries):
            if entry.index != first + offset:
                raise ValueError(f"entries are not contiguous: index {entry.index} at position {offset}")
        if first > self.last_index() + 1:
            raise ValueError(f"gap: appending at {first} but last index is {self.last_index()}")
        if first <= self._base_index:
            # Already covered by the compacted prefix/snapshot: keep only the part after it.
            entries = entries[self._base_index + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        # Encode and decode the voter sets before writing, so a malformed config entry raises here instead
        # of leaving a record on disk that the in-memory state does not reflect.
        truncating = first <= self.last_index()
        data = _encode_entries(entries, REC_REPLACE if truncating else REC_ENTRIES)
        confs = self._confs_of(entries)
        self._write(data)
        if truncating:
            self._truncate_from(first)
        active = self._segments[-1]
        active.max_index = max(active.max_index, entries[-1].index)
        self._extend(entries, confs)

    def set_hard_state(self, hs: HardState) -> None:
        """Record ``hs``; durable after the next ``sync()``."""
        self._check_writable()
        if hs == self._hard_state:
            return
        self._write(_encode_hard_state(hs))
        self._hard_state = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log with ``snap`` (a received snapshot); older snapshots are ignored.

        Durable on return: the snapshot file first, then a checkpoint segment that resets the log to it.
        """
        self._check_writable()
        if self._snapshot is not None and snap.index <= self._snapshot.index:
            return
        snap = Snapshot(index=snap.index, term=snap.term, voters=frozenset(snap.voters), data=snap.data)
        self._store_snapshot(snap, installed=True)
        self._base_index, self._base_term, self._base_voters = snap.index, snap.term, snap.voters
        self._entries = []
        self._conf_indexes, self._conf_voters = [], []
        if self._hard_state.commit < snap.index:
            self._hard_state = HardState(self._hard_state.term, self._hard_state.vote, snap.index)
        self._checkpoint()

    def create_snapshot(self, index: int, data: bytes) -> Snapshot:
        """Durably record the application's state ``data`` as of applied ``index`` and return it."""
        self._check_writable()
        if self._snapshot is not None and index < self._snapshot.index:
            raise ValueError(f"snapshot at {index} is older than the stored one at {self._snapshot.index}")
        if index > self.last_index():
            raise ValueError(f"snapshot at {index} beyond last index {self.last_index()}")
        term = self.term(index)
        snap = Snapshot(index=index, term=term, voters=self._voters_at(index) or frozenset(), data=data)
        self._store_snapshot(snap, installed=False)
        return snap

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (a snapshot should cover them); then ``first_index() == index+1``."""
        self._check_writable()
        if index <= self._base_index:
            return
        if index > self.last_index():
            raise ValueError(f"cannot compact to {index}: last index is {self.last_index()}")
        voters = self._voters_at(index)
        term = self.term(index)
        self._write(_encode_compact(index, term, voters, reset=False))
        self._compact_to(index, term, voters)
        self._maybe_checkpoint()

    def sync(self) -> None:
        """Make everything written so far durable: one fsync however many writes came before."""
        self._check_writable()
        if not (self._dirty or self._dir_dirty):
            return
        try:
            if self._dirty:
                os.fsync(self._fd)
                self.fsyncs += 1
            if self._dir_dirty:
                _fsync_dir(self._dir)
        except OSError as exc:
            # After a failed fsync the page cache may have dropped the dirty pages: retrying could report
            # success for data that never reached the disk, so refuse further use.
            self._failed = f"fsync failed: {exc}"
            raise
        self._dirty = self._dir_dirty = False

    def close(self) -> None:
        """Sync (when still healthy) and release the files. Idempotent."""
        if self._fd < 0 and self._lock_fd < 0:
            return
        try:
            if self._failed is None and self._fd >= 0:
                self.sync()
        finally:
            self._release()
            self._failed = self._failed or "closed"

    def __del__(self) -> None:
        # An instance dropped without close() (e.g. a simulated crash) must not keep the lock, or the
        # directory could never be reopened in this process. No sync: a crash would not have synced either.
        if getattr(self, "_lock_fd", -1) >= 0 or getattr(self, "_fd", -1) >= 0:
            self._release()

    def __enter__(self) -> DurableStorage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DurableStorage({str(self._dir)!r}, first={self.first_index()}, last={self.last_index()}, "
            f"segments={len(self._segments)})"
        )

    # --- in-memory state transitions (shared by the live path and replay) ------------------------------

    @staticmethod
    def _confs_of(entries: list[Entry]) -> list[tuple[int, frozenset[str]]]:
        confs = []
        for entry in entries:
            if entry.kind != "normal":
                voters = voters_from_entry(entry)
                if voters is not None:
                    confs.append((entry.index, voters))
        return confs

    def _extend(self, entries: list[Entry], confs: list[tuple[int, frozenset[str]]]) -> None:
        self._entries.extend(entries)
        for index, voters in confs:
            self._conf_indexes.append(index)
            self._conf_voters.append(voters)

    def _truncate_from(self, index: int) -> None:
        del self._entries[index - self._base_index - 1 :]
        for segment in self._segments:
            # What a segment held from index on is dead now, so compaction up to index - 1 frees it.
            segment.max_index = min(segment.max_index, index - 1)
        cut = bisect_left(self._conf_indexes, index)
        del self._conf_indexes[cut:], self._conf_voters[cut:]

    def _compact_to(self, index: int, term: int, voters: frozenset[str] | None) -> None:
        del self._entries[: index - self._base_index]
        cut = bisect_right(self._conf_indexes, index)
        del self._conf_indexes[:cut], self._conf_voters[:cut]
        self._base_index, self._base_term, self._base_voters = index, term, voters

    def _voters_at(self, index: int) -> frozenset[str] | None:
        k = bisect_right(self._conf_indexes, index)
        return self._conf_voters[k - 1] if k else self._base_voters

    # --- files ----------------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise StorageClosedError(f"storage at {self._dir} is unusable: {self._failed}")

    def _write(self, data: bytes) -> None:
        if self._size >= self._segment_bytes:
            self._roll()
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            # Cut a partial record off so later records do not land behind garbage; if even that fails the
            # file's tail is unknown and the storage must not be used further.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._failed = f"write failed and could not be undone: {exc}"
            raise
        self._size += len(data)
        self._dirty = True

    def _segment_path(self, seq: int) -> Path:
        return self._dir / f"wal-{seq:020d}.log"

    def _roll(self) -> None:
        # The old segment is fsynced before the new one exists: otherwise the kernel could write the new
        # segment's pages first and a crash would leave a torn record in a segment that is not the last,
        # which replay must (and does) treat as damage in the middle of the log.
        seq = self._segments[-1].seq + 1
        segment = _Segment(seq, self._segment_path(seq))
        try:
            os.fsync(self._fd)
            fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            os.close(self._fd)
            self._fd = fd
            self._segments.append(segment)
            _write_all(self._fd, SEGMENT_MAGIC)
        except OSError as exc:
            self._failed = f"starting segment {segment.path.name} failed: {exc}"
            raise
        self._size = len(SEGMENT_MAGIC)
        self._dirty = self._dir_dirty = True

    def _maybe_checkpoint(self) -> None:
        """Rewrite the live state once compaction has made enough whole segments dead."""
        dead = [s for s in self._segments[:-1] if s.max_index <= self._base_index]
        if not dead:
            return
        dead_bytes = sum(s.path.stat().st_size for s in dead)
        live_bytes = sum(len(e.data) + _ENTRY_HEAD.size for e in self._entries)
        # Rewriting costs the live tail; do it only when it frees at least as much, so the total work stays
        # linear in what was appended while the disk holds at most about twice the live state + a segment.
        if dead_bytes >= live_bytes:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Write the whole live state as a new segment, then delete all older segments."""
        parts = [
            SEGMENT_MAGIC,
            _encode_compact(self._base_index, self._base_term, self._base_voters, reset=True),
            _encode_hard_state(self._hard_state),
        ]
        if self._entries:
            # Several records keep each one far below the 4 GiB a record length can express.
            for lo in range(0, len(self._entries), _CHECKPOINT_CHUNK):
                parts.append(_encode_entries(self._entries[lo : lo + _CHECKPOINT_CHUNK]))
        seq = self._segments[-1].seq + 1
        segment = _Segment(seq, self._segment_path(seq), max_index=self.last_index())
        data = b"".join(parts)
        try:
            _write_file_atomically(segment.path, data)
            os.close(self._fd)
            self._fd = -1
            old, self._segments = self._segments, [segment]
            for stale in old:
                stale.path.unlink()
            _fsync_dir(self._dir)
            self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._failed = f"checkpoint failed: {exc}"
            raise
        self._size = len(data)
        self._dirty = self._dir_dirty = False

    def _store_snapshot(self, snap: Snapshot, installed: bool) -> None:
        path = self._dir / f"snap-{snap.index:020d}-{snap.term:020d}.snap"
        try:
            _write_file_atomically(path, _encode_snapshot(snap, installed))
        except OSError as exc:
            self._failed = f"writing snapshot {path.name} failed: {exc}"
            raise
        self._snapshot = snap
        for other in self._dir.iterdir():
            if _SNAPSHOT_RE.match(other.name) and other.name != path.name:
                other.unlink()

    def _lock(self) -> None:
        self._lock_fd = os.open(self._dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is None:
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise StorageLockedError(
                f"raft log directory {self._dir} is in use by another DurableStorage (LOCK is held); "
                "stop the other process or point this one at its own --data-dir"
            ) from None
        except OSError as exc:
            # Some network filesystems do not support flock; the log still works, just unguarded.
            log.warning("cannot lock %s (%s); continuing without the single-writer guard", self._dir, exc)

    def _release(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1

    # --- opening and replay ---------------------------------------------------------------------------

    def _open(self) -> None:
        for leftover in sorted([*self._dir.glob("wal-*.log.tmp"), *self._dir.glob("snap-*.snap.tmp")]):
            # A crash interrupted an atomic write before its rename: the previous version is intact.
            log.warning("removing leftover temporary file %s (interrupted write)", leftover)
            leftover.unlink()
        self._load_snapshot()

        segments = []
        for path in self._dir.iterdir():
            match = _SEGMENT_RE.match(path.name)
            if match:
                segments.append(_Segment(int(match.group(1)), path))
        segments.sort(key=lambda s: s.seq)
        if not segments:
            segment = _Segment(1, self._segment_path(1))
            fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, SEGMENT_MAGIC)
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self._dir)
            segments = [segment]

        start = self._replay_start(segments)
        for stale in segments[:start]:
            # An interrupted checkpoint: the newer RESET segment supersedes these.
            log.info("removing %s, superseded by checkpoint %s", stale.path.name, segments[start].path.name)
            stale.path.unlink()
        self._segments = segments[start:]
        for i, segment in enumerate(self._segments):
            self._replay_segment(segment, last=i == len(self._segments) - 1)
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        self._reconcile_snapshot()

    def _load_snapshot(self) -> None:
        found = []
        for path in self._dir.iterdir():
            match = _SNAPSHOT_RE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        if not found:
            return
        found.sort()
        newest = found[-1][1]
        self._snapshot, self._snapshot_installed = _decode_snapshot(newest.read_bytes(), newest)
        for _, older in found[:-1]:
            # A crash came between writing the newest snapshot and deleting its predecessor.
            older.unlink()

    def _replay_start(self, segments: list[_Segment]) -> int:
        for i in range(len(segments) - 1, 0, -1):
            with open(segments[i].path, "rb") as f:
                head = f.read(len(SEGMENT_MAGIC) + _HEADER.size + _COMPACT.size)
            fields = head[len(SEGMENT_MAGIC) :]
            if not head.startswith(SEGMENT_MAGIC) or len(fields) < _HEADER.size + _COMPACT.size:
                continue
            magic, rtype = fields[0:2], fields[2]
            flags = fields[_HEADER.size + _COMPACT.size - 1]
            # Checkpoints are renamed into place after an fsync, so a RESET first record means the whole
            # segment is intact; CRC is still verified when it is replayed.
            if magic == RECORD_MAGIC and rtype == REC_COMPACT and flags & COMPACT_RESET:
                return i
        return 0

    def _replay_segment(self, segment: _Segment, last: bool) -> None:
        buf = segment.path.read_bytes()
        if not buf.startswith(SEGMENT_MAGIC):
            if last and SEGMENT_MAGIC.startswith(buf.rstrip(b"\0")):
                # Created but its header never reached the disk (crash right after a roll).
                log.warning("log segment %s has an incomplete header; reinitialising it", segment.path)
                self._truncate_file(segment.path, 0, SEGMENT_MAGIC)
                return
            raise LogCorruptionError(f"{segment.path} is not a DTF raft log segment (bad magic)")
        pos = len(SEGMENT_MAGIC)
        while pos < len(buf):
            try:
                rtype, body, end = _parse_record(buf, pos)
            except _BadRecord as exc:
                self._handle_bad_record(segment, buf, pos, str(exc), last)
                return
            try:
                self._replay_record(rtype, body, segment)
            except (ValueError, IndexError, struct.error, UnicodeDecodeError, KeyError) as err:
                raise LogCorruptionError(
                    f"{segment.path} at offset {pos}: record passes its CRC but is inconsistent with the "
                    f"log before it ({err}); the log was written by something else or is damaged"
                ) from None
            pos = end

    def _handle_bad_record(self, segment: _Segment, buf: bytes, pos: int, reason: str, last: bool) -> None:
        later = _valid_record_after(buf, pos)
        if not last or later is not None:
            where = (
                f"a valid record follows at offset {later}" if later is not None else "later segments follow"
            )
            raise LogCorruptionError(
                f"raft log {segment.path} is damaged at offset {pos} ({reason}) and {where}: this is not a "
                "torn tail from a crash, so acknowledged entries may be lost. Restore the directory from a "
                "backup or wipe it and let the node rejoin from its peers."
            )
        log.warning(
            "raft log %s: torn tail at offset %d (%s); dropping %d unsynced bytes",
            segment.path,
            pos,
            reason,
            len(buf) - pos,
        )
        self._truncate_file(segment.path, pos)

    @staticmethod
    def _truncate_file(path: Path, size: int, content: bytes = b"") -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            if content:
                os.lseek(fd, size, os.SEEK_SET)
                _write_all(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _replay_record(self, rtype: int, body: memoryview, segment: _Segment) -> None:
        if rtype == REC_ENTRIES or rtype == REC_REPLACE:
            first, count = _ENTRIES_HEAD.unpack_from(body, 0)
            if rtype == REC_REPLACE:
                if not self._base_index < first <= self.last_index():
                    raise ValueError(
                        f"replace from {first} outside {self.first_index()}..{self.last_index()}"
                    )
                self._truncate_from(first)
            elif first != self.last_index() + 1:
                raise ValueError(f"entries start at {first} but the log ends at {self.last_index()}")
            pos = _ENTRIES_HEAD.size
            entries = []
            unpack = _ENTRY_HEAD.unpack_from
            for index in range(first, first + count):
                term, kind, size = unpack(body, pos)
                pos += _ENTRY_HEAD.size
                data = bytes(body[pos : pos + size])
                if len(data) != size:
                    raise ValueError("entry data runs past the record")
                pos += size
                entries.append(Entry(term=term, index=index, kind=_KIND_NAMES[kind], data=data))
            if pos != len(body):
                raise ValueError("trailing bytes after the entries")
            self._extend(entries, self._confs_of(entries))
            if count:
                segment.max_index = max(segment.max_index, first + count - 1)
        elif rtype == REC_HARD_STATE:
            term, commit = _HARD_STATE.unpack_from(body, 0)
            (size,) = _U16.unpack_from(body, _HARD_STATE.size)
            raw_vote = bytes(body[_HARD_STATE.size + 2 :])
            if len(raw_vote) != (0 if size == _NO_VOTE else size):
                raise ValueError("hard state vote length mismatch")
            vote = None if size == _NO_VOTE else raw_vote.decode()
            self._hard_state = HardState(term=term, vote=vote, commit=commit)
        else:
            index, term, flags = _COMPACT.unpack_from(body, 0)
            voters, _ = _decode_voters(body, _COMPACT.size)
            if flags & COMPACT_RESET:
                self._entries = []
                self._conf_indexes, self._conf_voters = [], []
                self._base_index, self._base_term, self._base_voters = index, term, voters
            else:
                if not self._base_index < index <= self.last_index() or self.term(index) != term:
                    raise ValueError(f"compaction to {index} (term {term}) does not match the stored log")
                self._compact_to(index, term, voters)

    def _reconcile_snapshot(self) -> None:
        snap = self._snapshot
        # Only a received snapshot resets the log. Its file is flagged as such because the log cannot tell:
        # a snapshot the application created may legitimately be ahead of the compaction point.
        if snap is None or not self._snapshot_installed or snap.index <= self._base_index:
            return
        # apply_snapshot wrote the snapshot file, then crashed before the checkpoint that resets the log.
        log.warning("raft log %s: finishing the install of snapshot %d", self._dir, snap.index)
        self._base_index, self._base_term, self._base_voters = snap.index, snap.term, snap.voters
        self._entries = []
        self._conf_indexes, self._conf_voters = [], []
        if self._hard_state.commit < snap.index:
            self._hard_state = HardState(self._hard_state.term, self._hard_state.vote, snap.index)
        self._checkpoint()


FileLogStorage = DurableStorage
