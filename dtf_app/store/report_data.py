"""What ``dtf report`` draws, as SQL over the coordinator's DuckDB: one document for the whole report.

- task states and worker states (from the stored tasks and workers);
- a histogram of task execution times (logarithmic bins: test chunks and benchmarks span milliseconds
  to hours);
- worker performance: executions, success rate, mean/p50/p95 execution time per worker;
- benchmark trends: each configuration's throughput over time per hardware class, with the
  regressions of :mod:`dtf_app.store.regressions` marked;
- the slowest tests (mean duration) and the flakiest (tests that both passed and failed, most flips
  between consecutive runs first).
"""

from __future__ import annotations

from typing import Any

from dtf_app.store.queries import _plain_rows
from dtf_app.store.regressions import regressions
from dtf_app.store.writer import Store

TREND_POINTS = 60
TOP_TESTS = 15
_HARDWARE = ("coalesce(nullif(array_to_string(list_sort(json_extract_string(w.capabilities, '$.hardware[*]')), "
             "','), ''), 'unknown')")


async def flaky_tests(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """Tests with both passing and failing results, most outcome flips (run to run) first."""
    return _plain_rows(await store.query("""
        WITH runs AS (
            SELECT nodeid, timestamp, outcome,
                   CASE WHEN outcome IN ('failed', 'error') THEN 1 ELSE 0 END AS bad,
                   lag(CASE WHEN outcome IN ('failed', 'error') THEN 1 ELSE 0 END)
                       OVER (PARTITION BY nodeid ORDER BY timestamp, result_id) AS previous
            FROM test_results WHERE outcome IN ('passed', 'failed', 'error')
        )
        SELECT nodeid, count(*) AS runs, sum(bad) AS failures, count(*) - sum(bad) AS passes,
               count(*) FILTER (WHERE previous IS NOT NULL AND previous <> bad) AS flips,
               sum(bad) / count(*) AS failure_rate, max(timestamp) AS last_seen
        FROM runs GROUP BY nodeid
        HAVING sum(bad) > 0 AND count(*) > sum(bad)
        ORDER BY flips DESC, failure_rate DESC, nodeid LIMIT ?""", [limit]))


async def report_data(store: Store) -> dict[str, Any]:
    """Everything the HTML report shows (see the module docstring)."""
    tasks = await store.query("SELECT status, count(*) AS n FROM distributed_tasks GROUP BY ALL ORDER BY status")
    workers = await store.query(
        f"SELECT w.worker_id, w.status, {_HARDWARE} AS hardware, w.max_concurrent_tasks, w.simulated "
        "FROM worker_nodes w ORDER BY w.worker_id")
    histogram = await store.query("""
        WITH d AS (SELECT execution_time_seconds AS s FROM task_execution_history
                   WHERE execution_time_seconds IS NOT NULL AND execution_time_seconds >= 0)
        SELECT floor(log10(greatest(s, 0.001)) * 4) / 4 AS bin, count(*) AS n FROM d GROUP BY ALL ORDER BY bin""")
    performance = await store.query("""
        SELECT worker_id, count(*) AS executions,
               count(*) FILTER (WHERE status = 'completed') / count(*) AS success_rate,
               avg(execution_time_seconds) AS mean_s, median(execution_time_seconds) AS p50_s,
               quantile_cont(execution_time_seconds, 0.95) AS p95_s
        FROM task_execution_history WHERE worker_id IS NOT NULL GROUP BY worker_id ORDER BY worker_id""")
    trend_rows = await store.query(f"""
        WITH ranked AS (
            SELECT b.model, b.batch_size, b.precision, b.backend, {_HARDWARE} AS hardware, b.timestamp,
                   b.throughput,
                   row_number() OVER (PARTITION BY b.model, b.batch_size, b.precision, b.backend, {_HARDWARE}
                                      ORDER BY b.timestamp DESC, b.result_id DESC) AS n
            FROM benchmark_results b LEFT JOIN worker_nodes w ON w.worker_id = b.worker_id
            WHERE b.throughput IS NOT NULL)
        SELECT * FROM ranked WHERE n <= ? ORDER BY model, batch_size, precision, backend, hardware, timestamp""",
                                   [TREND_POINTS])
    trends: dict[tuple, dict[str, Any]] = {}
    for row in _plain_rows(trend_rows):
        key = (row["model"], row["batch_size"], row["precision"], row["backend"], row["hardware"])
        series = trends.setdefault(key, {"model": key[0], "batch_size": key[1], "precision": key[2],
                                         "backend": key[3], "hardware": key[4], "points": []})
        series["points"].append([row["timestamp"], row["throughput"]])
    found = await regressions(store)
    flagged = {(r["model"], r["batch_size"], r["precision"], r["backend"], r["hardware"]): r
               for r in found["regressions"]}
    for key, series in trends.items():
        series["regression"] = flagged.get(key)
    slowest = await store.query("""
        SELECT nodeid, count(*) AS runs, avg(duration) AS mean_s, max(duration) AS max_s
        FROM test_results WHERE duration IS NOT NULL GROUP BY nodeid ORDER BY mean_s DESC, nodeid LIMIT ?""",
                                [TOP_TESTS])
    return {
        "tasks": {row["status"]: row["n"] for row in tasks},
        "workers": _plain_rows(workers),
        "duration_histogram": [{"from_s": 10 ** row["bin"], "to_s": 10 ** (row["bin"] + 0.25), "count": row["n"]}
                               for row in histogram],
        "worker_performance": _plain_rows(performance),
        "benchmark_trends": list(trends.values()),
        "regressions": found["regressions"],
        "slowest_tests": _plain_rows(slowest),
        "flaky_tests": (await flaky_tests(store, TOP_TESTS)),
    }
