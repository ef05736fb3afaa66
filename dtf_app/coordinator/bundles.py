"""Routes for ``dtf pytest``: suite bundles, a run's tasks and reports, and the duration history.

- ``PUT /api/bundles/{sha256}`` (submit): the body is a ``tar.gz`` whose SHA-256 is the name; it is
  checked, written to ``<data-dir>/bundles/`` and fsynced (file and directory) before the 201, so an
  acknowledged bundle survives a crash. ``HEAD`` says whether it is there (the client skips the upload).
- ``GET /api/bundles/{sha256}`` (worker or read): the bytes, for a worker's cache.
- ``GET /api/pytest/runs/{run_id}`` (read): the chunk tasks of a run (``config.pytest_dist.run_id``);
  ``task_ids=a,b`` only those, ``view=brief`` only their id, status, worker and attempt count.
- ``GET /api/pytest/reports?task_ids=a,b`` (read): the serialized pytest reports of finished chunks,
  from DuckDB (``test_results.report``), in the order each chunk ran them.
- ``POST /api/pytest/runs/{run_id}/progress`` (worker key plus the chunk's worker's own
  ``X-Worker-Credential``), ``GET /api/pytest/runs/{run_id}/events`` (read),
  ``POST /api/pytest/runs/{run_id}/steal`` (submit): live per-test reports and work stealing, see
  :mod:`dtf_app.coordinator.pytest_stream`.
- ``GET /api/pytest/history?suite=KEY`` (read): per-test mean durations of the suite's latest
  collection (the same digest), normalised to an average worker by each worker's speed factor
  (``worker_speeds``, measured on the same tests), and their ``xdist_group`` marks, which the client
  schedules from.

Bundles are not replicated: with several coordinators a bundle lives on the one it was uploaded to,
which is the leader the chunks were submitted to (workers fetch from the coordinator URLs they know).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from dtf_app.coordinator.pytest_stream import RunStreams
from dtf_app.coordinator.service import Coordinator
from dtf_app.coordinator.views import task_view
from dtf_app.pytest_dist.schedule import GROUPS, normalised_durations, worker_speeds

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_IDS_PER_QUERY = 10_000
MAX_EVENTS_BYTES = 16 * 1024 * 1024
RUN_VIEWS = ("full", "brief")
BRIEF_FIELDS = ("task_id", "status", "worker_id", "attempts")


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")

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
    from dtf_app.coordinator import http, scheduler
    from dtf_app.coordinator.http import ApiError, int_arg, json_body, json_response

    streams = RunStreams()

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
        view = request.args.get("view") or "full"
        if view not in RUN_VIEWS:
            raise ApiError(400, "invalid_parameter", f"view must be one of {', '.join(RUN_VIEWS)}, got {view[:40]!r}")
        wanted = [i for i in (request.args.get("task_ids") or "").split(",") if i]
        if len(wanted) > MAX_IDS_PER_QUERY:
            raise ApiError(400, "invalid_parameter", f"at most {MAX_IDS_PER_QUERY} task ids per request")
        tasks = [t for t in coord.state.tasks.values()
                 if isinstance(t.get("config"), dict) and isinstance(t["config"].get("pytest_dist"), dict)
                 and t["config"]["pytest_dist"].get("run_id") == run_id]
        if not tasks:
            raise ApiError(404, "not_found", f"no dtf pytest run {run_id!r} (see dtf tasks list --type test)")
        tasks.sort(key=lambda t: t["seq"])
        if wanted:
            keep = set(wanted)
            tasks = [t for t in tasks if t["task_id"] in keep]
        if view == "brief":
            # What a following client polls several times a second: the chunks' states without their
            # configs and results (thousands of node ids and reports), which it fetches once, by id.
            return json_response({"run_id": run_id, "tasks": [
                {k: t.get(k) for k in BRIEF_FIELDS} for t in tasks]})
        return json_response({"run_id": run_id, "tasks": [task_view(t) for t in tasks]})

    def run_chunk_task(run_id: str, task_id: Any) -> dict[str, Any]:
        task = coord.state.tasks.get(task_id) if isinstance(task_id, str) else None
        spec = (task.get("config") or {}).get("pytest_dist") if task else None
        if not isinstance(spec, dict) or spec.get("run_id") != run_id:
            raise ApiError(404, "not_found", f"no chunk task {str(task_id)[:80]!r} in dtf pytest run {run_id!r}")
        return task

    @app.post("/api/pytest/runs/<run_id>/progress")
    async def post_progress(run_id: str) -> Response:
        authorize("worker")
        body = await json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_body", "the body must be an object {task_id, attempt, worker_id, events}")
        task = run_chunk_task(run_id, body.get("task_id"))
        worker_id = body.get("worker_id")
        # The worker key is shared by all workers: only the one enrolled under the chunk's worker id
        # may speak for its chunk (else any worker could forge another's reports or steal answers).
        http.act_as(coord, worker_id if isinstance(worker_id, str) else "")
        if (task.get("worker_id") != worker_id or task.get("attempts") != body.get("attempt")
                or task.get("status") not in ("assigned", "running")):
            # Another attempt or another worker holds the chunk now: this sender's reports are stale.
            raise ApiError(409, "stale", f"task {task['task_id']} attempt {body.get('attempt')!r} is not running "
                                         f"on worker {str(body.get('worker_id'))[:80]!r}")
        raw_events = body.get("events_json", "[]")
        if not isinstance(raw_events, str) or len(raw_events) > MAX_EVENTS_BYTES:
            raise ApiError(400, "invalid_body", f"events_json must be a JSON array (as a string) of at most "
                                                f"{MAX_EVENTS_BYTES} characters")
        try:
            events = json.loads(raw_events, parse_constant=_no_constant)
        except ValueError as exc:
            raise ApiError(400, "invalid_body", f"events_json is not strict JSON: {exc}") from None
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise ApiError(400, "invalid_body", "events_json must be a JSON array of objects")
        base = {"task_id": task["task_id"], "attempt": task["attempts"], "worker_id": task.get("worker_id")}
        # Stored and forwarded as the string it came as (the client parses it): no re-encoding here.
        out = [dict(base, kind="batch", events=raw_events)] if events else []
        answer: dict[str, Any] = {"steal": None, "stolen_task": None}
        stolen = body.get("stolen")
        if stolen is not None:
            answer["stolen_task"] = await submit_stolen(run_id, task, stolen)
            out.append(dict(base, kind="stolen", nodeids=stolen.get("nodeids") if answer["stolen_task"] else [],
                            new_task=answer["stolen_task"]))
        if out:
            streams.append(run_id, out, [len(e.get("events") or "") + 200 for e in out])
        answer["steal"] = streams.take_steal(run_id, task["task_id"])
        if body.get("taken"):
            # A retry of a chunk skips what its earlier attempts gave up to stolen-tail chunks.
            answer["taken"] = [n for t in coord.state.tasks.values()
                               if ((t.get("config") or {}).get("pytest_dist") or {}).get("stolen_from") == task["task_id"]
                               for n in t["config"]["pytest_dist"].get("nodeids") or []]
        return json_response(answer)

    async def submit_stolen(run_id: str, task: dict[str, Any], stolen: Any) -> str | None:
        """The tail a chunk gave up, as a new chunk task of the run; its task id (None: nothing given up)."""
        if not isinstance(stolen, dict) or not isinstance(stolen.get("nodeids"), list) \
                or not all(isinstance(n, str) for n in stolen["nodeids"]):
            raise ApiError(400, "invalid_body", "stolen must be {nodeids: [str], seq: int, exclude: bool}")
        nodeids = stolen["nodeids"]
        if not nodeids:
            return None
        spec = dict(task["config"]["pytest_dist"])
        if spec.get("nodeids") is not None and not set(nodeids) <= set(spec["nodeids"]):
            raise ApiError(400, "invalid_body", "stolen nodeids must be tests of the chunk they come from")
        seq = stolen.get("seq", 0)
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 1000:
            raise ApiError(400, "invalid_body", "stolen.seq must be an integer from 0 to 999")
        spec.update(nodeids=nodeids, shard=None, stolen_from=task["task_id"])
        requirements = dict(task.get("requirements") or {})
        if stolen.get("exclude") and task.get("worker_id"):
            requirements["exclude_workers"] = sorted({*(requirements.get("exclude_workers") or []), task["worker_id"]})
        # A deterministic id: a worker that repeats the post (its answer was lost) gets 409, not a second copy.
        new_id = f"{task['task_id']}-s{task['attempts']}-{seq}"
        doc = {"type": "test", "task_id": new_id, "name": f"{task.get('name') or task['task_id']} (stolen tail)",
               "config": {"pytest_dist": spec}, "requirements": requirements or None,
               "timeout_seconds": task.get("timeout_seconds"), "max_retries": task.get("max_retries"),
               "priority": task.get("priority")}
        doc = {k: v for k, v in doc.items() if v is not None}
        if new_id in coord.state.tasks:
            return new_id
        try:
            normalised = scheduler.validate_task(doc, "stolen", default_max_retries=coord.settings.max_retries)
            await coord.submit([normalised])
        except scheduler.TaskConflictError:
            pass  # submitted by an earlier post of the same answer
        except (scheduler.TaskValidationError, scheduler.TaskUnprocessableError) as exc:
            raise ApiError(422, "unschedulable", f"cannot submit the stolen tail: {exc}") from None
        return new_id

    @app.get("/api/pytest/runs/<run_id>/events")
    async def get_events(run_id: str) -> Response:
        authorize("read")
        after = int_arg("after", 0, maximum=10**12)
        wait = int_arg("wait_ms", 0, maximum=10_000) / 1000.0
        return json_response(await streams.read(run_id, after, wait))

    @app.post("/api/pytest/runs/<run_id>/steal")
    async def post_steal(run_id: str) -> Response:
        authorize("submit")
        body = await json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_body", "the body must be an object {task_id, for_worker}")
        task = run_chunk_task(run_id, body.get("task_id"))
        for_worker = body.get("for_worker")
        if for_worker is not None and not isinstance(for_worker, str):
            raise ApiError(400, "invalid_body", "for_worker must be a worker id or null")
        group = body.get("group", "file")
        if group not in GROUPS:
            raise ApiError(400, "invalid_body", f"group must be one of {', '.join(GROUPS)}, got {str(group)[:40]!r}")
        if task.get("status") != "running":
            raise ApiError(409, "not_running", f"task {task['task_id']} is {task.get('status')}, not running")
        streams.request_steal(run_id, task["task_id"], for_worker, group)
        return json_response({"requested": True, "task_id": task["task_id"]}, 202)

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
