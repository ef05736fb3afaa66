"""Routes for ``dtf pytest``: suite bundles, a run's tasks and reports, and the duration history.

- ``PUT /api/bundles/{sha256}`` (submit): the body is a ``tar.gz`` whose SHA-256 is the name; it is
  checked, written to ``<data-dir>/bundles/`` and fsynced (file and directory) before the 201, so an
  acknowledged bundle survives a crash. ``HEAD`` says whether it is there (the client skips the upload).
- ``GET /api/bundles/{sha256}`` (worker or read): the bytes, for a worker's cache.
- ``GET /api/pytest/runs/{run_id}`` (read): the chunk tasks of a run (``config.pytest_dist.run_id``).
- ``GET /api/pytest/reports?task_ids=a,b`` (read): the serialized pytest reports of finished chunks,
  from DuckDB (``test_results.report``), in the order each chunk ran them.
- ``GET /api/pytest/history?suite=KEY`` (read): per-test mean durations of the suite's latest
  collection (the same digest), normalised to an average worker by each worker's speed factor
  (``worker_speeds``, measured on the same tests), and their ``xdist_group`` marks, which the client
  schedules from.

Bundles are not replicated: with several coordinators a bundle lives on the one it was uploaded to,
which is the leader the chunks were submitted to (workers fetch from the coordinator URLs they know).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from dtf_app.coordinator.service import Coordinator
from dtf_app.coordinator.views import task_view
from dtf_app.pytest_dist.schedule import normalised_durations, worker_speeds

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_IDS_PER_QUERY = 10_000
HISTORY_RUNS = 5
"""Mean over this many latest results per test: recent enough to follow changes, stable against noise."""


def _is_hash(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def bundle_dir(coord: Coordinator) -> Path:
    """Where a coordinator keeps uploaded bundles."""
    return Path(coord.data_dir) / "bundles"


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself must be on disk before the 201
    finally:
        os.close(fd)


def register(app: QuartTrio, coord: Coordinator) -> None:
    """Add the routes to the app (one call in api.create_app)."""
    from dtf_app.coordinator import http
    from dtf_app.coordinator.http import ApiError, json_response

    def authorize(*permissions: str) -> None:
        http.authorize(coord, *permissions)

    def check_hash(digest: str) -> None:
        if not _is_hash(digest):
            raise ApiError(400, "invalid_bundle", f"a bundle is named by the SHA-256 of its bytes (64 lowercase "
                                                  f"hex digits), got {digest[:80]!r}")

    @app.route("/api/bundles/<digest>", methods=["PUT"])
    async def put_bundle(digest: str) -> Response:
        authorize("submit")
        check_hash(digest)
        data = await request.get_data()
        if not data:
            # Well-formed (any bytes are), but not the bundle the name promises: 422, as a wrong hash is.
            raise ApiError(422, "invalid_bundle", "the request body is empty; send the bundle's tar.gz bytes")
        if len(data) > MAX_BUNDLE_BYTES:
            raise ApiError(413, "too_large", f"a bundle may be at most {MAX_BUNDLE_BYTES} bytes")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ApiError(422, "hash_mismatch", f"the body's SHA-256 is {actual}, not {digest}: the upload "
                                                 "was corrupted or named wrongly")
        path = bundle_dir(coord) / f"{digest}.tar.gz"
        if not path.exists():
            await trio.to_thread.run_sync(_write_durably, path, data)
        return json_response({"bundle": digest, "size": len(data)}, 201)

    @app.route("/api/bundles/<digest>", methods=["GET", "HEAD"])
    async def get_bundle(digest: str) -> Response:
        authorize("worker", "read")
        check_hash(digest)
        path = bundle_dir(coord) / f"{digest}.tar.gz"
        if not path.exists():
            raise ApiError(404, "not_found", f"no bundle {digest} on this coordinator (node {coord.node_id}); "
                                             "the client uploads it before it submits the run")
        if request.method == "HEAD":
            return Response(b"", status=200, headers={"Content-Length": str(path.stat().st_size)})
        data = await trio.to_thread.run_sync(path.read_bytes)
        return Response(data, status=200, content_type="application/gzip")

    @app.get("/api/pytest/runs/<run_id>")
    async def get_run(run_id: str) -> Response:
        authorize("read")
        tasks = [t for t in coord.state.tasks.values()
                 if isinstance(t.get("config"), dict) and isinstance(t["config"].get("pytest_dist"), dict)
                 and t["config"]["pytest_dist"].get("run_id") == run_id]
        if not tasks:
            raise ApiError(404, "not_found", f"no dtf pytest run {run_id!r} (see dtf tasks list --type test)")
        tasks.sort(key=lambda t: t["seq"])
        return json_response({"run_id": run_id, "tasks": [task_view(t) for t in tasks]})

    @app.get("/api/pytest/reports")
    async def get_reports() -> Response:
        authorize("read")
        ids = [i for i in (request.args.get("task_ids") or "").split(",") if i]
        if not ids:
            raise ApiError(400, "invalid_parameter", "task_ids is required: a comma-separated list of task ids")
        if len(ids) > MAX_IDS_PER_QUERY:
            raise ApiError(400, "invalid_parameter", f"at most {MAX_IDS_PER_QUERY} task ids per request")
        await coord.store.flush()
        placeholders = ",".join("?" for _ in ids)
        rows = await coord.store.query(
            f"SELECT task_id, result_id, nodeid, outcome, duration, report FROM test_results "
            f"WHERE task_id IN ({placeholders}) AND report IS NOT NULL", ids)
        rows.sort(key=lambda r: (r["task_id"], (r["report"] or {}).get("i", 0)))
        return json_response({"tests": rows})

    @app.get("/api/pytest/history")
    async def get_history() -> Response:
        authorize("read")
        suite = request.args.get("suite") or ""
        if not suite or len(suite) > 200:
            raise ApiError(400, "invalid_parameter", "suite is required (the key dtf pytest computes)")
        await coord.store.flush()
        data = await _history(coord, suite)
        return json_response(data)


async def _history(coord: Coordinator, suite: str) -> dict[str, Any]:
    """The latest collection digest of ``suite`` and the mean duration of each of its tests."""
    latest = await coord.store.query(
        "SELECT json_extract_string(raw_data, '$.pytest_dist.digest') AS digest, "
        "CAST(json_extract(raw_data, '$.pytest_dist.collected') AS BIGINT) AS collected "
        "FROM results WHERE task_type = 'test' "
        "AND json_extract_string(raw_data, '$.pytest_dist.suite') = ? "
        "AND json_extract_string(raw_data, '$.pytest_dist.digest') IS NOT NULL "
        "ORDER BY timestamp DESC LIMIT 1", [suite])
    if not latest:
        return {"suite": suite, "digest": None, "collected": 0, "tests": {}}
    digest, collected = latest[0]["digest"], latest[0]["collected"]
    rows = await coord.store.query(
        "WITH runs AS (SELECT result_id, worker_id, timestamp FROM results WHERE task_type = 'test' "
        "  AND json_extract_string(raw_data, '$.pytest_dist.suite') = ? "
        "  AND json_extract_string(raw_data, '$.pytest_dist.digest') = ?), "
        "ranked AS (SELECT t.nodeid, t.duration, r.worker_id, json_extract_string(t.report, '$.g') AS grp, "
        "  row_number() OVER (PARTITION BY t.nodeid ORDER BY r.timestamp DESC) AS n "
        "  FROM test_results t JOIN runs r USING (result_id)) "
        "SELECT nodeid, worker_id, avg(duration) AS duration, any_value(grp) AS grp FROM ranked WHERE n <= ? "
        "GROUP BY nodeid, worker_id",
        [suite, digest, HISTORY_RUNS])
    timed = [(r["nodeid"], r["worker_id"], float(r["duration"] or 0.0)) for r in rows]
    # Speeds from this suite's own history: the same tests timed on different workers.
    speeds = worker_speeds(timed)
    return {"suite": suite, "digest": digest, "collected": collected,
            "tests": normalised_durations(timed, speeds), "worker_speeds": speeds,
            "groups": {r["nodeid"]: r["grp"] for r in rows if r["grp"]}}
