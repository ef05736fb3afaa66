"""HTTP building blocks shared by every route module: error answers, strict JSON in and out, auth.

api.py, bundles.py and results_api.py build their routes from these, so a 4xx looks the same
everywhere (``{"error": {"code", "message"}}``) and every body is parsed by the same strict rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

from quart import Response, g, request

from dtf_app import jsonsafe
from dtf_app.coordinator import bulk
from dtf_app.security import keys as keymod

if TYPE_CHECKING:
    from dtf_app.coordinator.service import Coordinator

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_TASKS_PER_REQUEST = 100_000


class ApiError(Exception):
    """An error answer: status, machine code, human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> Response:
    return Response(jsonsafe.dumps({"error": {"code": code, "message": message}}), status=status,
                    content_type="application/json")


def json_response(data: Any, status: int = 200) -> Response:
    # Strict JSON always (jsonsafe): a strict client must be able to parse every answer.
    return Response(jsonsafe.dumps(data), status=status, content_type="application/json")


def authorize(coord: Coordinator, *permissions: str) -> keymod.Principal:
    """Authenticate the request's API key and check it holds one of ``permissions`` (401/403 otherwise);
    the principal is also kept in ``g.principal``."""
    key = keymod.key_from_headers(request.headers)
    if key is None:
        raise ApiError(401, "unauthorized", "an API key is required (X-API-Key header or "
                                            "Authorization: Bearer <key>)")
    principal = keymod.authenticate(key, coord.state.api_keys)
    if principal is None:
        raise ApiError(401, "unauthorized", "the API key is not valid")
    if not any(principal.can(p) for p in permissions):
        roles = keymod.roles_with(permissions[0]) if len(permissions) == 1 else \
            sorted({r for p in permissions for r in keymod.roles_with(p)})
        raise ApiError(403, "forbidden", f"role {principal.role!r} may not do this; it needs one of "
                                         f"the roles {', '.join(roles)}")
    g.principal = principal
    return principal


def requires(permission: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Route decorator: authenticate the caller and check the permission (401/403 otherwise)."""

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            authorize(g.coord, permission)
            return await handler(*args, **kwargs)

        return wrapper

    return decorate


async def json_body(root: str = "body") -> Any:
    """The request body as strict JSON (dtf_app.jsonsafe): a 400 naming the field for NaN/Infinity, a
    string that is not valid Unicode, or nesting deeper than jsonsafe.MAX_JSON_DEPTH."""
    raw = await request.get_data()
    if not raw:
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON document")
    try:
        if len(raw) < bulk.SLICED_PARSE_BYTES:
            return jsonsafe.loads(raw, root=root, what="the request body")
        # A big body is decoded in slices so the event loop keeps running (bulk.loads), same checks.
        return await jsonsafe.aloads(raw, bulk.loads, root=root, what="the request body")
    except jsonsafe.JsonInputError as exc:
        raise ApiError(400, exc.code, exc.message) from None


def int_arg(name: str, default: int, *, minimum: int = 0, maximum: int = 1_000_000) -> int:
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


def check_url_text() -> None:
    """Query parameters and path segments must be valid Unicode too (the body's rule, jsonsafe)."""
    try:
        seen: set[str] = set()
        for key, value in request.args.items(multi=True):
            jsonsafe.check_text(key, "a query parameter name")
            jsonsafe.check_text(value, f"query parameter {key}")
            if key in seen:
                # Every parameter of this API takes one value: a second one would be silently dropped.
                raise ApiError(400, "invalid_parameter", f"query parameter {key} is given more than once; "
                                                         "give it once")
            seen.add(key)
        for key, value in (request.view_args or {}).items():
            if isinstance(value, str):
                jsonsafe.check_text(value, f"path segment {key}")
    except jsonsafe.JsonInputError as exc:
        raise ApiError(400, "invalid_parameter", exc.message) from None


def bool_arg(name: str) -> bool:
    raw = (request.args.get(name) or "false").lower()
    if raw not in ("true", "false"):
        raise ApiError(400, "invalid_parameter", f"query parameter {name} must be true or false, got {raw!r}")
    return raw == "true"


def act_as(coord: Coordinator, worker_id: str, context: str = "") -> None:
    """403 unless the request carries ``worker_id``'s credential (X-Worker-Credential), whatever the role."""
    from dtf_app.coordinator import enrolment

    try:
        enrolment.verify(coord.state.enrolments, worker_id, enrolment.credential_from_headers(request.headers))
    except enrolment.CredentialRefused as exc:
        raise ApiError(403, exc.code, context + str(exc)) from None


async def admit_worker(coord: Coordinator, worker_id: str) -> str | None:
    """Enrol or check the caller as ``worker_id`` (403 when refused); the issued credential, if any."""
    from dtf_app.coordinator import enrolment

    try:
        return await enrolment.admit(coord, worker_id, enrolment.credential_from_headers(request.headers),
                                     g.principal.name)
    except enrolment.CredentialRefused as exc:
        raise ApiError(403, exc.code, str(exc)) from None


def not_leader_response(coord: Coordinator) -> Response:
    """A follower's answer to a request only the leader serves: 307 to the leader, or 503 if none."""
    leader_url = coord.leader_url
    if leader_url is None or coord.leader_id == coord.node_id:
        response = error_response(503, "no_leader", "no leader is known yet (an election is under way or a "
                                  "majority of the coordinators is unreachable); retry shortly")
        response.headers["Retry-After"] = "1"
        return response
    body = {"error": {"code": "not_leader", "message": f"this coordinator ({coord.node_id}) is a follower; "
                      f"send this request to the leader {coord.leader_id} at {leader_url}",
                      "leader_id": coord.leader_id, "leader_url": leader_url}}
    response = json_response(body, 307)
    query = request.query_string.decode("latin-1")
    response.headers["Location"] = leader_url + request.path + (f"?{query}" if query else "")
    return response
