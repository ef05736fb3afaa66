"""The coordinator's DuckDB store: schema, batched writer, exactly-once index, analytics queries.

Every test uses a real DuckDB file in tmp_path; nothing is mocked except, in one test, the absence of
numpy (to exercise the writer's fallback path on a machine that has numpy).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from dtf_app.store import queries, schema, writer
from dtf_app.store.writer import Store, StoreError

T0 = 1_700_000_000.0  # a fixed unix time so timestamps are checkable exactly

CONTRACT = {
    "worker_nodes": {"worker_id": "VARCHAR", "hostname": "VARCHAR", "registration_time": "TIMESTAMP",
                     "last_heartbeat": "TIMESTAMP", "status": "VARCHAR", "capabilities": "JSON",
                     "hardware_metrics": "JSON", "tags": "JSON"},
    "distributed_tasks": {"task_id": "VARCHAR", "type": "VARCHAR", "priority": "INTEGER", "status": "VARCHAR",
                          "create_time": "TIMESTAMP", "start_time": "TIMESTAMP", "end_time": "TIMESTAMP",
                          "worker_id": "VARCHAR", "attempts": "INTEGER", "config": "JSON",
                          "requirements": "JSON"},
    "task_execution_history": {"id": "BIGINT", "task_id": "VARCHAR", "worker_id": "VARCHAR",
                               "attempt": "INTEGER", "status": "VARCHAR", "start_time": "TIMESTAMP",
                               "end_time": "TIMESTAMP", "execution_time_seconds": "DOUBLE",
                               "error_message": "VARCHAR", "hardware_metrics": "JSON"},
    "results": {"result_id": "VARCHAR", "task_id": "VARCHAR", "worker_id": "VARCHAR", "test_id": "VARCHAR",
                "timestamp": "TIMESTAMP", "metrics": "JSON", "status": "VARCHAR", "execution_time": "DOUBLE",
                "hardware_metrics": "JSON", "environment": "JSON", "raw_data": "JSON", "metadata": "JSON"},
}


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def task(task_id: str, status: str = "pending", **extra: Any) -> dict[str, Any]:
    doc = {"task_id": task_id, "type": "test", "name": f"name-{task_id}", "priority": 2, "status": status,
           "create_time": T0, "start_time": None, "end_time": None, "worker_id": None, "attempts": 0,
           "config": {"test_file": "tests/x.py", "test_args": ["-q"]}, "requirements": {"hardware": ["cpu"]},
           "dependencies": [], "timeout_seconds": 60.0, "max_retries": 3, "batch_id": "b1", "error": None}
    doc.update(extra)
    return {"kind": "task", "task": doc}


def worker(worker_id: str, hardware: list[str], **extra: Any) -> dict[str, Any]:
    doc = {"worker_id": worker_id, "hostname": f"host-{worker_id}", "registration_time": T0,
           "last_heartbeat": T0 + 5, "status": "online",
           "capabilities": {"hardware": hardware, "cpu": {"cores": 2}}, "hardware_metrics": {"cpu_percent": 3.5},
           "tags": ["lab"], "simulated": False, "max_concurrent_tasks": 4}
    doc.update(extra)
    return {"kind": "worker", "worker": doc}


def history(task_id: str, worker_id: str, status: str, seconds: float, start: float = T0) -> dict[str, Any]:
    return {"kind": "history", "row": {
        "task_id": task_id, "worker_id": worker_id, "attempt": 1, "status": status, "start_time": start,
        "end_time": start + seconds, "execution_time_seconds": seconds,
        "error_message": None if status == "completed" else "boom", "hardware_metrics": {"mem": 1}}}


def result(result_id: str, worker_id: str, *, tests: list[dict[str, Any]] | None = None,
           benchmarks: list[dict[str, Any]] | None = None, status: str = "success", when: float = T0,
           task_type: str = "test") -> dict[str, Any]:
    return {"kind": "result", "result": {
        "result_id": result_id, "task_id": result_id.rsplit("-", 1)[0], "worker_id": worker_id,
        "test_id": f"name-{result_id}", "timestamp": when, "metrics": {"passed": 1}, "status": status,
        "execution_time": 1.25, "hardware_metrics": {"cpu_percent": 50.0}, "environment": {"python": "3.11"},
        "raw_data": {"returncode": 0}, "metadata": {"attempt": 1}, "task_type": task_type,
        "tests": tests or [], "benchmarks": benchmarks or []}}


def bench_row(model: str, batch_size: int, throughput: float, latency: float, precision: str = "fp32",
              backend: str = "numpy") -> dict[str, Any]:
    return {"model": model, "batch_size": batch_size, "precision": precision, "backend": backend,
            "iterations": 10, "latency_ms_mean": latency, "latency_ms_p50": latency, "latency_ms_p90": latency,
            "latency_ms_p99": latency, "throughput": throughput, "memory_peak_mb": 12.5}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "dtf.duckdb"


@pytest.fixture
def store(db_path: Path) -> Any:
    s = Store(db_path)
    assert s.open() == 0
    yield s
    s.close()


@asynccontextmanager
async def running(store: Store) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield nursery
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------- schema
async def test_schema_has_contract_tables_and_columns(store: Store) -> None:
    rows = await store.query("SELECT table_name, column_name, data_type FROM information_schema.columns")
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        found.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
    for table, columns in CONTRACT.items():
        assert table in found, table
        for column, sql_type in columns.items():
            assert found[table].get(column) == sql_type, (table, column, found[table].get(column))
    assert {"nodeid", "outcome", "duration"} <= set(found["test_results"])
    assert {"model", "batch_size", "precision", "latency_ms_mean", "throughput", "memory_peak_mb"} <= set(
        found["benchmark_results"])
    assert found["worker_nodes"]["simulated"] == "BOOLEAN"
    # Hot tables carry no key (ingest speed); the upserted ones do.
    keys = await store.query("SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'")
    assert {row["table_name"] for row in keys} == {"worker_nodes", "distributed_tasks", "store_meta"}


async def test_open_is_idempotent_and_records_schema_version(db_path: Path) -> None:
    for _ in range(2):
        s = Store(db_path)
        assert s.open() == 0
        assert s.open() == 0  # a second open() on the same object is a no-op
        rows = await s.query("SELECT value FROM store_meta WHERE key = 'schema_version'")
        assert rows == [{"value": str(schema.SCHEMA_VERSION)}]
        s.close()


async def test_newer_schema_is_refused_with_a_clear_error(db_path: Path) -> None:
    import duckdb

    Store(db_path).open()
    con = duckdb.connect(str(db_path))
    con.execute("UPDATE store_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="version 99, newer than this DTF"):
        Store(db_path).open()


def test_open_on_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path).open()


def test_put_rejects_malformed_events_with_the_reason(store: Store) -> None:
    with pytest.raises(ValueError, match="kind must be one of task, worker, history, result"):
        store.put(1, [{"kind": "nope"}])
    with pytest.raises(ValueError, match="needs a dict under 'row'"):
        store.put(1, [{"kind": "history"}])
    with pytest.raises(ValueError, match="needs a string 'task_id'"):
        store.put(1, [{"kind": "task", "task": {}}])
    assert store.statistics()["queued"] == 0


# ---------------------------------------------------------------------------------------------- round trips
async def test_task_round_trip(store: Store) -> None:
    async with running(store):
        store.put(1, [task("t1", "running", start_time=T0 + 1, worker_id="w1", attempts=1)])
        await store.flush()
        rows = await store.query("SELECT * FROM distributed_tasks")
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "running" and row["worker_id"] == "w1" and row["attempts"] == 1
    assert row["create_time"] == utc(T0) and row["start_time"] == utc(T0 + 1) and row["end_time"] is None
    assert row["config"] == {"test_file": "tests/x.py", "test_args": ["-q"]}  # JSON decoded
    assert row["requirements"] == {"hardware": ["cpu"]} and row["dependencies"] == []
    assert row["timeout_seconds"] == 60.0 and row["max_retries"] == 3 and row["name"] == "name-t1"


async def test_worker_round_trip_and_upsert(store: Store) -> None:
    async with running(store):
        store.put(1, [worker("w1", ["cpu"], simulated=True)])
        await store.flush()
        store.put(2, [worker("w1", ["cpu", "cuda"], status="offline", simulated=True)])
        await store.flush()
        rows = await store.query("SELECT * FROM worker_nodes")
    assert len(rows) == 1
    assert rows[0]["status"] == "offline" and rows[0]["simulated"] is True
    assert rows[0]["capabilities"]["hardware"] == ["cpu", "cuda"]
    assert rows[0]["last_heartbeat"] == utc(T0 + 5) and rows[0]["tags"] == ["lab"]
    assert rows[0]["max_concurrent_tasks"] == 4


async def test_history_round_trip_assigns_increasing_ids_across_reopen(db_path: Path) -> None:
    s = Store(db_path)
    s.open()
    s.put(1, [history("t1", "w1", "failed", 2.0), history("t1", "w1", "completed", 1.5)])
    await s.flush()
    s.close()
    s = Store(db_path)
    assert s.open() == 1
    s.put(2, [history("t2", "w1", "completed", 0.5)])
    await s.flush()
    rows = await s.query("SELECT * FROM task_execution_history ORDER BY id")
    s.close()
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert [r["status"] for r in rows] == ["failed", "completed", "completed"]
    assert rows[0]["error_message"] == "boom" and rows[0]["hardware_metrics"] == {"mem": 1}
    assert rows[1]["end_time"] == utc(T0 + 1.5) and rows[1]["execution_time_seconds"] == 1.5


async def test_result_round_trip_with_tests_and_benchmarks(store: Store) -> None:
    tests = [{"nodeid": "t.py::a", "outcome": "passed", "duration": 0.1, "message": None},
             {"nodeid": "t.py::b", "outcome": "failed", "duration": 0.2, "message": "assert 1 == 2"}]
    benches = [bench_row("bert", 1, 100.0, 10.0), bench_row("bert", 4, 300.0, 13.0)]
    async with running(store):
        store.put(1, [result("t1-1", "w1", tests=tests, benchmarks=benches, status="partial")])
        await store.flush()
        doc = await queries.get_result(store, "t1-1")
        counts = await store.query("SELECT (SELECT count(*) FROM test_results) AS t, "
                                   "(SELECT count(*) FROM benchmark_results) AS b")
    assert counts == [{"t": 2, "b": 2}]
    assert doc is not None
    assert doc["status"] == "partial" and doc["task_id"] == "t1" and doc["worker_id"] == "w1"
    assert doc["timestamp"] == T0  # queries turn TIMESTAMP back into unix seconds
    assert doc["metrics"] == {"passed": 1} and doc["environment"] == {"python": "3.11"}
    assert [t["outcome"] for t in doc["tests"]] == ["passed", "failed"]
    assert doc["tests"][1]["message"] == "assert 1 == 2"
    assert [b["batch_size"] for b in doc["benchmarks"]] == [1, 4]
    assert doc["benchmarks"][1]["throughput"] == 300.0
    # A benchmark row without its own hardware gets the result's hardware metrics.
    assert doc["benchmarks"][0]["hardware"] == {"cpu_percent": 50.0}
    assert await queries.get_result(store, "missing") is None


async def test_writer_without_numpy_uses_values_fallback(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "_NUMPY", [None])
    benches = [bench_row("t5", b, 10.0 * b, 5.0) for b in range(1, 2500)]  # more than one VALUES chunk
    store.put(1, [task("t1", "completed", end_time=T0 + 3), worker("w1", ["cpu"]),
                  history("t1", "w1", "completed", 3.0), result("t1-1", "w1", benchmarks=benches)])
    await store.flush()
    rows = await store.query("SELECT count(*) AS n, sum(batch_size) AS s FROM benchmark_results")
    assert rows == [{"n": 2499, "s": sum(range(1, 2500))}]
    (t,) = await store.query("SELECT status, end_time, config FROM distributed_tasks")
    assert t == {"status": "completed", "end_time": utc(T0 + 3), "config": {"test_file": "tests/x.py",
                                                                              "test_args": ["-q"]}}


# ---------------------------------------------------------------------------------------------- batching
async def test_task_events_in_one_batch_collapse_to_the_last(store: Store) -> None:
    events = []
    for status in ("pending", "assigned", "running", "completed"):
        events += [task(f"t{i}", status, attempts=1 if status != "pending" else 0) for i in range(3)]
    store.put(7, events[:6])
    store.put(8, events[6:])
    await store.flush()  # no run(): flush writes in this task, one batch
    stats = store.statistics()
    assert stats["batches"] == 1 and stats["written"] == 12 and stats["last_applied"] == 8
    rows = await store.query("SELECT task_id, status, attempts FROM distributed_tasks ORDER BY task_id")
    assert rows == [{"task_id": f"t{i}", "status": "completed", "attempts": 1} for i in range(3)]


async def test_last_applied_index_is_committed_with_the_rows(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(db_path)
    s.open()
    s.put(3, [task("a")])
    await s.flush()

    def disk_full(con: Any, rows: list[dict[str, Any]]) -> None:
        raise OSError(28, "No space left on device")

    # The task rows are written before the results fail: the index must roll back with them.
    monkeypatch.setattr(writer._WRITERS["results"], "write", disk_full)
    s.put(4, [task("b"), result("b-1", "w1")])
    with pytest.raises(OSError, match="No space left"):
        await s.flush()
    assert await s.query("SELECT task_id FROM distributed_tasks") == [{"task_id": "a"}]
    assert await s.query("SELECT value FROM store_meta WHERE key = 'last_applied_index'") == [{"value": "3"}]
    assert s.statistics()["queued"] == 2  # nothing lost: the batch went back to the queue
    monkeypatch.undo()
    await s.flush()
    assert len(await s.query("SELECT * FROM results")) == 1
    s.close()
    assert Store(db_path).open() == 4


async def test_failed_writer_reports_to_flush(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(con: Any, rows: list[dict[str, Any]]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer._WRITERS["distributed_tasks"], "write", disk_full)
    crashed: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            store.put(1, [task("a")])
            with pytest.raises(StoreError, match="writer stopped"):
                await store.flush()
    except* OSError as group:  # run() itself fails loudly: a disk error must not be swallowed
        crashed.extend(group.exceptions)
    assert len(crashed) == 1 and crashed[0].errno == 28
    assert store.statistics()["queued"] == 1 and not store.statistics()["running"]


async def test_a_bad_entry_is_skipped_alone_and_its_index_recorded(store: Store) -> None:
    store.put(1, [task("good1")])
    store.put(2, [task("bad", priority="not a number")])  # int("not a number") fails in that entry only
    store.put(3, [task("good2")])
    await store.flush()
    rows = await store.query("SELECT task_id FROM distributed_tasks ORDER BY task_id")
    assert rows == [{"task_id": "good1"}, {"task_id": "good2"}]
    stats = store.statistics()
    assert stats["failed"] == 1 and stats["written"] == 2 and stats["last_applied"] == 3


async def test_rows_duckdb_refuses_are_quarantined_and_the_rest_of_the_entry_is_written(store: Store) -> None:
    """A lone surrogate (DuckDB cannot encode it) or a NaN in a JSON column: those events alone go to the
    quarantine file with their log index; the writer keeps going and the entry's other rows land."""
    store.put(1, [task("good1"), task("bad-name", name="x\ud800"), task("good2"),
                  history("good1", "w1", "completed", 1.0)])
    store.put(2, [task("bad-json", config={"x": float("nan")}), task("good3")])
    store.put(3, [task("good4")])
    await store.flush()
    rows = await store.query("SELECT task_id FROM distributed_tasks ORDER BY task_id")
    assert rows == [{"task_id": f"good{i}"} for i in range(1, 5)]
    assert len(await store.query("SELECT * FROM task_execution_history")) == 1
    stats = store.statistics()
    assert stats["quarantined"] == 2 and stats["last_applied"] == 3 and stats["written"] == 5
    lines = store.quarantine_path.read_text(encoding="ascii").splitlines()
    import json

    kept = [json.loads(line) for line in lines]
    assert [(k["log_index"], k["event"]["task"]["task_id"]) for k in kept] == [(1, "bad-name"), (2, "bad-json")]
    assert kept[0]["event"]["task"]["name"] == "x\ud800"  # kept as it was, escaped in an ASCII file
    assert "InvalidInputException" in kept[0]["error"]
    # The writer is still usable: a later batch goes through the fast path.
    store.put(4, [task("good5")])
    await store.flush()
    assert store.statistics()["last_applied"] == 4 and store.statistics()["quarantined"] == 2


async def test_fatal_error_mid_fallback_requeues_only_uncommitted_entries(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks_writer = writer._WRITERS["distributed_tasks"]
    original = tasks_writer.write

    def fail_on_good2(con: Any, rows: list[dict[str, Any]]) -> None:
        if [row["task_id"] for row in rows] == ["good2"]:
            raise OSError(5, "I/O error")
        original(con, rows)

    monkeypatch.setattr(tasks_writer, "write", fail_on_good2)
    store.put(1, [task("good1"), history("good1", "w1", "completed", 1.0)])
    store.put(2, [task("bad", priority="not a number")])
    store.put(3, [task("good2")])
    with pytest.raises(OSError, match="I/O error"):
        await store.flush()
    assert store.statistics()["queued"] == 1  # only entry 3 goes back to the queue
    assert store.statistics()["last_applied"] == 2
    monkeypatch.undo()
    await store.flush()
    rows = await store.query("SELECT task_id FROM distributed_tasks ORDER BY task_id")
    assert rows == [{"task_id": "good1"}, {"task_id": "good2"}]
    assert len(await store.query("SELECT * FROM task_execution_history")) == 1  # entry 1 written once
    assert store.statistics()["last_applied"] == 3


async def test_open_returns_the_index_so_replay_writes_each_row_once(db_path: Path) -> None:
    log = [(i, [history(f"t{i}", "w1", "completed", 1.0), task(f"t{i}", "completed")]) for i in range(1, 11)]
    s = Store(db_path)
    s.open()
    for index, events in log[:6]:
        s.put(index, events)
    await s.flush()
    s.close()  # "crash" after entry 6 was stored
    s = Store(db_path)
    applied = s.open()
    assert applied == 6
    for index, events in log:  # the coordinator replays the whole log, skipping what the store holds
        if index > applied:
            s.put(index, events)
    await s.flush()
    rows = await s.query("SELECT task_id, count(*) AS n FROM task_execution_history GROUP BY ALL")
    assert len(rows) == 10 and all(r["n"] == 1 for r in rows)
    assert s.statistics()["last_applied"] == 10
    s.close()


async def test_events_without_index_are_written_and_leave_the_index_alone(db_path: Path) -> None:
    s = Store(db_path)
    s.open()
    s.put(5, [worker("w1", ["cpu"])])
    await s.flush()
    s.put(None, [worker("w1", ["cpu"], last_heartbeat=T0 + 60, hardware_metrics={"cpu_percent": 99.0})])
    await s.flush()
    rows = await s.query("SELECT last_heartbeat, hardware_metrics FROM worker_nodes")
    assert rows == [{"last_heartbeat": utc(T0 + 60), "hardware_metrics": {"cpu_percent": 99.0}}]
    s.close()
    s = Store(db_path)
    assert s.open() == 5
    # Heartbeat updates are written even when the store is "ahead" of the caller's log position.
    s.put(None, [worker("w2", ["cpu"])])
    await s.flush()
    assert len(await s.query("SELECT * FROM worker_nodes")) == 2
    s.close()


async def test_20000_task_events_through_the_writer(store: Store) -> None:
    # The hot path: 5,000 tasks through pending -> assigned -> running -> completed, 50 events per entry.
    events = [task(f"t{i:05d}", status, attempts=1) for status in ("pending", "assigned", "running", "completed")
              for i in range(5000)]
    started = time.perf_counter()
    async with running(store):
        for index, start in enumerate(range(0, len(events), 50), start=1):
            store.put(index, events[start:start + 50])
            if index % 20 == 0:
                await trio.sleep(0)  # let the writer take batches while events keep coming
        await store.flush()
        elapsed = time.perf_counter() - started
        stats = store.statistics()
        rows = await store.query("SELECT status, count(*) AS n FROM distributed_tasks GROUP BY ALL")
    print(f"\n20,000 task events -> 5,000 rows in {elapsed:.3f} s over {stats['batches']} batches "
          f"({20000 / elapsed:,.0f} events/s)")
    assert rows == [{"status": "completed", "n": 5000}]
    assert stats["written"] == 20000 and stats["last_applied"] == 400 and stats["queued"] == 0


async def test_queries_run_while_the_writer_writes(store: Store) -> None:
    seen: list[int] = []

    async def reader() -> None:
        while True:
            (row,) = await store.query("SELECT count(*) AS n FROM task_execution_history")
            seen.append(row["n"])
            await trio.sleep(0)

    async with running(store) as nursery:
        nursery.start_soon(reader)
        for index in range(1, 201):
            store.put(index, [history(f"t{index}-{i}", "w1", "completed", 1.0) for i in range(50)])
            if index % 10 == 0:
                await trio.sleep(0.005)
        await store.flush()
        (final,) = await store.query("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM task_execution_history")
    assert final == {"n": 10000, "ids": 10000}
    assert seen and seen == sorted(seen)  # readers only ever see whole committed batches, growing
    assert all(n % 50 == 0 for n in seen)


async def test_cancelling_run_flushes_what_is_queued(store: Store) -> None:
    store.flush_interval = 60.0  # the writer would otherwise wait a minute before writing
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        store.put(1, [task("a"), history("a", "w1", "completed", 1.0)])
        store.put(2, [task("b")])
        await trio.sleep(0.05)
        assert store.statistics()["queued"] == 3  # still gathering
        nursery.cancel_scope.cancel()
    assert store.statistics()["queued"] == 0 and not store.statistics()["running"]
    assert len(await store.query("SELECT * FROM distributed_tasks")) == 2
    assert await store.query("SELECT value FROM store_meta WHERE key = 'last_applied_index'") == [{"value": "2"}]


async def test_max_batch_wakes_the_writer_early(store: Store) -> None:
    store.flush_interval = 60.0
    store.max_batch = 10
    async with running(store):
        store.put(1, [task(f"t{i}") for i in range(10)])
        with trio.fail_after(10):
            while store.statistics()["written"] < 10:
                await trio.sleep(0.01)
    assert store.statistics()["batches"] == 1


async def test_run_requires_open_and_a_single_writer(db_path: Path) -> None:
    s = Store(db_path)
    with pytest.raises(StoreError, match="open"):
        await s.run()
    s.open()
    async with running(s):
        with pytest.raises(StoreError, match="already running"):
            await s.run()
    s.close()


# ---------------------------------------------------------------------------------------------- analytics
DAY = 86400.0


@pytest.fixture
async def analytics(store: Store) -> Store:
    """Two workers, benchmark and test results over two days, and a task execution history."""
    store.put(1, [
        worker("w1", ["cpu"]), worker("w2", ["cuda", "cpu"]),
        task("t1", "completed", type="benchmark", config={"model": "bert"}),
        task("t2", "completed", type="benchmark", config={"model": "t5"}),
        history("t1", "w1", "failed", 1.0), history("t1", "w1", "completed", 2.0),
        history("t2", "w2", "completed", 4.0, start=T0 + DAY),
        result("rb1-1", "w1", benchmarks=[bench_row("bert", 1, 100.0, 10.0), bench_row("bert", 1, 110.0, 12.0)],
               task_type="benchmark"),
        result("rb2-1", "w2", benchmarks=[bench_row("bert", 4, 400.0, 20.0, "fp16", "torch")],
               task_type="benchmark", status="partial"),
        result("rb3-1", "w2", benchmarks=[bench_row("t5", 1, 50.0, 30.0)], when=T0 + DAY, task_type="benchmark"),
        result("rt1-1", "w1", status="failure", tests=[
            {"nodeid": "t.py::a", "outcome": "passed", "duration": 0.1, "message": None},
            {"nodeid": "t.py::b", "outcome": "failed", "duration": 0.3, "message": "assert 0"},
            {"nodeid": "t.py::c", "outcome": "skipped", "duration": 0.0, "message": "skip"}]),
        result("rt2-1", "w2", when=T0 + DAY, tests=[
            {"nodeid": "t.py::a", "outcome": "passed", "duration": 0.2, "message": None},
            {"nodeid": "t.py::b", "outcome": "passed", "duration": 0.1, "message": None}]),
    ])
    await store.flush()
    return store


def by_key(data: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {group["key"]: group for group in data["groups"]}


async def test_aggregate_benchmarks_for_every_level(analytics: Store) -> None:
    async def agg(level: str, **filters: Any) -> dict[Any, dict[str, Any]]:
        data = await queries.aggregate(analytics, result_type="benchmark", aggregation_level=level, filters=filters)
        assert data["result_type"] == "benchmark" and data["aggregation_level"] == level
        return by_key(data)

    model = await agg("model")
    assert set(model) == {"bert", "t5"}
    bert = model["bert"]
    assert bert["count"] == 3 and bert["throughput_min"] == 100.0 and bert["throughput_max"] == 400.0
    assert bert["throughput_mean"] == pytest.approx(610 / 3) and bert["throughput_p50"] == 110.0
    assert bert["latency_ms_mean"] == pytest.approx(14.0) and bert["latency_ms_p50"] == 12.0
    assert bert["throughput_stddev"] == pytest.approx(statistics.stdev([100.0, 110.0, 400.0]))
    assert model["t5"]["count"] == 1 and model["t5"]["throughput_stddev"] is None  # one row: no spread
    assert {k: v["count"] for k, v in (await agg("batch_size")).items()} == {1: 3, 4: 1}
    assert {k: v["count"] for k, v in (await agg("precision")).items()} == {"fp16": 1, "fp32": 3}
    assert {k: v["count"] for k, v in (await agg("backend")).items()} == {"numpy": 3, "torch": 1}
    assert {k: v["count"] for k, v in (await agg("worker")).items()} == {"w1": 2, "w2": 2}
    hardware = await agg("hardware")
    assert {k: v["count"] for k, v in hardware.items()} == {"cpu": 2, "cpu,cuda": 2}
    assert hardware["cpu,cuda"]["throughput_max"] == 400.0
    assert {k: v["count"] for k, v in (await agg("test")).items()} == {
        "name-rb1-1": 2, "name-rb2-1": 1, "name-rb3-1": 1}
    assert {k: v["count"] for k, v in (await agg("status")).items()} == {"partial": 1, "success": 3}
    assert {k: v["count"] for k, v in (await agg("day")).items()} == {"2023-11-14": 3, "2023-11-15": 1}
    # Filters narrow the rows; query-string values arrive as strings.
    assert set(await agg("model", model="t5")) == {"t5"}
    assert {k: v["count"] for k, v in (await agg("precision", batch_size="1")).items()} == {"fp32": 3}
    assert set(await agg("model", since="2023-11-15")) == {"t5"}
    assert set(await agg("model", until=str(T0 + 1))) == {"bert"}


async def test_aggregate_tests_for_every_level(analytics: Store) -> None:
    async def agg(level: str, **filters: Any) -> dict[Any, dict[str, Any]]:
        return by_key(await queries.aggregate(analytics, result_type="test", aggregation_level=level,
                                              filters=filters))

    tests = await agg("test")
    assert tests["t.py::a"]["count"] == 2 and tests["t.py::a"]["passed"] == 2
    assert tests["t.py::a"]["pass_rate"] == 1.0 and tests["t.py::a"]["duration_mean"] == pytest.approx(0.15)
    assert tests["t.py::b"]["failed"] == 1 and tests["t.py::b"]["pass_rate"] == 0.5
    assert tests["t.py::c"]["skipped"] == 1 and tests["t.py::c"]["pass_rate"] is None  # only skips
    workers = await agg("worker")
    assert workers["w1"]["count"] == 3 and workers["w1"]["pass_rate"] == 0.5  # skip left out
    assert workers["w2"]["pass_rate"] == 1.0
    assert {k: v["count"] for k, v in (await agg("hardware")).items()} == {"cpu": 3, "cpu,cuda": 2}
    assert {k: v["count"] for k, v in (await agg("status")).items()} == {"failure": 3, "success": 2}
    assert {k: v["passed"] for k, v in (await agg("day")).items()} == {"2023-11-14": 1, "2023-11-15": 2}
    assert {k: v["count"] for k, v in (await agg("test", outcome="failed")).items()} == {"t.py::b": 1}


async def test_aggregate_task_history_for_every_level(analytics: Store) -> None:
    async def agg(level: str, **filters: Any) -> dict[Any, dict[str, Any]]:
        return by_key(await queries.aggregate(analytics, result_type="task", aggregation_level=level,
                                              filters=filters))

    model = await agg("model")
    assert model["bert"]["count"] == 2 and model["bert"]["completed"] == 1 and model["bert"]["failed"] == 1
    assert model["bert"]["success_rate"] == 0.5 and model["bert"]["execution_time_mean"] == 1.5
    assert model["bert"]["tasks"] == 1 and model["t5"]["execution_time_max"] == 4.0
    assert {k: v["count"] for k, v in (await agg("worker")).items()} == {"w1": 2, "w2": 1}
    assert {k: v["count"] for k, v in (await agg("hardware")).items()} == {"cpu": 2, "cpu,cuda": 1}
    assert {k: v["count"] for k, v in (await agg("status")).items()} == {"completed": 2, "failed": 1}
    assert {k: v["count"] for k, v in (await agg("test")).items()} == {"name-t1": 2, "name-t2": 1}
    assert {k: v["count"] for k, v in (await agg("day")).items()} == {"2023-11-14": 2, "2023-11-15": 1}
    assert {k: v["count"] for k, v in (await agg("status", worker_id="w2")).items()} == {"completed": 1}


async def test_aggregate_rejects_bad_parameters_with_the_accepted_values(analytics: Store) -> None:
    with pytest.raises(ValueError, match="aggregation_level must be one of model, batch_size, precision, "
                                         "backend, worker, hardware, test, status, day; got 'gpu'"):
        await queries.aggregate(analytics, result_type="benchmark", aggregation_level="gpu", filters={})
    with pytest.raises(ValueError, match="result_type must be one of test, benchmark, task"):
        await queries.aggregate(analytics, result_type="speed", aggregation_level="model", filters={})
    with pytest.raises(ValueError, match="'model' does not apply to result_type 'test'; accepted for test: worker"):
        await queries.aggregate(analytics, result_type="test", aggregation_level="model", filters={})
    with pytest.raises(ValueError, match="unknown filter 'colour'.*accepted: model, batch_size"):
        await queries.aggregate(analytics, result_type="benchmark", aggregation_level="model",
                                filters={"colour": "red"})
    with pytest.raises(ValueError, match="'batch_size' must be an integer; got 'big'"):
        await queries.aggregate(analytics, result_type="benchmark", aggregation_level="model",
                                filters={"batch_size": "big"})
    with pytest.raises(ValueError, match="'since' must be unix seconds or an ISO date"):
        await queries.aggregate(analytics, result_type="task", aggregation_level="status",
                                filters={"since": "yesterday"})


async def test_list_results_filters_and_pages(analytics: Store) -> None:
    everything = await queries.list_results(analytics)
    assert len(everything) == 5
    assert [r["timestamp"] for r in everything][:2] == [T0 + DAY, T0 + DAY]  # newest first
    assert {r["result_id"] for r in await queries.list_results(analytics, result_type="benchmark")} == {
        "rb1-1", "rb2-1", "rb3-1"}
    assert [r["result_id"] for r in await queries.list_results(analytics, status="failure")] == ["rt1-1"]
    assert {r["result_id"] for r in await queries.list_results(analytics, worker_id="w2", result_type="test")} == {
        "rt2-1"}
    assert [r["result_id"] for r in await queries.list_results(analytics, task_id="rb2")] == ["rb2-1"]
    page = await queries.list_results(analytics, limit=2, offset=1)
    assert [r["result_id"] for r in page] == [r["result_id"] for r in everything[1:3]]
    with pytest.raises(ValueError, match="limit must be a non-negative integer"):
        await queries.list_results(analytics, limit=-1)


async def test_summary_counts_and_best_throughput(analytics: Store) -> None:
    data = await queries.summary(analytics)
    assert data["tasks"] == {"completed": 2}
    assert data["results"] == {"failure": 1, "partial": 1, "success": 3}
    assert data["tests"] == {"failed": 1, "passed": 3, "skipped": 1}
    best = {row["model"]: row for row in data["best_throughput"]}
    assert best["bert"]["throughput"] == 400.0 and best["bert"]["batch_size"] == 4
    assert best["bert"]["precision"] == "fp16" and best["bert"]["worker_id"] == "w2"
    assert best["t5"]["result_id"] == "rb3-1"


async def test_anomalies_flag_the_injected_outlier_only(store: Store) -> None:
    normal = [100.0, 101.0, 99.0, 100.5, 99.5, 102.0, 98.0, 100.0, 101.5, 98.5, 100.0]
    rows = [bench_row("resnet", 8, value, 10.0) for value in normal] + [bench_row("resnet", 8, 500.0, 10.0)]
    other = [bench_row("vit", 8, value * 2, 10.0) for value in normal + [103.0]]  # spread, no outlier
    small = [bench_row("clip", 1, v, 10.0) for v in (1.0, 1.0, 1000.0)]  # too few rows to judge
    events = [result(f"r{i}-1", "w1", benchmarks=[row], task_type="benchmark")
              for i, row in enumerate(rows + other + small)]
    store.put(1, events)
    await store.flush()
    flagged = await queries.anomalies(store)
    assert len(flagged) == 1
    hit = flagged[0]
    assert hit["result_id"] == "r11-1" and hit["value"] == 500.0 and hit["direction"] == "high"
    assert hit["model"] == "resnet" and hit["group_count"] == 12 and hit["z_score"] > 2.5
    assert hit["metric"] == "throughput"
    # Latency is identical within each group: zero spread is never an anomaly.
    assert await queries.anomalies(store, metric="latency_ms_mean") == []
    # A lower threshold starts to catch the ordinary spread of the normal rows too.
    assert len(await queries.anomalies(store, z_threshold=1.5)) > 1
    with pytest.raises(ValueError, match="metric must be one of throughput, latency_ms_mean"):
        await queries.anomalies(store, metric="colour")
    with pytest.raises(ValueError, match="z_threshold must be a positive number"):
        await queries.anomalies(store, z_threshold=0)
