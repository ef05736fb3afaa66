"""The worker's durable outbox: task outcomes wait here, in a local DuckDB file, until the leader acks them.

Step 4 of the data flow (DESIGN.md §3): an outcome is written here *before* it is sent, and its row is
deleted only after the coordinator's ``ack`` for ``(task_id, attempt)``. A worker that crashes, restarts
or loses its coordinator re-sends whatever is still here, so execution results are never lost between
"the process finished" and "the cluster recorded it".

DuckDB is built for bulk work, not for many tiny transactions, and its calls block: every public method
is async, runs in a worker thread (``trio.to_thread.run_sync``) and handles a whole batch in one
statement — one insert for 500 outcomes, one delete for 500 acks. A ``trio.Lock`` keeps the single
connection to one thread at a time.

Start-up: importing DuckDB and opening its file is the most expensive step before a worker can say hello
(about a fifth of its CPU time to registration), and the hello only needs to know which outcomes wait in
the file. :meth:`Outbox.claim` therefore takes the outbox without opening DuckDB: it locks
``<file>.lock`` (so a second worker on the same file is still refused at once) and :meth:`known_empty`
answers from two cheap facts — no file at all (a fresh worker), or the ``<file>.empty`` marker, which
exists only while the file holds no outcome. The marker is removed (durably) before any insert and created
after a commit that leaves the table empty, so a crash can only lose the marker (the next start then
opens the file, the slow but exact path), never leave a wrong one behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import trio

from dtf_app import fsutil

OutboxKey = tuple[str, int]
"""``(task_id, attempt)``: what an outcome is acknowledged by."""

_SCHEMA = "CREATE TABLE IF NOT EXISTS outbox(task_id VARCHAR, attempt INTEGER, payload JSON, created DOUBLE)"
EMPTY_MARKER_SUFFIX = ".empty"
"""``<file>.empty`` exists only while the outbox file holds no outcome (see the module docstring)."""
LOCK_SUFFIX = ".lock"
_IN_USE_HINT = "(is another worker using the same --db-path / --worker-id?)"


class OutboxError(Exception):
    """The outbox file cannot be opened or used (the message names the file and the reason)."""


class Outbox:
    """Unacknowledged task outcomes in a DuckDB file; ``await Outbox.open(path)``, or ``Outbox.claim(path)``.

    The table has no primary key on purpose: ingest speed matters more than uniqueness here, and a
    duplicate row is harmless (the coordinator records each ``(task_id, attempt)`` once and ``remove_many``
    deletes every copy).
    """

    def __init__(self, connection: Any, path: Path, *, file_lock: Any = None) -> None:
        self._connection = connection
        self.path = path
        self._lock = trio.Lock()
        self._file_lock = file_lock
        self._closed = False
        self._rows: int | None = None
        """Rows in the file, counted at open and kept up to date by every statement (None: not open)."""
        self._marker = path.with_name(path.name + EMPTY_MARKER_SUFFIX)

    @classmethod
    async def open(cls, path: str | Path) -> Outbox:
        """Open (creating it and its folder if needed) the outbox file at ``path``."""
        return await trio.to_thread.run_sync(cls.open_sync, Path(path))

    @classmethod
    def open_sync(cls, path: Path) -> Outbox:
        """Blocking form of :meth:`open`, for callers outside trio (tools, tests)."""
        outbox = cls(None, Path(path))
        outbox._connect_sync()
        return outbox

    @classmethod
    def claim(cls, path: str | Path) -> Outbox:
        """The outbox at ``path`` for one worker, locked for it but not opened: DuckDB opens on first use.

        Raises OutboxError when the folder is unusable or another running worker holds the outbox. Use
        :meth:`known_empty` to learn, without opening, whether the file can hold outcomes, and
        :meth:`connect` to open it.
        """
        from dtf_app.worker.identity import try_lock  # identity imports config; keep this module light

        path = Path(path)
        try:
            fsutil.private_dir(path.parent, tighten=False)  # an existing folder may be the user's (--db-path)
            handle = open(path.with_name(path.name + LOCK_SUFFIX), "a+")  # held: the lock lives with the worker
            # State files are the owner's alone, also when an older run or a restore left them loose.
            fsutil.private_files(path.parent, path.name + LOCK_SUFFIX, path.name + EMPTY_MARKER_SUFFIX)
        except OSError as exc:
            raise OutboxError(f"cannot open the worker outbox {path}: {exc.strerror or exc}") from exc
        if not try_lock(handle):
            handle.close()
            raise OutboxError(f"cannot open the worker outbox {path}: another running worker holds "
                              f"{handle.name} {_IN_USE_HINT}")
        return cls(None, path, file_lock=handle)

    def known_empty(self) -> bool:
        """True when the outbox certainly holds no outcome, decided without opening DuckDB if it is closed."""
        if self._connection is not None:
            return self._rows == 0
        wal = self.path.with_name(self.path.name + ".wal")
        return self._marker.exists() or not (self.path.exists() or wal.exists())

    @property
    def is_open(self) -> bool:
        """Whether the DuckDB file is open now."""
        return self._connection is not None

    async def connect(self) -> list[dict[str, Any]]:
        """Open the DuckDB file if it is not open yet; returns the outcomes found in it by this call.

        Idempotent: a call that finds the file already open returns ``[]``.
        """
        async with self._lock:
            self._check_usable()
            if self._connection is not None:
                return []

            def work() -> list[dict[str, Any]]:
                self._connect_sync()
                rows = self._connection.execute(_PENDING_SQL).fetchall() if self._rows else []
                return [json.loads(payload) for (payload,) in rows]

            return await trio.to_thread.run_sync(work)

    def _connect_sync(self) -> None:
        import duckdb  # heavy import kept out of module import time (dtf --version must stay instant)

        path = self.path
        try:
            fsutil.private_dir(path.parent, tighten=False)
            connection = duckdb.connect(str(path))
            # Unacknowledged outcomes are nobody else's business; later files (.wal): the node's umask.
            fsutil.private_files(path.parent, path.name, path.name + ".wal", path.name + EMPTY_MARKER_SUFFIX)
        except (OSError, duckdb.Error) as exc:
            # The usual cause is a second worker using the same db file, which DuckDB's file lock refuses.
            raise OutboxError(f"cannot open the worker outbox {path}: {exc} {_IN_USE_HINT}") from exc
        try:
            connection.execute(_SCHEMA)
            self._rows = int(connection.execute("SELECT count(*) FROM outbox").fetchall()[0][0])
            self._set_marker(self._rows == 0)
        except (OSError, duckdb.Error) as exc:
            connection.close()
            raise OutboxError(f"cannot use the worker outbox {path}: {exc}") from exc
        self._connection = connection

    def _set_marker(self, empty: bool) -> None:
        """Create or remove ``<file>.empty``; a removal is made durable before the caller inserts."""
        if empty:
            if not self._marker.exists():
                # Not synced: a marker lost in a crash only costs the next start the slow path.
                os.close(fsutil.open_private(self._marker, os.O_WRONLY | os.O_CREAT))
        elif self._marker.exists():
            self._marker.unlink(missing_ok=True)
            _fsync_dir(self._marker.parent)

    async def add_many(self, outcomes: Sequence[dict[str, Any]]) -> None:
        """Store outcomes (each with ``task_id`` and ``attempt``) in one insert."""
        await self.apply(add=outcomes)

    async def apply(self, *, add: Sequence[dict[str, Any]] = (), remove: Iterable[OutboxKey] = ()) -> None:
        """Insert ``add`` and delete the ``remove`` keys in one transaction (one commit, one WAL sync).

        The agent's single outbox writer calls this with everything that piled up since its last call, so
        the fixed cost of a DuckDB commit (a few ms) is paid per batch, not per outcome or per ack.
        """
        statements: list[tuple[str, list[Any]]] = []
        if add:
            # unnest over list parameters is one vectorised statement; executemany would be one insert
            # per row (about 100x slower for a batch of 500).
            statements.append((
                "INSERT INTO outbox SELECT unnest($1::VARCHAR[]), unnest($2::INTEGER[]), "
                "unnest($3::VARCHAR[]), unnest($4::DOUBLE[])",
                [
                    [str(outcome["task_id"]) for outcome in add],
                    [int(outcome["attempt"]) for outcome in add],
                    [json.dumps(outcome, separators=(",", ":"), default=str) for outcome in add],
                    [time.time()] * len(add),
                ],
            ))
        key_list = list(remove)
        if key_list:
            statements.append((
                "DELETE FROM outbox USING (SELECT unnest($1::VARCHAR[]) AS ack_task_id, "
                "unnest($2::INTEGER[]) AS ack_attempt) AS acked "
                "WHERE outbox.task_id = acked.ack_task_id AND outbox.attempt = acked.ack_attempt",
                [[str(task_id) for task_id, _ in key_list], [int(attempt) for _, attempt in key_list]],
            ))
        if statements:
            await self._transaction(statements, inserting=bool(add))

    async def pending(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The stored outcomes, oldest first (at most ``limit`` when given)."""
        if self._connection is None and not self._closed and self.known_empty():
            return []  # nothing to read, and no reason to open DuckDB for it
        sql = _PENDING_SQL
        params: list[Any] = []
        if limit is not None:
            sql += " LIMIT $1"
            params.append(int(limit))
        rows = await self._run(sql, params, fetch=True)
        return [json.loads(payload) for (payload,) in rows]

    async def remove_many(self, keys: Iterable[OutboxKey]) -> None:
        """Delete the outcomes acknowledged by ``(task_id, attempt)`` keys, in one statement."""
        await self.apply(remove=keys)

    async def count(self) -> int:
        """How many outcomes are waiting for an ack."""
        rows = await self._run("SELECT count(*) FROM outbox", [], fetch=True)
        return int(rows[0][0])

    async def aclose(self) -> None:
        """Close the file; waits for a statement in flight so DuckDB is never closed under a thread."""
        async with self._lock:
            self.close_sync()

    def close_sync(self) -> None:
        """Close the connection and release the worker's lock now (idempotent)."""
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._file_lock is not None:
            self._file_lock.close()  # closing the file drops the lock
            self._file_lock = None

    def _check_usable(self) -> None:
        if self._closed:
            raise OutboxError(f"the worker outbox {self.path} is closed")

    async def _run(self, sql: str, params: list[Any], *, fetch: bool = False) -> list[tuple[Any, ...]]:
        async with self._lock:
            self._check_usable()

            def work() -> list[tuple[Any, ...]]:
                if self._connection is None:
                    self._connect_sync()
                cursor = self._connection.execute(sql, params)
                return cursor.fetchall() if fetch else []

            return await trio.to_thread.run_sync(work)

    async def _transaction(self, statements: list[tuple[str, list[Any]]], *, inserting: bool) -> None:
        async with self._lock:
            self._check_usable()

            def work() -> None:
                if self._connection is None:
                    self._connect_sync()
                connection = self._connection
                if inserting:
                    self._set_marker(False)  # gone (durably) before any row can be committed
                counts: list[int] = []
                if len(statements) == 1:  # a single statement is its own transaction already
                    counts.append(int(connection.execute(*statements[0]).fetchall()[0][0]))
                else:
                    connection.execute("BEGIN TRANSACTION")
                    try:
                        for sql, params in statements:
                            counts.append(int(connection.execute(sql, params).fetchall()[0][0]))
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                    connection.execute("COMMIT")
                # Both statements report their row count: inserted rows first, deleted rows last.
                inserted = counts[0] if inserting else 0
                deleted = counts[-1] if len(counts) > int(inserting) else 0
                if self._rows is not None:
                    self._rows += inserted - deleted
                    if self._rows <= 0:
                        self._rows = 0
                        self._set_marker(True)

            await trio.to_thread.run_sync(work)


_PENDING_SQL = "SELECT payload FROM outbox ORDER BY created, task_id, attempt"


def _fsync_dir(folder: Path) -> None:
    """Make a removal in ``folder`` durable (POSIX; Windows has no directory handles to sync)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
