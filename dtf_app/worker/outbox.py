"""The worker's durable outbox: task outcomes wait here, in a local DuckDB file, until the leader acks them.

Step 4 of the data flow (DESIGN.md §3): an outcome is written here *before* it is sent, and its row is
deleted only after the coordinator's ``ack`` for ``(task_id, attempt)``. A worker that crashes, restarts
or loses its coordinator re-sends whatever is still here, so execution results are never lost between
"the process finished" and "the cluster recorded it".

DuckDB is built for bulk work, not for many tiny transactions, and its calls block: every public method
is async, runs in a worker thread (``trio.to_thread.run_sync``) and handles a whole batch in one
statement — one insert for 500 outcomes, one delete for 500 acks. A ``trio.Lock`` keeps the single
connection to one thread at a time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import trio

from dtf_app import fsutil

OutboxKey = tuple[str, int]
"""``(task_id, attempt)``: what an outcome is acknowledged by."""

_SCHEMA = "CREATE TABLE IF NOT EXISTS outbox(task_id VARCHAR, attempt INTEGER, payload JSON, created DOUBLE)"


class OutboxError(Exception):
    """The outbox file cannot be opened or used (the message names the file and the reason)."""


class Outbox:
    """Unacknowledged task outcomes in a DuckDB file; open with ``await Outbox.open(path)``.

    The table has no primary key on purpose: ingest speed matters more than uniqueness here, and a
    duplicate row is harmless (the coordinator records each ``(task_id, attempt)`` once and ``remove_many``
    deletes every copy).
    """

    def __init__(self, connection: Any, path: Path) -> None:
        self._connection = connection
        self.path = path
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Outbox:
        """Open (creating it and its folder if needed) the outbox file at ``path``."""
        return await trio.to_thread.run_sync(cls.open_sync, Path(path))

    @classmethod
    def open_sync(cls, path: Path) -> Outbox:
        """Blocking form of :meth:`open`, for callers outside trio (tools, tests)."""
        import duckdb  # heavy import kept out of module import time (dtf --version must stay instant)

        try:
            fsutil.private_dir(path.parent, tighten=False)  # an existing folder may be the user's (--db-path)
            connection = duckdb.connect(str(path))
            # Unacknowledged outcomes are nobody else's business; later files (.wal): the node's umask.
            fsutil.private_files(path.parent, path.name, path.name + ".wal")
        except (OSError, duckdb.Error) as exc:
            # The usual cause is a second worker using the same db file, which DuckDB's file lock refuses.
            raise OutboxError(
                f"cannot open the worker outbox {path}: {exc} "
                "(is another worker using the same --db-path / --worker-id?)"
            ) from exc
        connection.execute(_SCHEMA)
        return cls(connection, path)

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
            await self._transaction(statements)

    async def pending(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The stored outcomes, oldest first (at most ``limit`` when given)."""
        sql = "SELECT payload FROM outbox ORDER BY created, task_id, attempt"
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
        """Close the connection now (idempotent)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _run(self, sql: str, params: list[Any], *, fetch: bool = False) -> list[tuple[Any, ...]]:
        async with self._lock:
            connection = self._open_connection()

            def work() -> list[tuple[Any, ...]]:
                cursor = connection.execute(sql, params)
                return cursor.fetchall() if fetch else []

            return await trio.to_thread.run_sync(work)

    async def _transaction(self, statements: list[tuple[str, list[Any]]]) -> None:
        async with self._lock:
            connection = self._open_connection()

            def work() -> None:
                if len(statements) == 1:  # a single statement is its own transaction already
                    connection.execute(*statements[0])
                    return
                connection.execute("BEGIN TRANSACTION")
                try:
                    for sql, params in statements:
                        connection.execute(sql, params)
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")

            await trio.to_thread.run_sync(work)

    def _open_connection(self) -> Any:
        if self._connection is None:
            raise OutboxError(f"the worker outbox {self.path} is closed")
        return self._connection
