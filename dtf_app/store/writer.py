"""The coordinator's DuckDB store: one writer task, batched transactions, exactly-once rows.

Applying command-log entry ``index`` yields store events; the coordinator hands them to :meth:`Store.put`
(non-blocking) and the single :meth:`Store.run` task writes whatever has accumulated in ONE transaction,
together with the highest log index of the batch in ``store_meta``. After a crash the coordinator replays
its log and puts only the events of entries above :meth:`Store.open`'s answer, so every row lands once.

DuckDB is built for bulk: a transaction per event would cap ingest at a few hundred rows a second. Each
batch is therefore turned into column lists and inserted with one ``INSERT ... SELECT`` over a registered
dict of numpy object arrays (DuckDB scans those natively, without pandas or pyarrow). Measured on the
2-core dev machine (duckdb 2.0.0), upserting into a table with a primary key: ``executemany`` managed
120-370 rows/s (one prepared execution per row plus index maintenance); multi-row ``VALUES`` with bound
parameters ~11k rows/s; one JSON document unnested with ``from_json`` 15k rows/s on the 11-column task
table (81k on a 5-column one); the registered arrays 100k-340k rows/s. The whole Store (put, collapse,
convert, write in a thread) takes 20,000 task events (5,000 tasks x 4 states) in 0.2-0.4 s. Without
numpy (DuckDB will not scan a plain dict of lists) the writer falls back to multi-row ``VALUES``.
``bench/store_bench.py`` compares the paths side by side.

Batches are gathered for ``flush_interval`` (0.5 s) or until ``max_batch`` events, not per log entry:
DuckDB's fixed cost per statement and transaction dominates small batches (measured with duckdb 2.0.0 on
the 2-core dev machine: ~5 ms of CPU for a one-row ``INSERT OR REPLACE`` even in memory, 10-35 ms for a
transaction of one log entry's events). The events of one Raft entry (a dispatch round, a batch of
results) are a few dozen rows, so writing every 50 ms cost a coordinator most of a core under load, and
every replica of a cluster pays it. A longer window also collapses a task's states (pending, assigned,
running, completed) into one upsert. Nothing reads DuckDB without :meth:`flush` first, so the window only
delays rows nobody has asked for yet; the Raft log holds them durably meanwhile.

DuckDB calls block, so every call runs in a worker thread (``trio.to_thread.run_sync``), one batch at a
time, while new events keep accumulating in the trio thread. Reads use their own cursor per query so a
long analytic query never waits for, or blocks, the writer.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from dtf_app.store import schema

log = logging.getLogger(__name__)

EVENT_KINDS: dict[str, str] = {"task": "task", "worker": "worker", "history": "row", "result": "result",
                               "leadership": "row", "health_alert": "row", "scaling": "row"}
"""Event kind -> the key that holds its payload."""


class StoreError(RuntimeError):
    """The store cannot be opened or has stopped writing; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------- converters
# Values are normalised to one Python type per column before DuckDB sees them: DuckDB infers an object
# column's type from its values, and a column of mixed ints and floats is read as INTEGER (2.5 -> 2).

def _to_micros(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        value = value.timestamp()
    # Unix seconds as float; TIMESTAMP is microseconds, and make_timestamp(BIGINT) builds it exactly.
    return round(float(value) * 1_000_000)


def _to_json(value: Any) -> str | None:
    # Strict: a NaN would be stored as non-standard JSON text; it fails here and the row is quarantined.
    return None if value is None else json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)


def _to_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _to_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _to_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _to_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "TIMESTAMP": _to_micros, "JSON": _to_json, "VARCHAR": _to_str, "INTEGER": _to_int,
    "BIGINT": _to_int, "DOUBLE": _to_float, "BOOLEAN": _to_bool,
}


def _select_expr(column: str, sql_type: str) -> str:
    if sql_type == "TIMESTAMP":
        return f"make_timestamp(CAST({column} AS BIGINT))"
    return f"CAST({column} AS {sql_type})"


class _TableWriter:
    """Bulk insert of dict rows into one table through a registered dict of numpy arrays."""

    def __init__(self, table: str, upsert: bool) -> None:
        columns = schema.TABLES[table]
        self.table = table
        self.names = list(columns)
        types = [schema.column_type(t) for t in columns.values()]
        self.converters = [_CONVERTERS[t] for t in types]
        self.view = f"_dtf_batch_{table}"
        verb = "INSERT OR REPLACE INTO" if upsert else "INSERT INTO"
        quoted = ", ".join(f'"{name}"' for name in self.names)
        exprs = ", ".join(_select_expr(f"c{i}", t) for i, t in enumerate(types))
        self.sql = f"{verb} {table} ({quoted}) SELECT {exprs} FROM {self.view}"

    def write(self, con: Any, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = [[convert(row.get(name)) for row in rows]
                   for name, convert in zip(self.names, self.converters, strict=True)]
        np = _numpy()
        if np is None:
            self._write_values(con, columns)
            return
        arrays = {}
        for i, values in enumerate(columns):
            # np.empty + slice assignment keeps one object per cell even when a value is a sequence.
            array = np.empty(len(values), dtype=object)
            array[:] = values
            arrays[f"c{i}"] = array
        con.register(self.view, arrays)
        try:
            con.execute(self.sql)
        except BaseException:
            # The transaction is aborted now and unregister fails until the ROLLBACK; its error must not
            # hide the real one (a bad value is a data error, skippable; "transaction aborted" is not).
            _quiet_unregister(con, self.view)
            raise
        con.unregister(self.view)

    def _write_values(self, con: Any, columns: list[list[Any]]) -> None:
        """Without numpy: multi-row VALUES with bound parameters (~10k rows/s, still one transaction)."""
        width = len(columns)
        row_marks = "(" + ", ".join("?" * width) + ")"
        rows = list(zip(*columns, strict=True))
        for start in range(0, len(rows), _VALUES_CHUNK):
            chunk = rows[start:start + _VALUES_CHUNK]
            names = ", ".join(f"c{i}" for i in range(width))
            values = ", ".join([row_marks] * len(chunk))
            sql = self.sql.replace(f"FROM {self.view}", f"FROM (VALUES {values}) AS v({names})")
            con.execute(sql, [value for row in chunk for value in row])


def _add_result(result: dict[str, Any], results: list[dict[str, Any]], tests: list[dict[str, Any]],
                benchmarks: list[dict[str, Any]]) -> None:
    """A result row, and its per-test and per-benchmark rows, into the batch's lists."""
    results.append(result)
    common = {"result_id": result.get("result_id"), "task_id": result.get("task_id"),
              "worker_id": result.get("worker_id"), "timestamp": result.get("timestamp")}
    for test in result.get("tests") or []:
        tests.append({**test, **common})
    for bench in result.get("benchmarks") or []:
        row = {**bench, **common}
        if row.get("hardware") is None:
            row["hardware"] = result.get("hardware_metrics")
        benchmarks.append(row)


def _quiet_unregister(con: Any, view: str) -> None:
    try:
        con.unregister(view)
    except Exception:  # still registered: the next unregister (after ROLLBACK) or register replaces it
        log.debug("store: unregister %s failed", view, exc_info=True)


def _is_data_error(exc: BaseException) -> bool:
    """True for errors caused by one event's content (skippable); False for I/O, memory, fatal or SQL bugs."""
    import duckdb

    if isinstance(exc, duckdb.Error):
        return isinstance(exc, duckdb.DataError | duckdb.IntegrityError | duckdb.InvalidInputException)
    # Python-side conversion of a value (int("x"), a dict changed while serialised, ...).
    return isinstance(exc, TypeError | ValueError | OverflowError | RuntimeError)


def _brief(exc: BaseException) -> str:
    """An exception in one printable line (DuckDB messages quote the offending value)."""
    return ascii(f"{type(exc).__name__}: {exc}")[1:-1][:500]


_VALUES_CHUNK = 1000
_NUMPY: list[Any] = []


def _numpy() -> Any:
    """numpy when installed (the fast path), else None; looked up once."""
    if not _NUMPY:
        try:
            import numpy
        except ImportError:
            numpy = None  # type: ignore[assignment]
        _NUMPY.append(numpy)
    return _NUMPY[0]


_WRITERS = {
    "distributed_tasks": _TableWriter("distributed_tasks", upsert=True),
    "worker_nodes": _TableWriter("worker_nodes", upsert=True),
    "task_execution_history": _TableWriter("task_execution_history", upsert=False),
    "results": _TableWriter("results", upsert=False),
    "test_results": _TableWriter("test_results", upsert=False),
    "benchmark_results": _TableWriter("benchmark_results", upsert=False),
    "leadership_history": _TableWriter("leadership_history", upsert=False),
    "health_alerts": _TableWriter("health_alerts", upsert=False),
    "scaling_recommendations": _TableWriter("scaling_recommendations", upsert=False),
}

Batch = list[tuple[int | None, list[dict[str, Any]]]]


def validate_event(event: Any) -> None:
    """Raise ValueError naming what is wrong unless ``event`` is a store event the writer understands."""
    if not isinstance(event, dict):
        raise ValueError(f"store event must be a dict, got {type(event).__name__}")
    kind = event.get("kind")
    key = EVENT_KINDS.get(kind)  # type: ignore[arg-type]
    if key is None:
        raise ValueError(f"store event kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
    payload = event.get(key)
    if not isinstance(payload, dict):
        raise ValueError(f"a {kind!r} store event needs a dict under {key!r}")
    ident = {"task": "task_id", "worker": "worker_id"}.get(kind)
    if ident is not None and not isinstance(payload.get(ident), str):
        raise ValueError(f"a {kind!r} store event needs a string {ident!r}")


class Store:
    """The coordinator's DuckDB file: ``open()``, then run ``run()`` in a nursery and ``put()`` events."""

    def __init__(self, db_path: str | os.PathLike[str], *, flush_interval: float = 0.5,
                 max_batch: int = 50_000, quarantine_path: str | os.PathLike[str] | None = None) -> None:
        self.db_path = Path(db_path)
        # Events that cannot be written (a value DuckDB refuses) go here, one JSON line each with the log
        # index, instead of stopping the writer: the command log still holds them, and the node serves.
        self.quarantine_path = Path(quarantine_path) if quarantine_path else self.db_path.with_name(
            self.db_path.name + ".quarantine.jsonl")
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self._con: Any = None        # spawns the per-query read cursors, under _cursor_lock
        self._write_con: Any = None  # the writer's own cursor: only ever used by one thread at a time
        self._cursor_lock = threading.Lock()
        self._queue: Batch = []
        self._queued_events = 0
        self._oldest_put = 0.0
        self._put_seq = 0          # number of put() calls so far
        self._committed_seq = 0    # put() calls whose events are committed (or reported failed)
        self._waiters: list[tuple[int, trio.Event]] = []
        self._data = trio.Event()
        self._urgent = trio.Event()
        self._write_lock = trio.Lock()
        self._read_limiter = trio.CapacityLimiter(4)
        self._running = False
        self._failure: BaseException | None = None
        self._last_applied = 0
        self._next_history_id = 1
        self._written = 0
        self._failed = 0
        self._quarantined = 0
        self._batches = 0
        self._last_batch_events = 0
        self._last_batch_seconds = 0.0

    # ------------------------------------------------------------------------------------------ lifecycle
    def open(self) -> int:
        """Create the directory and schema if needed; returns the last applied log index stored (0 if new)."""
        if self._con is not None:
            return self._last_applied
        import duckdb

        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory for the DuckDB store {self.db_path}: {exc}") from None
        if self.db_path.is_dir():
            raise StoreError(f"the DuckDB store path {self.db_path} is a directory; give a file path "
                             "(--db-path FILE) or a data directory (--data-dir DIR)")
        try:
            con = duckdb.connect(str(self.db_path))
        except duckdb.Error as exc:
            raise StoreError(f"cannot open the DuckDB store {self.db_path}: {exc} (is another DTF process "
                             "using this file? each coordinator needs its own --db-path)") from None
        try:
            schema.ensure_schema(con)
            row = con.execute("SELECT value FROM store_meta WHERE key = 'last_applied_index'").fetchone()
            self._last_applied = int(row[0]) if row else 0
            (max_id,) = con.execute("SELECT coalesce(max(id), 0) FROM task_execution_history").fetchone()
            self._next_history_id = int(max_id) + 1
        except schema.SchemaError as exc:
            con.close()
            raise StoreError(str(exc)) from None
        except BaseException:
            con.close()
            raise
        self._con = con
        self._write_con = con.cursor()
        return self._last_applied

    def close(self) -> None:
        """Write anything still queued (when no batch is in flight) and close the file."""
        if self._con is None:
            return
        if self._queue and not self._write_lock.locked():
            batch, self._queue, self._queued_events = self._queue, [], 0
            try:
                self._write_sync(batch)
                self._committed_seq = self._put_seq
            except Exception:
                log.exception("store: could not write %d queued entries while closing", len(batch))
                self._queue[:0] = batch  # what was not committed stays visible in statistics()
                self._queued_events = sum(len(events) for _, events in self._queue)
        if self._write_lock.locked():
            # A worker thread is inside a transaction on this connection: closing under it is unsafe.
            # Leave the connection to be released when the thread is done and the object is collected.
            log.warning("store: close() with a batch in flight; %d queued entries not written",
                        self._queued_events)
            return
        self._write_con.close()
        self._con.close()
        self._con = self._write_con = None

    # ------------------------------------------------------------------------------------------ writing
    def put(self, index: int | None, events: list[dict[str, Any]]) -> None:
        """Queue the events of log entry ``index`` (None: not from the log, always written). Never blocks."""
        for event in events:
            validate_event(event)
        if not events and index is None:
            return
        if not self._queue:
            self._oldest_put = time.monotonic()
        self._queue.append((index, events))
        self._queued_events += len(events)
        self._put_seq += 1
        self._data.set()
        if self._queued_events >= self.max_batch:
            self._urgent.set()

    def covered_index(self) -> int:
        """The highest log index whose events are committed or queued here (0 for a new store)."""
        queued = [index for index, _ in self._queue if index is not None]
        return max([self._last_applied, *queued])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The single writer loop; on cancellation it writes what is queued (shielded) before returning."""
        if self._con is None:
            raise StoreError("Store.open() must be called before Store.run()")
        if self._running:
            raise StoreError("Store.run() is already running; the store has exactly one writer task")
        self._running = True
        self._failure = None
        task_status.started()
        try:
            while True:
                while not self._queue:
                    self._data = trio.Event()
                    await self._data.wait()
                # Gather for up to flush_interval after the oldest queued event, unless the batch is
                # already big enough or somebody is waiting in flush().
                delay = self._oldest_put + self.flush_interval - time.monotonic()
                if delay > 0 and self._queued_events < self.max_batch and not self._waiters:
                    self._urgent = trio.Event()
                    with trio.move_on_after(delay):
                        await self._urgent.wait()
                await self._write_batch()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    while self._queue and self._failure is None:
                        await self._write_batch()
                finally:
                    self._running = False
                    self._release_waiters()

    async def flush(self) -> None:
        """Return once every event put so far is committed.

        With the writer task running this waits for it (StoreError if it failed meanwhile); without it
        (tests, shutdown paths) the batch is written in this task and a write error propagates as is.
        """
        target = self._put_seq
        while self._committed_seq < target:
            if self._running:
                done = trio.Event()
                self._waiters.append((target, done))
                self._urgent.set()
                self._data.set()
                await done.wait()
                if self._failure is not None and self._committed_seq < target:
                    raise StoreError(f"the store writer stopped: {self._failure!r}") from self._failure
            else:
                await self._write_batch()

    async def _write_batch(self) -> None:
        async with self._write_lock:
            if not self._queue:
                return
            if self._con is None:
                raise StoreError("the store is closed")
            batch, self._queue = self._queue, []
            self._queued_events = 0
            target = self._put_seq
            try:
                # Not cancellable (abandon_on_cancel=False): a transaction is never left half-done.
                await trio.to_thread.run_sync(self._write_sync, batch)
            except BaseException as exc:
                # Put the batch back so nothing is silently lost, and tell the waiters.
                self._queue[:0] = batch
                self._queued_events += sum(len(events) for _, events in batch)
                self._failure = exc
                self._release_waiters()
                raise
            self._committed_seq = target
            self._failure = None
            self._release_waiters()

    def _release_waiters(self) -> None:
        keep = []
        for target, done in self._waiters:
            if self._committed_seq >= target or self._failure is not None or not self._running:
                done.set()
            else:
                keep.append((target, done))
        self._waiters = keep

    # ------------------------------------------------------------------------------------------ thread side
    def _write_sync(self, batch: Batch) -> None:
        """Write one batch in one transaction (runs in a worker thread).

        Entries are removed from ``batch`` as they are committed, so after an exception the caller
        re-queues exactly the entries that are not in the database yet.
        """
        started = time.perf_counter()
        last_index = self._last_applied
        for index, _events in batch:
            if index is not None and index > last_index:
                last_index = index
        events = [event for _, entry in batch for event in entry]
        con = self._write_con
        written = failed = 0
        try:
            self._next_history_id = self._write_events(con, events, last_index)
            self._last_applied = last_index
            written = len(events)
            batch.clear()
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            # One bad event must not cost the whole batch (or stall the writer forever on replay): write
            # entry by entry, and quarantine, loudly, only the events that fail on their own.
            log.warning("store: batch of %d events failed (%s); retrying entry by entry", len(events),
                        _brief(exc))
            while batch:
                index, entry = batch[0]
                mark = max(self._last_applied, index or 0)
                ok, bad = self._write_or_quarantine(con, index, entry)
                written += ok
                failed += bad
                self._write_events(con, [], mark)  # record the index: replay would fail again
                self._last_applied = mark
                del batch[0]
        finally:
            self._written += written
            self._failed += failed
        self._batches += 1
        self._last_batch_events = len(events)
        self._last_batch_seconds = time.perf_counter() - started

    def _write_or_quarantine(self, con: Any, index: int | None, events: list[dict[str, Any]]) -> tuple[int, int]:
        """Write what can be written of one entry's events; quarantine the rest. Returns (written, quarantined).

        Halves are retried on a data error, so k bad events among n cost O(k log n) transactions, not n.
        The applied index is not moved here (the caller records it once for the whole entry).
        """
        if not events:
            return 0, 0
        try:
            self._next_history_id = self._write_events(con, events, self._last_applied)
            return len(events), 0
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            if len(events) == 1:
                self._quarantine(index, events[0], exc)
                return 0, 1
        half = len(events) // 2
        first = self._write_or_quarantine(con, index, events[:half])
        second = self._write_or_quarantine(con, index, events[half:])
        return first[0] + second[0], first[1] + second[1]

    def _quarantine(self, index: int | None, event: dict[str, Any], exc: BaseException) -> None:
        """Keep an unwritable event in the quarantine file (JSON lines, ASCII) and say so in the log."""
        self._quarantined += 1
        kind = event.get("kind")
        payload = event.get(EVENT_KINDS.get(kind, ""), {}) if isinstance(event, dict) else {}
        ident = payload.get("task_id") or payload.get("worker_id") or payload.get("result_id") or ""
        log.error("store: quarantined a %s event of log entry %s (%s): %s; kept in %s", kind, index,
                  ascii(ident)[:140], _brief(exc), self.quarantine_path)
        line = json.dumps({"log_index": index, "time": time.time(), "error": _brief(exc), "event": event},
                          default=repr, ensure_ascii=True)  # lenient on purpose: keep the value as it was
        try:
            with open(self.quarantine_path, "a", encoding="ascii") as handle:
                handle.write(line + "\n")
        except OSError as os_exc:
            log.error("store: cannot write the quarantine file %s: %s", self.quarantine_path, os_exc)

    def _write_events(self, con: Any, events: list[dict[str, Any]], last_index: int) -> int:
        """Write events and the applied index in one transaction; returns the next history id."""
        tasks: dict[str, dict[str, Any]] = {}
        workers: dict[str, dict[str, Any]] = {}
        history: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        tests: list[dict[str, Any]] = []
        benchmarks: list[dict[str, Any]] = []
        leadership: list[dict[str, Any]] = []
        # Rows rebuilt from a snapshot (``if_absent``): written only where the table lacks them.
        absent_results: list[dict[str, Any]] = []
        absent_leadership: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        scaling: list[dict[str, Any]] = []
        next_id = self._next_history_id
        for event in events:
            kind = event["kind"]
            if event.get("if_absent") and kind in ("result", "leadership"):
                (absent_results if kind == "result" else absent_leadership).append(
                    event["result" if kind == "result" else "row"])
                continue
            if kind == "task":
                # Collapse: the last state of a task in the batch wins (an upsert may not touch one key
                # twice in one statement, and the intermediate states are history's job anyway).
                task = event["task"]
                tasks.pop(task["task_id"], None)
                tasks[task["task_id"]] = task
            elif kind == "worker":
                worker = event["worker"]
                workers.pop(worker["worker_id"], None)
                workers[worker["worker_id"]] = worker
            elif kind == "history":
                history.append({**event["row"], "id": next_id})
                next_id += 1
            elif kind == "leadership":
                leadership.append(event["row"])
            elif kind == "health_alert":
                alerts.append(event["row"])
            elif kind == "scaling":
                scaling.append(event["row"])
            else:
                _add_result(event["result"], results, tests, benchmarks)
        con.execute("BEGIN TRANSACTION")
        try:
            if absent_results:
                ids = [r.get("result_id") for r in absent_results]
                have = {row[0] for row in con.execute(
                    "SELECT result_id FROM results WHERE result_id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
                    [ids]).fetchall()}
                for result in absent_results:
                    if result.get("result_id") not in have:
                        _add_result(result, results, tests, benchmarks)
            if absent_leadership:
                have_terms = set(con.execute("SELECT term, leader_id FROM leadership_history").fetchall())
                leadership.extend(row for row in absent_leadership
                                  if (row.get("term"), row.get("leader_id")) not in have_terms)
            _WRITERS["distributed_tasks"].write(con, list(tasks.values()))
            _WRITERS["worker_nodes"].write(con, list(workers.values()))
            _WRITERS["task_execution_history"].write(con, history)
            _WRITERS["results"].write(con, results)
            _WRITERS["test_results"].write(con, tests)
            _WRITERS["benchmark_results"].write(con, benchmarks)
            _WRITERS["leadership_history"].write(con, leadership)
            _WRITERS["health_alerts"].write(con, alerts)
            _WRITERS["scaling_recommendations"].write(con, scaling)
            if last_index != self._last_applied:
                con.execute("INSERT OR REPLACE INTO store_meta VALUES ('last_applied_index', ?)", [str(last_index)])
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except Exception:  # a fatal error may have invalidated the connection: report the first error
                log.debug("store: rollback failed", exc_info=True)
            for writer in _WRITERS.values():
                _quiet_unregister(con, writer.view)
            raise
        return next_id

    @asynccontextmanager
    async def held(self) -> AsyncIterator[int]:
        """Hold the writer with every event put so far committed; yields the last applied index.

        For a consistent backup: what is queued is written on the event loop's own thread, so no log entry
        can be applied in between and, inside the block, the file is the state as of this instant. The
        writer stays paused until the block ends (put() keeps queueing, nothing is lost).
        """
        async with self._write_lock:
            if self._con is None:
                raise StoreError("the store is closed")
            if self._queue:
                batch, self._queue = self._queue, []
                self._queued_events = 0
                target = self._put_seq
                try:
                    self._write_sync(batch)
                except BaseException as exc:
                    self._queue[:0] = batch
                    self._queued_events += sum(len(events) for _, events in batch)
                    self._failure = exc
                    self._release_waiters()
                    raise
                self._committed_seq = target
                self._release_waiters()
            yield self._last_applied

    def checkpoint_sync(self) -> None:
        """Fold the WAL into the database file (call inside :meth:`held`, from one thread)."""
        self._write_con.execute("CHECKPOINT")

    # ------------------------------------------------------------------------------------------ reading
    async def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Run a read query in a thread on its own cursor; rows as dicts, JSON columns decoded."""
        if self._con is None:
            raise StoreError("the store is not open")
        return await trio.to_thread.run_sync(self._query_sync, sql, params, limiter=self._read_limiter)

    def _query_sync(self, sql: str, params: list[Any] | None) -> list[dict[str, Any]]:
        # A DuckDB connection object is not thread-safe, but cursors made from it are independent
        # connections to the same database: make one per query, serialising only their creation.
        with self._cursor_lock:
            cursor = self._con.cursor()
        try:
            cursor.execute(sql, params) if params else cursor.execute(sql)
            description = cursor.description or []
            rows = cursor.fetchall()
        finally:
            cursor.close()
        names = [d[0] for d in description]
        json_columns = [i for i, d in enumerate(description) if str(d[1]) == "JSON"]
        out = []
        for row in rows:
            record = dict(zip(names, row, strict=True))
            for i in json_columns:
                value = row[i]
                if isinstance(value, str):
                    record[names[i]] = json.loads(value)
            out.append(record)
        return out

    def statistics(self) -> dict[str, Any]:
        """Writer counters: queued, written, failed, batches, last_applied and the last batch's size/time."""
        return {
            "queued": self._queued_events, "written": self._written, "failed": self._failed,
            "quarantined": self._quarantined,
            "batches": self._batches, "last_applied": self._last_applied,
            "last_batch_events": self._last_batch_events,
            "last_batch_seconds": round(self._last_batch_seconds, 6),
            "running": self._running,
        }

