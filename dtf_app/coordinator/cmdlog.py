"""The single-node durable command log and the group-committing replicator over it.

A coordinator acknowledges a command only after it is on disk: :meth:`Replicator.propose` returns once
the record is written and fsynced, then applied to the state machine. Proposals that arrive while an
fsync is in flight are written together by the next one (group commit), so a burst of submissions costs
one fsync, not one each.

File format (``commands.log``): records of ``[u32 length][u32 crc32][payload]`` where the payload is the
JSON ``{"i": index, "c": command}``. A torn or corrupt tail (a crash mid-write) is cut off at open. The
state snapshot (``state.snapshot``) is written atomically (temp file, fsync, rename, fsync dir) and then
the log restarts empty, which bounds replay time.

The Raft issue swaps this module for a replicator over the Raft log with the same ``propose`` surface;
the state machine (state.py) does not change.
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

from dtf_app.coordinator import bulk
from dtf_app.coordinator.state import State

log = logging.getLogger("dtf.coordinator.log")

_HEADER = struct.Struct("<II")
LOG_NAME = "commands.log"
SNAPSHOT_NAME = "state.snapshot"


class CommandLog:
    """Append-only command records with CRCs, plus an atomically replaced state snapshot."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOG_NAME
        self.snapshot_path = self.directory / SNAPSHOT_NAME
        self._fd: int | None = None
        self.last_index = 0
        self.entries_since_snapshot = 0
        self.bytes_since_snapshot = 0

    def open(self) -> tuple[bytes | None, list[tuple[int, dict[str, Any]]]]:
        """Open (creating) the log; return the snapshot bytes (or None) and the records after it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        snapshot = self.snapshot_path.read_bytes() if self.snapshot_path.exists() else None
        snap_index = json.loads(snapshot)["applied_index"] if snapshot else 0
        records: list[tuple[int, dict[str, Any]]] = []
        good_end = 0
        if self.path.exists():
            data = self.path.read_bytes()
            pos = 0
            while pos + _HEADER.size <= len(data):
                length, crc = _HEADER.unpack_from(data, pos)
                body = data[pos + _HEADER.size: pos + _HEADER.size + length]
                if len(body) != length or zlib.crc32(body) != crc:
                    break
                record = json.loads(body)
                if record["i"] > snap_index:
                    records.append((record["i"], record["c"]))
                pos += _HEADER.size + length
                good_end = pos
            if good_end != len(data):
                # A crash mid-write leaves a partial record; nothing after it was acknowledged.
                log.warning("command log %s: cut a torn tail of %d bytes at offset %d",
                            self.path, len(data) - good_end, good_end)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        os.ftruncate(self._fd, good_end)
        self.last_index = records[-1][0] if records else snap_index
        self.entries_since_snapshot = len(records)
        self.bytes_since_snapshot = good_end
        return snapshot, records

    def append(self, commands: list[dict[str, Any]]) -> int:
        """Write records (not yet durable: call :meth:`sync`); returns the last index written."""
        assert self._fd is not None, "open() first"
        chunks = []
        for command in commands:
            self.last_index += 1
            body = json.dumps({"i": self.last_index, "c": command}, separators=(",", ":"), default=str).encode()
            chunks.append(_HEADER.pack(len(body), zlib.crc32(body)))
            chunks.append(body)
        data = b"".join(chunks)
        os.write(self._fd, data)
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
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.snapshot_path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
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
