"""Routes and the websocket request of the multi-device orchestrator (planning and merging: orchestrator.py).

- ``POST /api/orchestrate`` (submit): split a task into subtasks by strategy; one ``Orchestrate`` commit
  creates the parent and every subtask, so the 201 means all of it is durable on a majority.
- ``GET /api/orchestrated_task/{id}``, ``GET /api/orchestrated_tasks`` (read): status,
  ``completion_percentage``, per-subtask status and, once finished, the merged result.
- ``POST /api/cancel_orchestrated_task`` (cancel) ``{"task_id"}``: one ``CancelOrchestration`` commit
  cancels the parent and every unfinished subtask (workers running one get a cancel frame).
- websocket ``orchestrate_task`` on ``/ws`` (needs the submit permission): the same as the POST,
  answered with ``orchestrate_task_response``.
"""

from __future__ import annotations

import uuid
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio

from dtf_app.coordinator import orchestrator, scheduler
from dtf_app.coordinator.service import Coordinator


class OrchestrateRefused(Exception):
    """An orchestrate request that cannot be done: HTTP status, error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def orchestrate(coord: Coordinator, body: Any, *, allow_unschedulable: bool = False) -> dict[str, Any]:
    """Plan and commit an orchestrated task; returns its view. Raises OrchestrateRefused."""
    settings = coord.settings
    if not settings.orchestrator_enabled:
        raise OrchestrateRefused(403, "orchestrator_disabled", "orchestration is switched off on this cluster "
                                 "(multi_device_orchestrator.enabled = false); submit tasks with POST /api/tasks")
    retries = settings.max_retries if settings.subtask_max_retries is None else settings.subtask_max_retries
    try:
        parsed = orchestrator.parse_request(body, default_max_retries=retries, default_timeout=settings.subtask_timeout,
                                            default_priority=settings.subtask_priority)
        allow_unschedulable = allow_unschedulable or bool(body.get("allow_unschedulable"))
        connected = [wid for wid, conn in coord.conns.items() if not conn.closed]
        workers = orchestrator.available_workers(coord.state.workers, connected)
        pieces = orchestrator.plan(parsed["task"], parsed["strategy"], workers,
                                   subtask_count=parsed["subtask_count"])
    except orchestrator.OrchestrationUnprocessable as exc:
        raise OrchestrateRefused(422, "cannot_split", str(exc)) from None
    except orchestrator.OrchestrationError as exc:
        raise OrchestrateRefused(400, "invalid_orchestration", str(exc)) from None
    parent_id = parsed["task_id"] or f"orch-{uuid.uuid4().hex[:12]}"
    if parent_id in coord.state.orchestrations or parent_id in coord.state.tasks:
        raise OrchestrateRefused(409, "exists", f"task_id {parent_id!r} already exists")
    parent, subtasks = orchestrator.build(parsed, parent_id, pieces)
    taken = [s["task_id"] for s in subtasks if s["task_id"] in coord.state.tasks]
    if taken:
        raise OrchestrateRefused(409, "exists", f"subtask id(s) {', '.join(taken)} already exist; choose another "
                                                "task_id")
    known = list(coord.state.workers.values())
    for doc in subtasks:
        reason = scheduler.infeasibility_reason(known, doc["requirements"], doc.get("resources"))
        if reason is not None:
            if not allow_unschedulable:
                raise OrchestrateRefused(422, "unschedulable", f"subtask {doc['name']} cannot run on any worker: "
                                         f"{reason} (pass allow_unschedulable=true to queue it until such a "
                                         "worker registers)")
            doc["status"], doc["error"] = "unschedulable", reason
    (result,) = await coord.propose([{"op": "Orchestrate", "orchestration": parent, "tasks": subtasks}])
    if not isinstance(result, dict) or "orchestration" not in result:
        raise OrchestrateRefused(409, "exists", f"the orchestration was refused: {result!r:.300}")
    coord.wake_dispatcher()
    return orchestrator.view(result["orchestration"], coord.state.tasks)


async def ws_orchestrate(coord: Coordinator, principal: Any, message: dict[str, Any]) -> dict[str, Any]:
    """The websocket ``orchestrate_task`` request -> ``orchestrate_task_response``."""
    request_id = message.get("request_id")
    answer: dict[str, Any] = {"type": "orchestrate_task_response"}
    if request_id is not None:
        answer["request_id"] = request_id
    if principal is None or not principal.can("submit"):
        role = getattr(principal, "role", None)
        return {**answer, "success": False, "error": {"code": "forbidden", "message": f"role {role!r} may not "
                                                      "orchestrate tasks; it needs the submit permission"}}
    if not coord.is_leader:
        return {**answer, "success": False, "error": {"code": "not_leader", "message": "not the leader",
                                                      "leader_url": coord.leader_url}}
    body = {k: v for k, v in message.items() if k not in ("type", "request_id")}
    try:
        doc = await orchestrate(coord, body)
    except OrchestrateRefused as exc:
        return {**answer, "success": False, "error": {"code": exc.code, "message": exc.message}}
    return {**answer, "success": True, "task_id": doc["task_id"],
            "message": f"Task orchestrated with strategy: {doc['strategy']}", "orchestrated_task": doc}


def register(app: QuartTrio, coord: Coordinator) -> None:
    """Add the routes to the app (one call in api.create_app)."""
    from dtf_app.coordinator.http import ApiError, bool_arg, int_arg, json_body, json_response, requires

    @app.post("/api/orchestrate")
    @requires("submit")
    async def post_orchestrate() -> Response:
        body = await json_body()
        try:
            doc = await orchestrate(coord, body, allow_unschedulable=bool_arg("allow_unschedulable"))
        except OrchestrateRefused as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return json_response({**doc, "message": f"Task orchestrated with strategy: {doc['strategy']}"}, 201)

    @app.get("/api/orchestrated_task/<task_id>")
    @requires("read")
    async def get_orchestrated(task_id: str) -> Response:
        parent = coord.state.orchestrations.get(task_id)
        if parent is None:
            raise ApiError(404, "not_found", f"no orchestrated task {task_id!r}")
        return json_response(orchestrator.view(parent, coord.state.tasks))

    @app.get("/api/orchestrated_tasks")
    @requires("read")
    async def list_orchestrated() -> Response:
        status, strategy = request.args.get("status"), request.args.get("strategy")
        if status and status not in orchestrator.STATUSES:
            raise ApiError(400, "invalid_parameter",
                           f"status must be one of {', '.join(orchestrator.STATUSES)}, got {status!r}")
        if strategy and strategy not in orchestrator.STRATEGIES:
            raise ApiError(400, "invalid_parameter",
                           f"strategy must be one of {', '.join(orchestrator.STRATEGIES)}, got {strategy!r}")
        limit = int_arg("limit", 100, minimum=1, maximum=100_000)
        offset = int_arg("offset", 0)
        parents = [p for p in coord.state.orchestrations.values()
                   if (not status or p["status"] == status) and (not strategy or p["strategy"] == strategy)]
        parents.sort(key=lambda p: (p.get("create_time") or 0, p["task_id"]))
        return json_response({"orchestrated_tasks": [orchestrator.view(p, coord.state.tasks)
                                                     for p in parents[offset:offset + limit]],
                              "total": len(parents), "applied_index": coord.state.applied_index})

    @app.post("/api/cancel_orchestrated_task")
    @requires("cancel")
    async def cancel_orchestrated() -> Response:
        body = await json_body()
        if not isinstance(body, dict) or not isinstance(body.get("task_id"), str):
            raise ApiError(400, "invalid_request", "the body must be {\"task_id\": \"<orchestrated task id>\"}")
        reason = body.get("reason", "orchestrated task cancelled by user")
        if not isinstance(reason, str) or len(reason) > 1000:
            raise ApiError(400, "invalid_request", "reason must be a string of at most 1000 characters")
        parent = coord.state.orchestrations.get(body["task_id"])
        if parent is None:
            raise ApiError(404, "not_found", f"no orchestrated task {body['task_id']!r}")
        if parent["status"] != "in_progress":
            raise ApiError(409, "already_finished", f"orchestrated task {body['task_id']} is already {parent['status']}")
        by = getattr(g, "principal", None)
        await coord.propose([{"op": "CancelOrchestration", "task_id": body["task_id"],
                              "reason": reason + (f" ({by.name})" if by is not None else "")}])
        return json_response(orchestrator.view(coord.state.orchestrations[body["task_id"]], coord.state.tasks))
