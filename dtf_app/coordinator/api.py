"""The HTTP and websocket API (DESIGN.md §5), a QuartTrio app over a :class:`Coordinator`.

Errors are always ``{"error": {"code", "message"}}`` with a 4xx status; bad input never produces a 500.
Every route but ``GET /status`` needs an API key (``X-API-Key`` or ``Authorization: Bearer``); the
permission each route needs is declared next to it with :func:`requires`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import trio
from quart import Response, g, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from dtf_app import __version__
from dtf_app import protocol as proto
from dtf_app.coordinator import scheduler
from dtf_app.coordinator.service import Coordinator, clean_outcome, task_view
from dtf_app.security import keys as keymod

log = logging.getLogger("dtf.api")

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_TASKS_PER_REQUEST = 100_000
CHANNELS = ("task_updates", "worker_updates", "orchestrated_task_updates", "cluster_status", "leadership_updates")


class ApiError(Exception):
    """An error answer: status, machine code, human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> Response:
    return Response(json.dumps({"error": {"code": code, "message": message}}), status=status,
                    content_type="application/json")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, separators=(",", ":"), default=str), status=status,
                    content_type="application/json")


def requires(permission: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Route decorator: authenticate the caller and check the permission (401/403 otherwise)."""

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            coord: Coordinator = g.coord
            key = keymod.key_from_headers(request.headers)
            if key is None:
                raise ApiError(401, "unauthorized", "an API key is required (X-API-Key header or "
                                                    "Authorization: Bearer <key>)")
            principal = keymod.authenticate(key, coord.state.api_keys)
            if principal is None:
                raise ApiError(401, "unauthorized", "the API key is not valid")
            if not principal.can(permission):
                raise ApiError(403, "forbidden", f"role {principal.role!r} may not do this; it needs one of "
                                                 f"the roles {', '.join(keymod.roles_with(permission))}")
            g.principal = principal
            return await handler(*args, **kwargs)

        return wrapper

    return decorate


async def _json_body() -> Any:
    raw = await request.get_data()
    if not raw:
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON document")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON{where}: {exc}") from None


def _int_arg(name: str, default: int, *, minimum: int = 0, maximum: int = 1_000_000) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"query parameter {name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ApiError(400, "invalid_parameter", f"query parameter {name} must be from {minimum} to {maximum}")
    return value


def _bool_arg(name: str) -> bool:
    return (request.args.get(name) or "").lower() in ("1", "true", "yes", "on")


def create_app(coord: Coordinator) -> QuartTrio:
    """Build the Quart app bound to a coordinator."""
    app = QuartTrio("dtf")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

    @app.before_request
    async def bind_coordinator() -> None:
        g.coord = coord

    @app.before_websocket
    async def bind_coordinator_ws() -> None:
        g.coord = coord

    @app.errorhandler(ApiError)
    async def on_api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    async def on_http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        status = exc.code or 400
        message = exc.description or exc.name
        if status == 404:
            message = f"no such endpoint: {request.method} {request.path} (see GET /openapi.json)"
        elif status == 405:
            allowed = sorted(getattr(exc, "valid_methods", None) or [])
            message = f"{request.method} is not allowed on {request.path}" + (
                f"; allowed: {', '.join(allowed)}" if allowed else "")
            response = error_response(status, code, message)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)  # RFC 9110 requires it on a 405
            return response
        elif status == 413:
            message = f"the request body is larger than {MAX_BODY_BYTES} bytes"
        return error_response(status, code, message)

    @app.errorhandler(Exception)
    async def on_unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")

    # ------------------------------------------------------------------ status
    @app.get("/status")
    async def open_status() -> Response:
        return json_response({"status": "ok", "node_id": coord.node_id, "role": "leader", "version": __version__})

    @app.get("/api/status")
    @requires("read")
    async def api_status() -> Response:
        return json_response(coord.status())

    @app.get("/api/dashboard")
    @requires("read")
    async def dashboard() -> Response:
        workers = [coord.worker_view(w) for w in coord.state.workers]
        recent = sorted(coord.state.tasks.values(), key=lambda t: t["seq"], reverse=True)[:50]
        return json_response({"status": coord.status(), "workers": workers,
                              "recent_tasks": [task_view(t) for t in recent]})

    @app.get("/api/cluster/status")
    @requires("read")
    async def cluster_status() -> Response:
        status = coord.status()
        return json_response({"node_id": coord.node_id, "role": "leader", "leader_id": coord.node_id, "term": 1,
                              "nodes": [{"node_id": coord.node_id, "url": coord.url, "role": "leader"}],
                              "tasks": status["tasks"], "workers": status["workers"]})

    @app.get("/api/cluster/leader")
    @requires("read")
    async def cluster_leader() -> Response:
        return json_response({"leader_id": coord.node_id, "term": 1, "url": coord.url})

    @app.get("/api/cluster/nodes")
    @requires("read")
    async def cluster_nodes() -> Response:
        # One node until the Raft issue makes this a replicated cluster.
        return json_response({"nodes": [{"node_id": coord.node_id, "url": coord.url, "role": "leader",
                                         "term": 1, "healthy": True, "enabled": True,
                                         "applied_index": coord.state.applied_index}]})

    @app.get("/api/cluster/health")
    @requires("read")
    async def cluster_health() -> Response:
        from dtf_app import health

        metrics = await trio.to_thread.run_sync(health.sample, str(coord.data_dir))
        return json_response({"nodes": [{"node_id": coord.node_id, "healthy": True, "metrics": metrics,
                                         "alerts": health.evaluate(metrics)}]})

    @app.get("/metrics")
    @requires("read")
    async def metrics() -> Response:
        from dtf_app.coordinator.metrics import render

        return Response(render(coord), content_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ workers
    @app.get("/api/workers")
    @requires("read")
    async def list_workers() -> Response:
        views = [coord.worker_view(w) for w in sorted(coord.state.workers)]
        status = request.args.get("status")
        if status and status not in ("online", "offline"):
            raise ApiError(400, "invalid_parameter", f"status must be online or offline, got {status!r}")
        if status:
            views = [v for v in views if v and v["status"] == status]
        return json_response({"workers": views})

    @app.post("/api/workers/register")
    @requires("worker")
    async def register_worker() -> Response:
        """HTTP registration (the websocket hello does the same); the worker shows online once connected."""
        body = await _json_body()
        if not isinstance(body, dict) or not isinstance(body.get("worker_id"), str) or not body["worker_id"]:
            raise ApiError(400, "invalid_worker", "the body must be an object with a non-empty string worker_id")
        caps = body.get("capabilities") or {}
        slots = scheduler.as_int(body.get("max_concurrent_tasks", 1))
        if not isinstance(caps, dict):
            raise ApiError(400, "invalid_worker", "capabilities must be an object")
        if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 10_000:
            raise ApiError(400, "invalid_worker", "max_concurrent_tasks must be an integer from 1 to 10000")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "invalid_worker", "tags must be an array of strings")
        info = {"worker_id": body["worker_id"], "hostname": str(body.get("hostname") or ""), "capabilities": caps,
                "hardware": list(caps.get("hardware") or ["cpu"]), "tags": sorted(set(tags) | set(caps.get("tags") or [])),
                "simulated": bool(caps.get("simulated")), "max_concurrent_tasks": slots, "hardware_metrics": {}}
        await coord.propose([{"op": "RegisterWorker", "worker": info}])
        return json_response(coord.worker_view(body["worker_id"]), 201)

    @app.get("/api/workers/<worker_id>")
    @requires("read")
    async def get_worker(worker_id: str) -> Response:
        view = coord.worker_view(worker_id)
        if view is None:
            raise ApiError(404, "not_found", f"no worker {worker_id!r}")
        return json_response(view)

    # ------------------------------------------------------------------ tasks
    @app.post("/api/tasks")
    @requires("submit")
    async def submit_tasks() -> Response:
        body = await _json_body()
        single = isinstance(body, dict)
        if isinstance(body, dict) and isinstance(body.get("tasks"), list) and "type" not in body:
            body, single = body["tasks"], False
        docs = [body] if single else body
        if not isinstance(docs, list):
            raise ApiError(400, "invalid_task", "the body must be a task object or an array of task objects")
        if not docs:
            raise ApiError(400, "invalid_task", "the task array is empty")
        if len(docs) > MAX_TASKS_PER_REQUEST:
            raise ApiError(413, "too_many_tasks", f"at most {MAX_TASKS_PER_REQUEST} tasks per request")
        max_retries = coord.settings.max_retries
        try:
            normalised = [scheduler.validate_task(doc, "task" if single else f"tasks[{i}]",
                                                  default_max_retries=max_retries)
                          for i, doc in enumerate(docs)]
            created = await coord.submit(normalised, allow_unschedulable=_bool_arg("allow_unschedulable"))
        except scheduler.TaskConflictError as exc:
            raise ApiError(409, "exists", str(exc)) from None
        except scheduler.TaskValidationError as exc:
            code = "unschedulable" if "cannot run on any worker" in str(exc) else "invalid_task"
            raise ApiError(400 if code == "invalid_task" else 422, code, str(exc)) from None
        views = [task_view(t) for t in created]
        return json_response(views[0] if single else views, 201)

    @app.get("/api/tasks")
    @requires("read")
    async def list_tasks() -> Response:
        limit = _int_arg("limit", 100, minimum=1, maximum=100_000)
        offset = _int_arg("offset", 0)
        filters = {k: request.args[k] for k in ("status", "type", "worker_id", "batch_id") if request.args.get(k)}
        if "status" in filters and filters["status"] not in scheduler.ALL_STATES:
            raise ApiError(400, "invalid_parameter",
                           f"status must be one of {', '.join(scheduler.ALL_STATES)}, got {filters['status']!r}")
        tasks = [t for t in coord.state.tasks.values() if all(t.get(k) == v for k, v in filters.items())]
        tasks.sort(key=lambda t: t["seq"])
        return json_response({"tasks": [task_view(t) for t in tasks[offset:offset + limit]], "total": len(tasks)})

    @app.get("/api/tasks/summary")
    @requires("read")
    async def task_summary() -> Response:
        batch_id = request.args.get("batch_id")
        ids = [i for i in (request.args.get("ids") or "").split(",") if i]
        if batch_id or ids:
            wanted = set(ids)
            tasks = [t for t in coord.state.tasks.values()
                     if (batch_id and t.get("batch_id") == batch_id) or t["task_id"] in wanted]
            counts = {state: 0 for state in scheduler.ALL_STATES}
            for task in tasks:
                counts[task["status"]] += 1
            total = len(tasks)
        else:
            counts = coord.state.task_counts()
            total = counts.pop("total")
        done = sum(counts[s] for s in scheduler.TERMINAL_STATES)
        return json_response({"counts": counts, "total": total, "done": total > 0 and done == total})

    @app.get("/api/tasks/<task_id>")
    @requires("read")
    async def get_task(task_id: str) -> Response:
        task = coord.state.tasks.get(task_id)
        if task is None:
            raise ApiError(404, "not_found", f"no task {task_id!r}")
        view = task_view(task)
        view["log_tail"] = list(coord.task_logs.get(task_id, ()))
        return json_response(view)

    @app.post("/api/tasks/<task_id>/cancel")
    @requires("cancel")
    async def cancel_task(task_id: str) -> Response:
        task = coord.state.tasks.get(task_id)
        if task is None:
            raise ApiError(404, "not_found", f"no task {task_id!r}")
        if task["status"] in scheduler.TERMINAL_STATES:
            raise ApiError(409, "already_finished", f"task {task_id} is already {task['status']}")
        task = await coord.cancel(task_id)
        return json_response(task_view(task))

    # ------------------------------------------------------------------ worker HTTP forms
    async def _http_outcome(task_id: str, outcome: str) -> Response:
        body = await _json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_outcome", "the body must be a JSON object")
        task = coord.state.tasks.get(task_id)
        if task is None:
            raise ApiError(404, "not_found", f"no task {task_id!r}")
        for key in ("start_time", "end_time"):
            value = body.get(key)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise ApiError(400, "invalid_outcome", f"{key} must be unix seconds (a number), got {value!r}")
        if "error" in body and not isinstance(body["error"], str):
            raise ApiError(400, "invalid_outcome", "error must be a string")
        attempt = body.get("attempt", task["attempts"])
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            raise ApiError(400, "invalid_outcome", "attempt must be an integer")
        if outcome == "completed" and not isinstance(body.get("result", {}), dict):
            raise ApiError(400, "invalid_outcome", "result must be an object")
        item = clean_outcome({**body, "task_id": task_id, "attempt": attempt, "outcome": outcome,
                               "result": body.get("result") or {}})
        if item is None:
            raise ApiError(400, "invalid_outcome", "the outcome is malformed")
        item["worker_id"] = task.get("worker_id") or ""
        item["end_time"] = item["end_time"] or time.time()
        if outcome == "completed":
            command = {"op": "CompleteTasks", "items": [item]}
        else:
            command = {"op": "FailTasks", "items": [dict(item, error=item["error"] or "failed",
                                                         retry=bool(body.get("retry", True)))]}
        await coord.propose([command])
        return json_response(task_view(coord.state.tasks[task_id]))

    @app.post("/api/tasks/<task_id>/complete")
    @requires("worker")
    async def complete_task(task_id: str) -> Response:
        return await _http_outcome(task_id, "completed")

    @app.post("/api/tasks/<task_id>/fail")
    @requires("worker")
    async def fail_task(task_id: str) -> Response:
        return await _http_outcome(task_id, "failed")

    @app.post("/api/health")
    @requires("worker")
    async def post_health() -> Response:
        body = await _json_body()
        if not isinstance(body, dict) or not isinstance(body.get("worker_id"), str):
            raise ApiError(400, "invalid_health", "the body must be an object with a string worker_id")
        conn = coord.conns.get(body["worker_id"])
        if conn is None:
            raise ApiError(404, "not_found", f"worker {body['worker_id']!r} is not connected")
        coord.worker_message(conn, {"type": proto.HEARTBEAT, "metrics": body.get("metrics") or {}})
        return json_response({"ok": True})

    # ------------------------------------------------------------------ results
    @app.get("/api/results")
    @requires("read")
    async def list_results() -> Response:
        from dtf_app.store import queries

        await coord.store.flush()
        rows = await queries.list_results(
            coord.store, task_id=request.args.get("task_id"), status=request.args.get("status"),
            result_type=request.args.get("type"), worker_id=request.args.get("worker_id"),
            limit=_int_arg("limit", 100, minimum=1, maximum=100_000), offset=_int_arg("offset", 0))
        return json_response({"results": rows})

    @app.get("/api/results/aggregate")
    @requires("read")
    async def aggregate_results() -> Response:
        from dtf_app.store import queries

        await coord.store.flush()
        filters = {k: v for k, v in request.args.items() if k not in ("result_type", "aggregation_level")}
        try:
            result_type = request.args.get("result_type") or "benchmark"
            # Without a level, the natural one for the type (model only applies to benchmarks and tasks).
            level = request.args.get("aggregation_level") or ("status" if result_type == "test" else "model")
            data = await queries.aggregate(coord.store, result_type=result_type, aggregation_level=level,
                                           filters=filters)
        except ValueError as exc:
            raise ApiError(400, "invalid_parameter", str(exc)) from None
        return json_response(data)

    @app.get("/api/results/<result_id>")
    @requires("read")
    async def get_result(result_id: str) -> Response:
        from dtf_app.store import queries

        await coord.store.flush()
        row = await queries.get_result(coord.store, result_id)
        if row is None:
            raise ApiError(404, "not_found", f"no result {result_id!r}")
        return json_response(row)

    # ------------------------------------------------------------------ keys
    @app.get("/api/keys")
    @requires("admin")
    async def list_keys() -> Response:
        return json_response({"keys": [{"name": k["name"], "role": k["role"], "created": k["created"]}
                                       for k in sorted(coord.state.api_keys.values(), key=lambda k: k["name"])]})

    @app.post("/api/keys")
    @requires("admin")
    async def create_key() -> Response:
        body = await _json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_key", "the body must be an object with name and role")
        name, role = body.get("name"), body.get("role")
        if not isinstance(name, str) or not name or len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name):
            raise ApiError(400, "invalid_key", "name must be 1-100 characters of letters, digits, '-', '_', '.'")
        if role not in keymod.ROLES:
            raise ApiError(400, "invalid_key", f"role must be one of {', '.join(keymod.ROLES)}, got {role!r}")
        if name in coord.state.api_keys:
            raise ApiError(409, "exists", f"a key named {name!r} exists; delete it first")
        key = keymod.generate_key()
        await coord.propose([{"op": "CreateApiKey", "name": name, "role": role, "key_hash": keymod.hash_key(key)}])
        return json_response({"name": name, "role": role, "key": key}, 201)

    async def _delete_key(name: str) -> Response:
        if name not in coord.state.api_keys:
            raise ApiError(404, "not_found", f"no key named {name!r}")
        if g.principal.name == name:
            raise ApiError(409, "in_use", "a key cannot delete itself")
        await coord.propose([{"op": "DeleteApiKey", "name": name}])
        return json_response({"deleted": name})

    @app.delete("/api/keys/<name>")
    @requires("admin")
    async def delete_key(name: str) -> Response:
        return await _delete_key(name)

    @app.delete("/api/keys")
    @requires("admin")
    async def delete_key_body() -> Response:
        body = await _json_body()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ApiError(400, "invalid_key", "the body must be an object with the key's name")
        return await _delete_key(body["name"])

    @app.get("/openapi.json")
    @requires("read")
    async def openapi() -> Response:
        from dtf_app.coordinator.openapi import build_spec

        return json_response(build_spec(__version__))

    # ------------------------------------------------------------------ websockets
    from dtf_app.coordinator.ws import client_socket, worker_socket

    app.websocket("/ws/worker")(worker_socket)
    app.websocket("/ws")(client_socket)
    from dtf_app.coordinator import bundles

    bundles.register(app, coord)  # dtf pytest: suite bundles, run reports, duration history
    from dtf_app.coordinator import results_api

    results_api.register(app, coord)  # regressions
    return app


def ws_principal(coord: Coordinator, permission: str) -> tuple[keymod.Principal | None, str | None]:
    """Authenticate a websocket upgrade: (principal, None) or (None, why not)."""
    key = keymod.key_from_headers(websocket.headers)
    principal = keymod.authenticate(key, coord.state.api_keys) if key else None
    if principal is None:
        return None, "unauthorized: a valid API key is required (X-API-Key header)"
    if not principal.can(permission):
        return None, f"forbidden: role {principal.role!r} may not use this socket"
    return principal, None


__all__ = ["ApiError", "create_app", "ws_principal"]
