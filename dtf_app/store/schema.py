"""The coordinator's DuckDB schema (DESIGN.md §6) and its migrations.

The four contract tables keep the contract's column names and types; DTF's own columns come after them.
Hot tables (history, results, per-test and per-benchmark rows) have no PRIMARY KEY: DuckDB maintains an
ART index per key on every insert, which costs ingest speed, and exactly-once rows come from the last
applied log index stored with each batch instead (see :mod:`dtf_app.store.writer`). Only the two tables
that are upserted (tasks and workers) need a key, because ``INSERT OR REPLACE`` resolves on it.

Migrations: ``store_meta`` holds ``schema_version``. Version 1 is the base schema below; a later version
appends its statements to :data:`MIGRATIONS` under its number, and :func:`ensure_schema` runs those above
the stored version in one transaction.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 2

# Column lists in insertion order: the writer builds its batches column by column from these, so the
# DDL and the writer cannot drift apart.
TASK_COLUMNS: dict[str, str] = {
    "task_id": "VARCHAR PRIMARY KEY",
    "type": "VARCHAR",
    "priority": "INTEGER",
    "status": "VARCHAR",
    "create_time": "TIMESTAMP",
    "start_time": "TIMESTAMP",
    "end_time": "TIMESTAMP",
    "worker_id": "VARCHAR",
    "attempts": "INTEGER",
    "config": "JSON",
    "requirements": "JSON",
    # DTF's additions
    "name": "VARCHAR",
    "dependencies": "JSON",
    "timeout_seconds": "DOUBLE",
    "max_retries": "INTEGER",
    "batch_id": "VARCHAR",
    "error": "VARCHAR",
}

WORKER_COLUMNS: dict[str, str] = {
    "worker_id": "VARCHAR PRIMARY KEY",
    "hostname": "VARCHAR",
    "registration_time": "TIMESTAMP",
    "last_heartbeat": "TIMESTAMP",
    "status": "VARCHAR",
    "capabilities": "JSON",
    "hardware_metrics": "JSON",
    "tags": "JSON",
    "simulated": "BOOLEAN",
    "max_concurrent_tasks": "INTEGER",
}

HISTORY_COLUMNS: dict[str, str] = {
    "id": "BIGINT",
    "task_id": "VARCHAR",
    "worker_id": "VARCHAR",
    "attempt": "INTEGER",
    "status": "VARCHAR",
    "start_time": "TIMESTAMP",
    "end_time": "TIMESTAMP",
    "execution_time_seconds": "DOUBLE",
    "error_message": "VARCHAR",
    "hardware_metrics": "JSON",
}

RESULT_COLUMNS: dict[str, str] = {
    "result_id": "VARCHAR",
    "task_id": "VARCHAR",
    "worker_id": "VARCHAR",
    "test_id": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "metrics": "JSON",
    "status": "VARCHAR",
    "execution_time": "DOUBLE",
    "hardware_metrics": "JSON",
    "environment": "JSON",
    "raw_data": "JSON",
    "metadata": "JSON",
    # DTF's addition: test | benchmark | custom, so listings can filter without joining tasks
    "task_type": "VARCHAR",
}

TEST_RESULT_COLUMNS: dict[str, str] = {
    "result_id": "VARCHAR",
    "task_id": "VARCHAR",
    "worker_id": "VARCHAR",
    "nodeid": "VARCHAR",
    "outcome": "VARCHAR",
    "duration": "DOUBLE",
    "message": "VARCHAR",
    "timestamp": "TIMESTAMP",
    # Version 2: the serialized pytest reports of a `dtf pytest` chunk's test, which the client replays
    "report": "JSON",
}

BENCHMARK_RESULT_COLUMNS: dict[str, str] = {
    "result_id": "VARCHAR",
    "task_id": "VARCHAR",
    "worker_id": "VARCHAR",
    "model": "VARCHAR",
    "batch_size": "INTEGER",
    "precision": "VARCHAR",
    "backend": "VARCHAR",
    "iterations": "INTEGER",
    "latency_ms_mean": "DOUBLE",
    "latency_ms_p50": "DOUBLE",
    "latency_ms_p90": "DOUBLE",
    "latency_ms_p99": "DOUBLE",
    "throughput": "DOUBLE",
    "memory_peak_mb": "DOUBLE",
    "hardware": "JSON",
    "timestamp": "TIMESTAMP",
}

LEADERSHIP_COLUMNS: dict[str, str] = {
    "term": "BIGINT",
    "leader_id": "VARCHAR",
    "previous_leader_id": "VARCHAR",
    "reason": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "log_index": "BIGINT",
}

HEALTH_ALERT_COLUMNS: dict[str, str] = {
    "timestamp": "TIMESTAMP",
    "source_kind": "VARCHAR",  # node | worker
    "source_id": "VARCHAR",
    "metric": "VARCHAR",
    "value": "DOUBLE",
    "threshold": "DOUBLE",
    "level": "VARCHAR",  # warning | critical
    "message": "VARCHAR",
    "node_id": "VARCHAR",  # the coordinator that recorded it
}

SCALING_COLUMNS: dict[str, str] = {
    "timestamp": "TIMESTAMP",
    "node_id": "VARCHAR",
    "term": "BIGINT",
    "recommendation": "VARCHAR",  # scale_up | steady | scale_down
    "utilisation": "DOUBLE",
    "ratios": "JSON",
    "pending_tasks": "INTEGER",
    "workers": "INTEGER",
    "hook_called": "BOOLEAN",
    "hook_status": "VARCHAR",
}

META_COLUMNS: dict[str, str] = {"key": "VARCHAR PRIMARY KEY", "value": "VARCHAR"}

TABLES: dict[str, dict[str, str]] = {
    "store_meta": META_COLUMNS,
    "worker_nodes": WORKER_COLUMNS,
    "distributed_tasks": TASK_COLUMNS,
    "task_execution_history": HISTORY_COLUMNS,
    "results": RESULT_COLUMNS,
    "test_results": TEST_RESULT_COLUMNS,
    "benchmark_results": BENCHMARK_RESULT_COLUMNS,
    "leadership_history": LEADERSHIP_COLUMNS,
    # Leader-local observations (not log entries), written by the node that made them.
    "health_alerts": HEALTH_ALERT_COLUMNS,
    "scaling_recommendations": SCALING_COLUMNS,
}

# Statements that bring a database from version ``n - 1`` to ``n``. Version 1 is the base schema, which
# ``CREATE TABLE IF NOT EXISTS`` builds, so it has nothing to add.
MIGRATIONS: dict[int, list[str]] = {
    1: [],
    2: ["ALTER TABLE test_results ADD COLUMN IF NOT EXISTS report JSON"],
}


def column_type(sql_type: str) -> str:
    """The bare type of a column definition (``'VARCHAR PRIMARY KEY'`` -> ``'VARCHAR'``)."""
    return sql_type.split()[0]


def create_table_sql(table: str) -> str:
    """The idempotent ``CREATE TABLE IF NOT EXISTS`` statement of one table."""
    columns = ", ".join(f'"{name}" {sql_type}' for name, sql_type in TABLES[table].items())
    return f"CREATE TABLE IF NOT EXISTS {table} ({columns})"


class SchemaError(RuntimeError):
    """The database cannot be used with this version of DTF."""


def ensure_schema(con: Any) -> int:
    """Create missing tables and run pending migrations on a DuckDB connection; returns the version.

    Idempotent: safe on every start. Raises :class:`SchemaError` when the file was written by a newer
    DTF, whose schema this version does not know how to read safely.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        for table in TABLES:
            con.execute(create_table_sql(table))
        row = con.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
        stored = int(row[0]) if row else 0
        if stored > SCHEMA_VERSION:
            raise SchemaError(
                f"the database schema is version {stored}, newer than this DTF understands "
                f"(version {SCHEMA_VERSION}); upgrade DTF or point --db-path at another file")
        for version in range(stored + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS.get(version, []):
                con.execute(statement)
        con.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION
