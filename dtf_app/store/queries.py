"""Analytics over the coordinator's DuckDB store: listings, aggregates, anomalies, a summary.

Every number here comes from SQL (DuckDB does the grouping, percentiles and window statistics); Python
only picks the query for the requested dimension, checks the caller's input, and turns TIMESTAMP values
into unix seconds so results look like every other DTF document (the protocol speaks unix seconds).
Bad input raises ValueError with the accepted values: the HTTP API turns that into a 400.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any

from dtf_app.store.writer import Store

RESULT_TYPES = ("test", "benchmark", "task")
# The source design's names for the same types (its websocket example asks for "performance").
RESULT_TYPE_ALIASES = {"performance": "benchmark", "benchmarks": "benchmark", "tests": "test", "tasks": "task",
                       "execution": "task"}
AGGREGATION_LEVELS = ("model", "batch_size", "precision", "backend", "worker", "hardware", "test", "status", "day")
ANOMALY_METRICS = ("throughput", "latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
                   "memory_peak_mb")

# The hardware a worker advertises (capabilities.hardware, e.g. ["cpu", "cuda"]) as one sortable label.
_HARDWARE = ("coalesce(nullif(array_to_string(list_sort(json_extract_string(w.capabilities, '$.hardware[*]')), "
             "','), ''), 'unknown')")

# Per result type: the FROM clause, the time column, the grouping expression per level, and the
# filters a caller may pass (name -> (SQL expression, Python parser of the query-string value)).
_SOURCES: dict[str, dict[str, Any]] = {
    "benchmark": {
        "from": ("benchmark_results b LEFT JOIN results r ON r.result_id = b.result_id "
                 "LEFT JOIN worker_nodes w ON w.worker_id = b.worker_id"),
        "time": "b.timestamp",
        "levels": {"model": "b.model", "batch_size": "b.batch_size", "precision": "b.precision",
                   "backend": "b.backend", "worker": "b.worker_id", "hardware": _HARDWARE,
                   "test": "r.test_id", "status": "r.status", "day": "CAST(b.timestamp AS DATE)"},
        "filters": {"model": "b.model", "batch_size": "b.batch_size", "precision": "b.precision",
                    "backend": "b.backend", "worker_id": "b.worker_id", "task_id": "b.task_id",
                    "status": "r.status"},
    },
    "test": {
        "from": ("test_results t LEFT JOIN results r ON r.result_id = t.result_id "
                 "LEFT JOIN worker_nodes w ON w.worker_id = t.worker_id"),
        "time": "t.timestamp",
        "levels": {"worker": "t.worker_id", "hardware": _HARDWARE, "test": "t.nodeid", "status": "r.status",
                   "day": "CAST(t.timestamp AS DATE)"},
        "filters": {"nodeid": "t.nodeid", "outcome": "t.outcome", "worker_id": "t.worker_id",
                    "task_id": "t.task_id", "status": "r.status"},
    },
    "task": {
        "from": ("task_execution_history h LEFT JOIN distributed_tasks d ON d.task_id = h.task_id "
                 "LEFT JOIN worker_nodes w ON w.worker_id = h.worker_id"),
        "time": "coalesce(h.end_time, h.start_time)",
        "levels": {"model": "json_extract_string(d.config, '$.model')", "worker": "h.worker_id",
                   "hardware": _HARDWARE, "test": "d.name", "status": "h.status",
                   "day": "CAST(coalesce(h.end_time, h.start_time) AS DATE)"},
        "filters": {"worker_id": "h.worker_id", "task_id": "h.task_id", "status": "h.status", "type": "d.type"},
    },
}

AGGREGATE_SOURCES = _SOURCES  # read-only view for the API description (levels and filters per type)

_STATS = {
    "benchmark": """count(*) AS count,
        avg(b.latency_ms_mean) AS latency_ms_mean, min(b.latency_ms_mean) AS latency_ms_min,
        max(b.latency_ms_mean) AS latency_ms_max, stddev_samp(b.latency_ms_mean) AS latency_ms_stddev,
        median(b.latency_ms_mean) AS latency_ms_p50,
        quantile_cont(b.latency_ms_mean, 0.95) AS latency_ms_p95,
        avg(b.throughput) AS throughput_mean, min(b.throughput) AS throughput_min,
        max(b.throughput) AS throughput_max, stddev_samp(b.throughput) AS throughput_stddev,
        median(b.throughput) AS throughput_p50, quantile_cont(b.throughput, 0.95) AS throughput_p95,
        max(b.memory_peak_mb) AS memory_peak_mb_max""",
    # pass_rate leaves skipped tests out of the denominator: a skip is neither a pass nor a failure.
    "test": """count(*) AS count,
        count(*) FILTER (WHERE t.outcome = 'passed') AS passed,
        count(*) FILTER (WHERE t.outcome = 'failed') AS failed,
        count(*) FILTER (WHERE t.outcome = 'error') AS error,
        count(*) FILTER (WHERE t.outcome = 'skipped') AS skipped,
        count(*) FILTER (WHERE t.outcome NOT IN ('passed', 'failed', 'error', 'skipped')) AS other,
        count(*) FILTER (WHERE t.outcome = 'passed')
            / nullif(count(*) FILTER (WHERE t.outcome <> 'skipped'), 0) AS pass_rate,
        avg(t.duration) AS duration_mean, median(t.duration) AS duration_p50,
        stddev_samp(t.duration) AS duration_stddev, quantile_cont(t.duration, 0.95) AS duration_p95,
        max(t.duration) AS duration_max""",
    "task": """count(*) AS count,
        count(*) FILTER (WHERE h.status = 'completed') AS completed,
        count(*) FILTER (WHERE h.status = 'failed') AS failed,
        count(*) FILTER (WHERE h.status NOT IN ('completed', 'failed')) AS other,
        count(*) FILTER (WHERE h.status = 'completed') / nullif(count(*), 0) AS success_rate,
        count(DISTINCT h.task_id) AS tasks,
        avg(h.execution_time_seconds) AS execution_time_mean,
        min(h.execution_time_seconds) AS execution_time_min,
        max(h.execution_time_seconds) AS execution_time_max,
        median(h.execution_time_seconds) AS execution_time_p50""",
}


def _plain(value: Any) -> Any:
    """DuckDB values -> JSON-friendly ones: TIMESTAMP -> unix seconds, DATE -> ISO, NaN -> None."""
    if isinstance(value, datetime):
        # Stored TIMESTAMPs are UTC wall time without a zone (see the writer's make_timestamp).
        return value.replace(tzinfo=UTC).timestamp() if value.tzinfo is None else value.timestamp()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _plain_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: _plain(value) for key, value in row.items()} for row in rows]


def _check_choice(name: str, value: Any, accepted: tuple[str, ...] | list[str]) -> str:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")
    return value


def _parse_time(name: str, value: Any) -> float:
    """A filter bound as unix seconds or an ISO date/datetime (UTC when no zone is given)."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"filter {name!r} must be unix seconds or an ISO date like 2024-05-01; "
                         f"got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# ---------------------------------------------------------------------------------------------- listings
async def list_results(store: Store, *, task_id: str | None = None, status: str | None = None,
                       result_type: str | None = None, worker_id: str | None = None, limit: int = 100,
                       offset: int = 0) -> list[dict[str, Any]]:
    """Result rows, newest first, filtered by task, status (success|failure|partial), type and worker."""
    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer; got {limit!r}")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer; got {offset!r}")
    where, params = [], []
    for column, value in (("task_id", task_id), ("status", status), ("task_type", result_type),
                          ("worker_id", worker_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = await store.query(
        f"SELECT * FROM results {clause} ORDER BY timestamp DESC NULLS LAST, result_id LIMIT ? OFFSET ?",
        [*params, limit, offset])
    return _plain_rows(rows)


async def get_result(store: Store, result_id: str) -> dict[str, Any] | None:
    """One result with its per-test rows (``tests``) and per-configuration rows (``benchmarks``)."""
    rows = await store.query("SELECT * FROM results WHERE result_id = ? LIMIT 1", [result_id])
    if not rows:
        return None
    result = _plain_rows(rows)[0]
    result["tests"] = _plain_rows(await store.query(
        "SELECT nodeid, outcome, duration, message FROM test_results WHERE result_id = ? ORDER BY nodeid",
        [result_id]))
    result["benchmarks"] = _plain_rows(await store.query(
        "SELECT model, batch_size, precision, backend, iterations, latency_ms_mean, latency_ms_p50, "
        "latency_ms_p90, latency_ms_p99, throughput, memory_peak_mb, hardware FROM benchmark_results "
        "WHERE result_id = ? ORDER BY model, batch_size, precision, backend", [result_id]))
    return result


async def task_history(store: Store, task_id: str) -> list[dict[str, Any]]:
    """The recorded attempts of one task (worker, status, times, error), in attempt order."""
    return _plain_rows(await store.query(
        "SELECT attempt, worker_id, status, start_time, end_time, execution_time_seconds, error_message "
        "FROM task_execution_history WHERE task_id = ? ORDER BY attempt, id", [task_id]))


# ---------------------------------------------------------------------------------------------- aggregates
async def aggregate(store: Store, *, result_type: str, aggregation_level: str,
                    filters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Statistics per value of one dimension.

    ``result_type``: ``test`` (outcome counts, pass rate, durations), ``benchmark`` (latency and
    throughput: count, mean, min, max, stddev, p50) or ``task`` (executions from the history: status
    counts, success rate, execution times). ``aggregation_level``: one of :data:`AGGREGATION_LEVELS`
    that applies to the type. ``filters``: equality filters named per type plus ``since``/``until``
    (unix seconds or ISO dates). Returns ``{"result_type", "aggregation_level", "filters", "groups"}``,
    each group ``{"key": value, ...statistics}`` ordered by key.
    """
    requested = result_type
    result_type = RESULT_TYPE_ALIASES.get(result_type, result_type)
    _check_choice("result_type", result_type, (*RESULT_TYPES, *RESULT_TYPE_ALIASES))
    _check_choice("aggregation_level", aggregation_level, AGGREGATION_LEVELS)
    source = _SOURCES[result_type]
    levels: dict[str, str] = source["levels"]
    if aggregation_level not in levels:
        raise ValueError(f"aggregation_level {aggregation_level!r} does not apply to result_type "
                         f"{result_type!r}; accepted for {result_type}: {', '.join(levels)}")
    where, params = _filter_clause(result_type, filters or {})
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sql = (f"SELECT {levels[aggregation_level]} AS key, {_STATS[result_type]} FROM {source['from']} "
           f"{clause} GROUP BY ALL ORDER BY key NULLS LAST")
    groups = _plain_rows(await store.query(sql, params))
    return {"result_type": requested, "aggregation_level": aggregation_level,
            "filters": dict(filters or {}), "groups": groups}


def _filter_clause(result_type: str, filters: dict[str, Any]) -> tuple[list[str], list[Any]]:
    source = _SOURCES[result_type]
    allowed: dict[str, str] = source["filters"]
    where: list[str] = []
    params: list[Any] = []
    for name, value in filters.items():
        if value is None or value == "":
            continue
        if name in ("since", "until"):
            op = ">=" if name == "since" else "<"
            where.append(f"{source['time']} {op} make_timestamp(CAST(? AS BIGINT))")
            params.append(round(_parse_time(name, value) * 1_000_000))
        elif name in allowed:
            if name == "batch_size":
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise ValueError(f"filter 'batch_size' must be an integer; got {value!r}") from None
            where.append(f"{allowed[name]} = ?")
            params.append(value if name == "batch_size" else str(value))
        else:
            raise ValueError(f"unknown filter {name!r} for result_type {result_type!r}; accepted: "
                             f"{', '.join([*allowed, 'since', 'until'])}")
    return where, params


# ---------------------------------------------------------------------------------------------- anomalies
async def anomalies(store: Store, *, metric: str = "throughput", z_threshold: float = 2.5) -> list[dict[str, Any]]:
    """Benchmark rows whose ``metric`` lies more than ``z_threshold`` standard deviations from the mean
    of their (model, batch_size, precision, backend) group.

    The z-score uses the group's sample standard deviation including the row itself, as the source design
    does; with n rows no z-score can exceed (n-1)/sqrt(n), so groups need at least 9 rows before a
    threshold of 2.5 can fire, and groups of fewer than 3 rows or with zero spread are never flagged.
    """
    _check_choice("metric", metric, ANOMALY_METRICS)
    if isinstance(z_threshold, bool) or not isinstance(z_threshold, int | float) or z_threshold <= 0:
        raise ValueError(f"z_threshold must be a positive number; got {z_threshold!r}")
    sql = f"""
        WITH scored AS (
            SELECT result_id, task_id, worker_id, model, batch_size, precision, backend, timestamp,
                   {metric} AS value,
                   avg({metric}) OVER g AS group_mean,
                   stddev_samp({metric}) OVER g AS group_stddev,
                   count({metric}) OVER g AS group_count
            FROM benchmark_results
            WHERE {metric} IS NOT NULL
            WINDOW g AS (PARTITION BY model, batch_size, precision, backend)
        )
        SELECT *, (value - group_mean) / group_stddev AS z_score,
               CASE WHEN value > group_mean THEN 'high' ELSE 'low' END AS direction
        FROM scored
        WHERE group_count >= 3 AND group_stddev > 0
          AND abs(value - group_mean) / group_stddev > ?
        ORDER BY abs(value - group_mean) / group_stddev DESC, result_id
    """
    rows = _plain_rows(await store.query(sql, [float(z_threshold)]))
    for row in rows:
        row["metric"] = metric
    return rows


# ---------------------------------------------------------------------------------------------- summary
async def summary(store: Store) -> dict[str, Any]:
    """Counts of tasks by status, results by status, tests by outcome, and the best throughput per model."""
    tasks = await store.query("SELECT status, count(*) AS n FROM distributed_tasks GROUP BY ALL ORDER BY status")
    results = await store.query("SELECT status, count(*) AS n FROM results GROUP BY ALL ORDER BY status")
    tests = await store.query("SELECT outcome, count(*) AS n FROM test_results GROUP BY ALL ORDER BY outcome")
    best = await store.query("""
        SELECT model, max(throughput) AS throughput,
               arg_max(batch_size, throughput) AS batch_size, arg_max(precision, throughput) AS precision,
               arg_max(backend, throughput) AS backend, arg_max(worker_id, throughput) AS worker_id,
               arg_max(result_id, throughput) AS result_id
        FROM benchmark_results WHERE throughput IS NOT NULL GROUP BY model ORDER BY model""")
    return {
        "tasks": {row["status"]: row["n"] for row in tasks},
        "results": {row["status"]: row["n"] for row in results},
        "tests": {row["outcome"]: row["n"] for row in tests},
        "best_throughput": _plain_rows(best),
    }
