"""The HTTP and websocket API (DESIGN.md §5), a QuartTrio app over a :class:`Coordinator`.

Errors are always ``{"error": {"code", "message"}}`` with a 4xx status; bad input never produces a 500.
Every route but ``GET /status`` needs an API key (``X-API-Key`` or ``Authorization: Bearer``); the
permission each route needs is declared next to it with :func:`requires`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

import trio
from quart import Response, g, has_request_context, has_websocket_context, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from dtf_app import __version__
from dtf_app import protocol as proto
from dtf_app.coordinator import bulk, readiness, scheduler, views
from dtf_app.coordinator.drain import DrainUnreadBody
from dtf_app.coordinator.http import (
    MAX_BODY_BYTES,
    MAX_TASKS_PER_REQUEST,
    ApiError,
    act_as,
    admit_worker,
    bool_arg,
    check_url_text,
    error_response,
    int_arg,
    json_body,
    json_response,
    not_leader_response,
    requires,
)
from dtf_app.coordinator.intake import clean_outcome
from dtf_app.coordinator.service import Coordinator, MembershipRefused
from dtf_app.coordinator.views import WORKER_STATUSES, task_view
from dtf_app.raft.types import NotLeader, ProposalDropped
from dtf_app.security import keys as keymod

log = logging.getLogger("dtf.api")

def _not_ready(coord: Coordinator, path: str) -> Response | None:
    """Until the node has started, every route but /status answers 503 ``starting`` (see readiness.py)."""
    if coord.readiness.ready or path in ("/status", "/raft"):
        # Peer traffic flows while starting: a member needs it to learn (or elect) a leader.
        return None
    if not coord.cluster.is_single and readiness.RECOVERY not in coord.readiness.waiting_for:
        # A recovered cluster member serves (stale reads, its own views) and answers writes with the
        # leader's address or 503 no_leader; "leader known" and "caught up" only make /status unready.
        return None
    response = error_response(503, "starting", coord.readiness.message())
    response.headers["Retry-After"] = "1"
    return response


def create_app(coord: Coordinator) -> QuartTrio:
    """Build the Quart app bound to a coordinator."""
    app = QuartTrio("dtf")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    # Answers given before the body was read (401, 404, 405, ...) must not wedge a keep-alive connection.
    app.asgi_app = DrainUnreadBody(app.asgi_app, max_bytes=MAX_BODY_BYTES)  # type: ignore[method-assign]

    @app.before_request
    async def bind_coordinator() -> Response | None:
        g.coord = coord
        check_url_text()
        return _not_ready(coord, request.path) or await _route_to_leader(coord)

    @app.before_websocket
    async def bind_coordinator_ws() -> Response | None:
        g.coord = coord
        return _not_ready(coord, websocket.path)

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

    @app.errorhandler(NotLeader)
    async def on_not_leader(exc: NotLeader) -> Response:
        # Leadership moved while this request waited for its commit.
        return not_leader_response(coord)

    @app.errorhandler(ProposalDropped)
    async def on_dropped(exc: ProposalDropped) -> Response:
        response = error_response(503, "leadership_changed",
                                  f"{exc}; the request may not have taken effect: retry it (task ids given by "
                                  "the client make a retried submit safe)")
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    async def on_unexpected(exc: Exception) -> Response:
        # Quart routes websocket handlers' exceptions here too, where there is no request context.
        if has_request_context():
            log.exception("unexpected error on %s %s", request.method, request.path)
        elif has_websocket_context():
            log.exception("unexpected error on websocket %s", websocket.path)
        else:
            log.exception("unexpected error")
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")

    # ------------------------------------------------------------------ status
    @app.get("/status")
    async def open_status() -> Response:
        rep = coord.replicator
        readiness = coord.readiness.document()
        response = json_response({**readiness, "node_id": coord.node_id, "role": rep.role,
                                  "leader_id": coord.leader_id, "leader_url": coord.leader_url, "term": rep.term,
                                  "commit_index": rep.commit_index, "applied_index": coord.state.applied_index,
                                  "uptime_seconds": round(time.time() - coord.started_at, 3),
                                  "voters": sorted(rep.voters), "removed": rep.removed,
                                  "version": __version__}, 200 if coord.readiness.ready else 503)
        if not coord.readiness.ready:
            response.headers["Retry-After"] = "1"
        return response

    @app.get("/api/status")
    @requires("read")
    async def api_status() -> Response:
        return json_response(views.status(coord))

    @app.get("/api/dashboard")
    @requires("read")
    async def dashboard() -> Response:
        workers = [views.worker_view(coord, w) for w in coord.state.workers]
        recent = sorted(coord.state.tasks.values(), key=lambda t: t["seq"], reverse=True)[:50]
        return json_response({"status": views.status(coord), "workers": workers,
                              "recent_tasks": [task_view(t) for t in recent]})

    from dtf_app.coordinator import cluster as cluster_views

    @app.get("/api/cluster/status")
    @requires("read")
    async def cluster_status() -> Response:
        return json_response(cluster_views.status(coord, coord.monitor))

    @app.get("/api/cluster/leader")
    @requires("read")
    async def cluster_leader() -> Response:
        return json_response(cluster_views.leader_info(coord))

    @app.get("/api/cluster/nodes")
    @requires("read")
    async def cluster_nodes() -> Response:
        return json_response({"nodes": cluster_views.node_views(coord, coord.monitor)})

    @app.get("/api/cluster/health")
    @requires("read")
    async def cluster_health() -> Response:
        from dtf_app import health

        doc = cluster_views.health(coord, coord.monitor)
        metrics = await trio.to_thread.run_sync(health.sample, str(coord.data_dir))
        for node in doc["nodes"]:
            if node["node_id"] == coord.node_id:
                node.update(metrics=metrics, alerts=health.evaluate(
                    metrics, coord.health_monitor.warning, coord.health_monitor.critical))
        return json_response(doc)

    @app.get("/api/cluster/visualize")
    @requires("read")
    async def cluster_visualize() -> Response:
        return Response(cluster_views.visualize(coord, coord.monitor), content_type="text/html; charset=utf-8")

    async def _set_enabled(node_id: str, enabled: bool) -> Response:
        if node_id not in coord.cluster.members:
            raise ApiError(404, "not_found", f"no coordinator {node_id!r}; members: {', '.join(coord.cluster.members)}")
        disabled = set(coord.state.disabled_nodes)
        after = disabled - {node_id} if enabled else disabled | {node_id}
        if not enabled and after >= set(coord.cluster.members):
            raise ApiError(409, "last_enabled", "at least one coordinator must stay enabled to lead the cluster")
        (result,) = await coord.propose([{"op": "SetNodeEnabled", "node_id": node_id, "enabled": enabled}])
        return json_response(result)

    async def _membership(change: Awaitable[dict[str, Any]]) -> Response:
        try:
            return json_response(await change)
        except MembershipRefused as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from None

    @app.post("/api/cluster/nodes")
    @requires("admin")
    async def cluster_add_node() -> Response:
        from dtf_app import cluster as cluster_rule

        body = await json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_node", "the body must be an object {node_id, url}")
        unknown = sorted(set(body) - {"node_id", "url"})
        if unknown:
            raise ApiError(400, "invalid_node", f"unknown field(s) {', '.join(map(repr, unknown))}; accepted: node_id, url")
        problem = proto.id_problem(body.get("node_id"), "node_id")
        if problem:
            raise ApiError(400, "invalid_node", problem)
        if not isinstance(body.get("url"), str):
            raise ApiError(400, "invalid_node", "url must be the new coordinator's advertised URL, http(s)://HOST:PORT")
        try:
            url = cluster_rule.normalise_url(body["url"], "url")
        except cluster_rule.ClusterConfigError as exc:
            raise ApiError(400, "invalid_node", str(exc)) from None
        return await _membership(coord.add_member(body["node_id"], url))

    @app.delete("/api/cluster/nodes/<node_id>")
    @requires("admin")
    async def cluster_remove_node(node_id: str) -> Response:
        problem = proto.id_problem(node_id, "node id")
        if problem:
            raise ApiError(400, "invalid_node", problem)
        return await _membership(coord.remove_member(node_id))

    @app.post("/api/cluster/node/<node_id>/disable")
    @requires("admin")
    async def cluster_disable(node_id: str) -> Response:
        return await _set_enabled(node_id, False)

    @app.post("/api/cluster/node/<node_id>/enable")
    @requires("admin")
    async def cluster_enable(node_id: str) -> Response:
        return await _set_enabled(node_id, True)

    @app.get("/metrics")
    @requires("read")
    async def metrics() -> Response:
        from dtf_app.coordinator.metrics import render

        return Response(render(coord), content_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ workers
    @app.get("/api/workers")
    @requires("read")
    async def list_workers() -> Response:
        docs = [views.worker_view(coord, w) for w in sorted(coord.state.workers)]
        status = request.args.get("status")
        if status and status not in WORKER_STATUSES:
            raise ApiError(400, "invalid_parameter",
                           f"status must be one of {', '.join(WORKER_STATUSES)}, got {status!r}")
        if status:
            docs = [v for v in docs if v and v["status"] == status]
        return json_response({"workers": docs, "applied_index": coord.state.applied_index})

    @app.post("/api/workers/register")
    @requires("worker")
    async def register_worker() -> Response:
        """HTTP registration (the websocket hello does the same); the worker shows online once connected."""
        body = await json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_worker", "the body must be an object with a worker_id")
        problem = proto.id_problem(body.get("worker_id"), "worker_id")
        if problem:
            raise ApiError(400, "invalid_worker", problem)
        caps = {} if body.get("capabilities") is None else body["capabilities"]
        slots = scheduler.as_int(body.get("max_concurrent_tasks", 1))
        if not isinstance(caps, dict):
            raise ApiError(400, "invalid_worker", "capabilities must be an object")
        for key in ("hardware", "tags"):
            value = caps.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise ApiError(400, "invalid_worker", f"capabilities.{key} must be an array of strings")
        if caps.get("simulated") is not None and not isinstance(caps["simulated"], bool):
            raise ApiError(400, "invalid_worker", "capabilities.simulated must be true or false")
        if body.get("hostname") is not None and not isinstance(body["hostname"], str):
            raise ApiError(400, "invalid_worker", "hostname must be a string")
        if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 10_000:
            raise ApiError(400, "invalid_worker", "max_concurrent_tasks must be an integer from 1 to 10000")
        tags = [] if body.get("tags") is None else body["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "invalid_worker", "tags must be an array of strings")
        info = {"worker_id": body["worker_id"], "hostname": str(body.get("hostname") or ""), "capabilities": caps,
                "hardware": list(caps.get("hardware") or ["cpu"]), "tags": sorted(set(tags) | set(caps.get("tags") or [])),
                "simulated": bool(caps.get("simulated")), "max_concurrent_tasks": slots, "hardware_metrics": {}}
        issued = await admit_worker(coord, body["worker_id"])
        await coord.propose([{"op": "RegisterWorker", "worker": info}])
        view = views.worker_view(coord, body["worker_id"]) or {}
        if issued:
            view["credential"] = issued  # shown this once: present it as X-Worker-Credential from now on
        return json_response(view, 201)

    @app.delete("/api/workers/<worker_id>/enrolment")
    @requires("admin")
    async def forget_worker(worker_id: str) -> Response:
        """Revoke a worker id's enrolment, so a rebuilt machine can enrol under it again."""
        from dtf_app.coordinator import enrolment

        if not await enrolment.forget(coord, worker_id):
            raise ApiError(404, "not_found", f"worker {worker_id!r} is not enrolled")
        return json_response({"worker_id": worker_id, "forgotten": True})

    async def _set_drain(worker_id: str, drained: bool) -> Response:
        if worker_id not in coord.state.workers:
            raise ApiError(404, "not_found", f"no worker {worker_id!r}")
        await coord.propose([{"op": "SetWorkerDrain", "worker_id": worker_id, "drained": drained}])
        coord.wake_dispatcher()
        return json_response(views.worker_view(coord, worker_id))

    @app.post("/api/workers/<worker_id>/drain")
    @requires("cancel")
    async def drain_worker(worker_id: str) -> Response:
        """Stop giving the worker new tasks; what it runs finishes."""
        return await _set_drain(worker_id, True)

    @app.post("/api/workers/<worker_id>/enable")
    @requires("cancel")
    async def enable_worker(worker_id: str) -> Response:
        """Give a drained worker tasks again."""
        return await _set_drain(worker_id, False)

    @app.post("/api/workers/<worker_id>/resume")
    @requires("cancel")
    async def resume_worker(worker_id: str) -> Response:
        """Give a drained or quarantined worker tasks again."""
        return await _set_drain(worker_id, False)

    async def _stop_worker(worker_id: str, restart: bool) -> Response:
        if worker_id not in coord.state.workers:
            raise ApiError(404, "not_found", f"no worker {worker_id!r}")
        if not coord.is_leader:
            return not_leader_response(coord)  # workers connect to the leader: only it can tell one
        conn = coord.conns.get(worker_id)
        if conn is None or conn.closed:
            raise ApiError(409, "not_connected", f"worker {worker_id!r} is not connected to the leader, so it "
                                                 f"cannot be told to {'restart' if restart else 'stop'}")
        await coord.propose([{"op": "StopWorker", "worker_id": worker_id, "restart": restart,
                              "reason": "operator"}])
        return json_response(views.worker_view(coord, worker_id))

    @app.post("/api/workers/<worker_id>/stop")
    @requires("cancel")
    async def stop_worker(worker_id: str) -> Response:
        """The worker finishes what it runs and exits."""
        return await _stop_worker(worker_id, False)

    @app.post("/api/workers/<worker_id>/restart")
    @requires("cancel")
    async def restart_worker(worker_id: str) -> Response:
        """The worker finishes what it runs and starts again."""
        return await _stop_worker(worker_id, True)

    @app.get("/api/scaling/recommendations")
    @requires("read")
    async def scaling_recommendations() -> Response:
        return json_response({"node_id": coord.node_id, "is_leader": coord.is_leader,
                              **coord.scaling.document()})

    @app.get("/api/health/alerts")
    @requires("read")
    async def health_alerts() -> Response:
        return json_response({"node_id": coord.node_id, **coord.health_monitor.document()})

    @app.get("/api/workers/<worker_id>")
    @requires("read")
    async def get_worker(worker_id: str) -> Response:
        view = views.worker_view(coord, worker_id)
        if view is None:
            raise ApiError(404, "not_found", f"no worker {worker_id!r}")
        return json_response(view)

    # The sources' worker HTTP API (register alias, long poll, health, capabilities): http_workers.py.
    from dtf_app.coordinator import http_workers

    app.add_url_rule("/api/register", "register_source_form", register_worker, methods=["POST"])
    poll_worker_tasks = http_workers.register(app, coord)

    # ------------------------------------------------------------------ tasks
    @app.post("/api/tasks")
    @requires("submit")
    async def submit_tasks() -> Response:
        body = await json_body("tasks")
        single = isinstance(body, dict)
        if isinstance(body, dict) and isinstance(body.get("tasks"), list) and "type" not in body:
            body, single = body["tasks"], False
        docs = [body] if single else body
        if not isinstance(docs, list):
            raise ApiError(400, "invalid_task", "the body must be a task object or an array of task objects")
        if not docs:
            raise ApiError(400, "invalid_task", "the task array is empty")
        if len(docs) > MAX_TASKS_PER_REQUEST:
            raise ApiError(413, "too_many_tasks", f"the batch has {len(docs)} tasks; at most "
                                                  f"{MAX_TASKS_PER_REQUEST} tasks per request: split it")
        max_retries = coord.settings.max_retries
        try:
            # Big batches are handled in slices that yield to the event loop (see bulk.py).
            normalised = await bulk.map_yielding(
                lambda i, doc: scheduler.validate_task(doc, "task" if single else f"tasks[{i}]",
                                                       default_max_retries=max_retries), docs)
            del body, docs
            created = await coord.submit(normalised, allow_unschedulable=bool_arg("allow_unschedulable"),
                                         submitter=g.principal.name)
        except scheduler.TaskConflictError as exc:
            raise ApiError(409, "exists", str(exc)) from None
        except scheduler.TaskUnprocessableError as exc:
            # Well-formed per GET /openapi.json, but refers to unknown tasks or can run nowhere.
            code = "unschedulable" if "cannot run on any worker" in str(exc) else "invalid_dependencies"
            raise ApiError(422, code, str(exc)) from None
        except scheduler.TaskValidationError as exc:
            raise ApiError(400, "invalid_task", str(exc)) from None
        del normalised
        docs = await bulk.map_yielding(lambda _, task: task_view(task), created)
        del created
        text = await bulk.dumps(docs[0] if single else docs)
        return Response(text, status=201, content_type="application/json")

    @app.get("/api/tasks")
    async def list_tasks() -> Response:
        if request.headers.get(proto.WORKER_CREDENTIAL_HEADER, "").strip():
            # A worker's long poll for its own assignments (the sources' worker API, http_workers.py).
            return await poll_worker_tasks()
        return await _list_tasks()

    @requires("read")
    async def _list_tasks() -> Response:
        if request.args.get("wait"):
            raise ApiError(400, "invalid_parameter", f"wait is for a worker's poll: give the worker's "
                                                     f"{proto.WORKER_CREDENTIAL_HEADER} with it")
        limit = int_arg("limit", 100, minimum=1, maximum=100_000)
        offset = int_arg("offset", 0)
        filters = {k: request.args[k] for k in ("status", "type", "worker_id", "batch_id") if request.args.get(k)}
        if "status" in filters and filters["status"] not in scheduler.ALL_STATES:
            raise ApiError(400, "invalid_parameter",
                           f"status must be one of {', '.join(scheduler.ALL_STATES)}, got {filters['status']!r}")
        tasks = [t for t in coord.state.tasks.values() if all(t.get(k) == v for k, v in filters.items())]
        tasks.sort(key=lambda t: t["seq"])
        return json_response({"tasks": [task_view(t) for t in tasks[offset:offset + limit]], "total": len(tasks),
                              "applied_index": coord.state.applied_index})

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
        # Why it has not started yet (blocked, backoff, no capable worker free, behind N tasks), or null.
        wait = views.wait_reason(coord, task)
        view["wait_reason"] = wait["message"] if wait else None
        view["wait"] = wait
        return json_response(view)

    @app.get("/api/tasks/<task_id>/attempts")
    @requires("read")
    async def task_attempts(task_id: str) -> Response:
        """Every recorded attempt (which worker, how it ended, its error): the task detail view's history."""
        from dtf_app.store import queries

        if task_id not in coord.state.tasks:
            raise ApiError(404, "not_found", f"no task {task_id!r}")
        await coord.store.flush()
        return json_response({"task_id": task_id, "attempts": await queries.task_history(coord.store, task_id)})

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
        body = await json_body()
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
        if not isinstance(body.get("result", {}), dict):
            raise ApiError(400, "invalid_outcome", "result must be an object")
        if not isinstance(body.get("retry", True), bool):
            raise ApiError(400, "invalid_outcome", "retry must be true or false")
        item = clean_outcome({**body, "task_id": task_id, "attempt": attempt, "outcome": outcome,
                               "result": body.get("result") or {}})
        if item is None:
            raise ApiError(400, "invalid_outcome", "the outcome is malformed")
        # Only the worker holding the attempt may report it (or, once taken back, the one that held it).
        holder = task.get("worker_id") or task.get("last_worker_id")
        if not holder and request.headers.get(proto.WORKER_CREDENTIAL_HEADER) is None:
            # The header is required (GET /openapi.json): without it, 403 whatever the task's state.
            raise ApiError(403, proto.CREDENTIAL_REFUSED, f"a report needs the worker's credential in the "
                                                          f"{proto.WORKER_CREDENTIAL_HEADER} header")
        if not holder:
            raise ApiError(409, "not_assigned", f"task {task_id} is {task['status']} and was never assigned to a "
                                                "worker; there is no attempt to report")
        act_as(coord, holder, f"task {task_id} is held by worker {holder!r}: ")
        item["worker_id"] = holder
        item["end_time"] = item["end_time"] or time.time()
        if outcome == "completed":
            command = {"op": "CompleteTasks", "items": [item]}
        else:
            command = {"op": "FailTasks", "backoff": coord.duties.backoff,
                       "items": [dict(item, error=item["error"] or "failed", retry=bool(body.get("retry", True)))]}
        (recorded,) = await coord.propose([command])
        from dtf_app.coordinator import http_workers

        http_workers.note_report(coord, holder, task_id)
        # recorded: this report is the one the state machine kept (false for a repeat or a stale attempt:
        # one outcome per attempt, one completion per task).
        return json_response({**task_view(coord.state.tasks[task_id]), "recorded": bool(recorded)})

    @app.post("/api/tasks/<task_id>/complete")
    @requires("worker")
    async def complete_task(task_id: str) -> Response:
        return await _http_outcome(task_id, "completed")

    @app.post("/api/tasks/<task_id>/fail")
    @requires("worker")
    async def fail_task(task_id: str) -> Response:
        return await _http_outcome(task_id, "failed")

    def _subtask(task_id: str) -> None:
        task = coord.state.tasks.get(task_id)
        if task is None or not task.get("parent_id"):
            raise ApiError(404, "not_found", f"no subtask {task_id!r} (subtasks belong to an orchestrated task; "
                                             "report other tasks at /api/tasks/{id}/complete|fail)")

    @app.post("/api/subtasks/<task_id>/complete")
    @requires("worker")
    async def complete_subtask(task_id: str) -> Response:
        """The source design's subtask report: a subtask is a task with a parent, reported like one."""
        _subtask(task_id)
        return await _http_outcome(task_id, "completed")

    @app.post("/api/subtasks/<task_id>/fail")
    @requires("worker")
    async def fail_subtask(task_id: str) -> Response:
        _subtask(task_id)
        return await _http_outcome(task_id, "failed")

    # ------------------------------------------------------------------ results
    @app.get("/api/results")
    @requires("read")
    async def list_results() -> Response:
        from dtf_app.store import queries

        await coord.store.flush()
        rows = await queries.list_results(
            coord.store, task_id=request.args.get("task_id"), status=request.args.get("status"),
            result_type=request.args.get("type"), worker_id=request.args.get("worker_id"),
            limit=int_arg("limit", 100, minimum=1, maximum=100_000), offset=int_arg("offset", 0))
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

    @app.get("/api/results/anomalies")
    @requires("read")
    async def result_anomalies() -> Response:
        """Benchmark rows more than z standard deviations from their group's mean (default 2.5)."""
        from dtf_app.store import queries

        await coord.store.flush()
        raw_z = request.args.get("z_threshold") or "2.5"
        try:
            z_threshold = float(raw_z)
        except ValueError:
            raise ApiError(400, "invalid_parameter", f"z_threshold must be a positive number, got {raw_z!r}") from None
        try:
            rows = await queries.anomalies(coord.store, metric=request.args.get("metric") or "throughput",
                                           z_threshold=z_threshold)
        except ValueError as exc:
            raise ApiError(400, "invalid_parameter", str(exc)) from None
        return json_response({"anomalies": rows})

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
        body = await json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_key", "the body must be an object with name and role")
        name, role = body.get("name"), body.get("role")
        problem = proto.id_problem(name, "name")
        if problem:
            raise ApiError(400, "invalid_key", problem)
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
        body = await json_body()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ApiError(400, "invalid_key", "the body must be an object with the key's name")
        return await _delete_key(body["name"])

    # ------------------------------------------------------------------ operations (backup.py)
    @app.post("/api/admin/backup")
    @requires("admin")
    async def backup() -> Response:
        from dtf_app.coordinator.backup import BackupError, take_backup

        body = await json_body()
        if not isinstance(body, dict) or not isinstance(body.get("to"), str) or not body["to"]:
            raise ApiError(400, "invalid_backup", "the body must be {\"to\": \"/absolute/new/directory\"}")
        try:
            return json_response(await take_backup(coord, body["to"]), 201)
        except BackupError as exc:
            # A well-formed request the machine's state refuses (the directory is in use) is a conflict.
            status = 409 if "is not an empty directory" in str(exc) else 400
            raise ApiError(status, "invalid_backup" if status == 400 else "exists", str(exc)) from None

    @app.get("/api/results/export")
    @requires("read")
    async def export_results() -> Response:
        import os
        import tempfile
        from pathlib import Path

        from dtf_app.coordinator.backup import BackupError, export_sql

        # An empty value is an absent parameter here, as everywhere in this API.
        table = request.args.get("table") or "results"
        fmt = request.args.get("format") or "parquet"
        with tempfile.TemporaryDirectory(prefix="dtf-export-") as tmp:
            path = os.path.join(tmp, f"{table}.{fmt}")
            try:
                sql = export_sql(table, fmt, path)
            except BackupError as exc:
                raise ApiError(400, "invalid_export", str(exc)) from None
            await coord.store.query(sql)
            data = await trio.to_thread.run_sync(Path(path).read_bytes)
        mime = "application/vnd.apache.parquet" if fmt == "parquet" else "text/csv"
        return Response(data, status=200, mimetype=mime,
                        headers={"Content-Disposition": f"attachment; filename={table}.{fmt}"})

    @app.get("/openapi.json")
    @requires("read")
    async def openapi() -> Response:
        from dtf_app.coordinator.openapi import build_spec

        return json_response(build_spec(__version__))

    # ------------------------------------------------------------------ websockets
    from dtf_app.coordinator.ws import client_socket, raft_socket, worker_socket

    app.websocket("/ws/worker")(worker_socket)
    app.websocket("/ws")(client_socket)
    app.websocket("/raft")(raft_socket)
    from dtf_app.coordinator import bundles

    bundles.register(app, coord)  # dtf pytest: suite bundles, run reports, duration history
    from dtf_app.coordinator import results_api

    results_api.register(app, coord)  # regressions
    from dtf_app.coordinator import orchestrator_api

    orchestrator_api.register(app, coord)  # multi-device orchestration
    return app


# Answered by every node itself, leader or not: health checks, metrics, the cluster views, the schema.
_NODE_LOCAL_PREFIXES = ("/api/cluster/", "/status", "/metrics", "/openapi.json")
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _route_to_leader(coord: Coordinator) -> Response | None:
    """Writes go to the leader; reads too (linearizable, after a read barrier), unless ``?stale=true``
    asks a follower for its own, possibly stale, view. Node-local routes are answered here."""
    path = request.path
    if path.startswith(_NODE_LOCAL_PREFIXES) and not (
            path.startswith("/api/cluster/node/")
            or (path.startswith("/api/cluster/nodes") and request.method in _WRITE_METHODS)):
        return None
    if coord.is_leader:
        if request.method not in _WRITE_METHODS and not coord.cluster.is_single:
            try:
                with trio.fail_after(10):
                    await coord.read_barrier()
            except (NotLeader, ProposalDropped, trio.TooSlowError):
                return not_leader_response(coord)
        return None
    if request.method not in _WRITE_METHODS and bool_arg("stale"):
        return None
    return not_leader_response(coord)


__all__ = ["ApiError", "create_app"]
