"""DuckDB ingest paths side by side, and the Store writer end to end (DESIGN.md §11: measure, never assert).

    PYTHONPATH=. .venv/bin/python bench/store_bench.py [--rows 20000] [--executemany-rows 1000]

Ingest paths compared on the same task-upsert table: ``executemany`` (one prepared execution per row),
multi-row ``VALUES`` with bound parameters (the writer's fallback without numpy), one JSON document
unnested with ``from_json``, and a registered dict of numpy object arrays (the writer's fast path).
Then 5,000 tasks x 4 states through ``Store.put``/``run``/``flush`` as the coordinator drives it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

TABLE = ("CREATE TABLE t (task_id VARCHAR PRIMARY KEY, status VARCHAR, priority INTEGER, create_time TIMESTAMP, "
         "config JSON)")


def _rows(n: int) -> list[tuple[Any, ...]]:
    now = int(time.time() * 1_000_000)
    return [(f"task-{i}", "completed", i % 5, now + i, json.dumps({"model": "bert", "i": i})) for i in range(n)]


def _connect(folder: Path, name: str) -> Any:
    import duckdb

    con = duckdb.connect(str(folder / f"{name}.duckdb"))
    con.execute(TABLE)
    return con


def bench_paths(folder: Path, rows: int, executemany_rows: int) -> None:
    import numpy as np

    data = _rows(rows)
    insert = "INSERT OR REPLACE INTO t SELECT c0, c1, c2, make_timestamp(c3), CAST(c4 AS JSON) FROM "
    print(f"{'path':<28}{'rows':>8}{'seconds':>10}{'rows/s':>12}")

    def report(name: str, n: int, seconds: float) -> None:
        print(f"{name:<28}{n:>8}{seconds:>10.3f}{n / seconds:>12,.0f}")

    con = _connect(folder, "executemany")
    started = time.perf_counter()
    con.execute("BEGIN")
    con.executemany("INSERT OR REPLACE INTO t VALUES (?, ?, ?, make_timestamp(?), ?)", data[:executemany_rows])
    con.execute("COMMIT")
    report("executemany", executemany_rows, time.perf_counter() - started)

    con = _connect(folder, "values")
    started = time.perf_counter()
    con.execute("BEGIN")
    for start in range(0, rows, 1000):
        chunk = data[start:start + 1000]
        marks = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
        con.execute(insert + f"(VALUES {marks}) AS v(c0, c1, c2, c3, c4)", [v for row in chunk for v in row])
    con.execute("COMMIT")
    report("multi-row VALUES", rows, time.perf_counter() - started)

    con = _connect(folder, "json")
    started = time.perf_counter()
    doc = json.dumps([dict(zip(("c0", "c1", "c2", "c3", "c4"), row, strict=True)) for row in data])
    structure = '[{"c0":"VARCHAR","c1":"VARCHAR","c2":"INTEGER","c3":"BIGINT","c4":"VARCHAR"}]'
    con.execute(insert + f"(SELECT unnest(from_json(?::JSON, '{structure}'), recursive := true))", [doc])
    report("JSON from_json + unnest", rows, time.perf_counter() - started)

    con = _connect(folder, "numpy")
    started = time.perf_counter()
    columns = {}
    for i, values in enumerate(zip(*data, strict=True)):
        array = np.empty(rows, dtype=object)
        array[:] = list(values)
        columns[f"c{i}"] = array
    con.register("batch", columns)
    con.execute(insert + "batch")
    report("registered numpy arrays", rows, time.perf_counter() - started)


def bench_store(folder: Path) -> None:
    import trio

    from dtf_app.store.writer import Store

    store = Store(folder / "store.duckdb")
    store.open()
    now = time.time()
    events = [{"kind": "task", "task": {"task_id": f"t{i}", "type": "test", "priority": 1, "status": status,
                                        "create_time": now, "attempts": 1, "config": {"test_file": "x.py"},
                                        "requirements": {}}}
              for status in ("pending", "assigned", "running", "completed") for i in range(5000)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            started = time.perf_counter()
            for index, start in enumerate(range(0, len(events), 50), start=1):
                store.put(index, events[start:start + 50])
                if index % 20 == 0:
                    await trio.sleep(0)
            await store.flush()
            seconds = time.perf_counter() - started
            stats = store.statistics()
            print(f"Store: 20,000 task events in {seconds:.3f} s ({20000 / seconds:,.0f} events/s), "
                  f"{stats['batches']} batches")
            nursery.cancel_scope.cancel()

    trio.run(main)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--executemany-rows", type=int, default=1000,
                        help="executemany is ~100 rows/s with a primary key; keep this small")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_paths(Path(tmp), args.rows, args.executemany_rows)
        bench_store(Path(tmp))


if __name__ == "__main__":
    main()
