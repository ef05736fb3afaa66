"""The sources' worker HTTP API, for workers that cannot hold a websocket (sources' api-shapes.md, *Worker API*).

A worker that speaks only plain HTTP runs tasks end to end with these requests, all with a worker-role
API key and, once enrolled, its own ``X-Worker-Credential`` (dtf_app/protocol.py, *Worker identity*):

- ``POST /api/register`` (the sources' name for ``POST /api/workers/register``): enrols the id and records
  its capabilities; the answer carries a generated credential once when the worker presented none.
- ``GET /api/tasks`` with ``X-Worker-Credential``: a long poll for *that worker's* assignments. It answers
  at once when there is news (an attempt it was not told about yet, or a cancellation), else after
  ``wait`` seconds; ``tasks`` always lists every attempt the worker holds now (an attempt it runs that is
  no longer listed was taken back: stop it), so a lost answer costs nothing. Without the header the same
  path is the users' task listing (api.py).
- ``POST /api/health``: health metrics, and ``running`` (the attempts it has started), like the websocket
  heartbeat; an attempt reported there for the first time is committed as started (``StartTasks``).
- ``POST /api/tasks/{id}/complete`` | ``/fail`` (api.py): the outcome, committed before the answer, so a 2xx
  is the ack; the state machine records one completion per task, so a repeated report is harmless.
- ``GET /api/capabilities``: with a credential, the profile the coordinator matches tasks against for that
  worker; without one (role read), the cluster's hardware kinds, slots and workers.

Such a worker is a :class:`~dtf_app.coordinator.intake.WorkerConn` like a websocket one, so dispatch,
cancellation, step-down and the liveness rules are the same code: the frames pushed to it wait in a
queue that its polls drain, and each poll (or report) counts as a heartbeat. Its first poll opens the
session (``worker_hello``, as a websocket hello would); a session closed by the coordinator (worker
declared lost, replaced by a newer connection, leader stepped down) is reopened by the next poll.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from weakref import WeakKeyDictionary

import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from dtf_app import protocol as proto
from dtf_app.coordinator import enrolment
from dtf_app.coordinator import resources as resmod
from dtf_app.coordinator.intake import WorkerConn
from dtf_app.coordinator.service import Coordinator
from dtf_app.security import keys as keymod

POLL_WAIT_MAX_S = 60.0
"""The longest ``wait`` a poll may ask for; the coordinator also caps it at half the worker timeout."""
SESSION_QUEUE = 10_000
# Query parameters a worker's poll understands (``stale`` is the generic read flag; a poll always needs
# the leader, which answers it either way).
POLL_PARAMS = frozenset({"worker_id", "wait", "stale"})


class HttpSession:
    """What the coordinator keeps about one HTTP worker's connection, besides its :class:`WorkerConn`."""

    def __init__(self, conn: WorkerConn, receive: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        self.conn = conn
        self.receive = receive
        # (task_id, attempt) pairs the last answer listed: anything else held is news.
        self.delivered: set[tuple[str, int]] = set()
        # Attempts the worker reported as started (POST /api/health running), committed once each.
        self.started: set[tuple[str, int]] = set()
        self.cancels: list[dict[str, Any]] = []
        # The frame that ended the session (not_leader after a step-down, credential_refused), if any.
        self.error: dict[str, Any] | None = None
        self.ended = False

    def take(self, message: dict[str, Any]) -> None:
        """One frame the coordinator pushed: cancellations wait for the next answer; assignments are read
        from the state itself (so an answer is never older than what is committed); acks are implicit
        (HTTP reports are committed before they are answered)."""
        kind = message.get("type")
        if kind == proto.CANCEL:
            self.cancels.append({"task_id": message.get("task_id"), "attempt": message.get("attempt")})
        elif kind == proto.ERROR:
            self.error = message
            self.ended = True


_SESSIONS: WeakKeyDictionary[WorkerConn, HttpSession] = WeakKeyDictionary()


def session_of(coord: Coordinator, worker_id: str) -> HttpSession | None:
    """The worker's open HTTP session, or None (never had one, closed, or connected by websocket)."""
    conn = coord.conns.get(worker_id)
    session = _SESSIONS.get(conn) if conn is not None else None
    return session if session is not None and not conn.closed and not session.ended else None


def held(coord: Coordinator, worker_id: str) -> dict[str, int]:
    """The attempts the state says this worker holds: task id -> attempt."""
    worker = coord.state.workers.get(worker_id)
    assigned = worker.get("assigned") if worker is not None else None
    return dict(assigned) if isinstance(assigned, dict) else {}


def assignments(coord: Coordinator, worker_id: str) -> list[dict[str, Any]]:
    """Every attempt the worker holds, as the websocket ``assign`` frame describes them, plus the sources'
    Task model names (``parameters`` for ``config``, ``status``, ``dependencies``)."""
    items = []
    worker = coord.state.workers.get(worker_id) or {}
    for task_id, attempt in held(coord, worker_id).items():
        task = coord.state.tasks.get(task_id)
        if task is None:
            continue
        items.append({"task_id": task_id, "attempt": attempt, "type": task["type"], "name": task.get("name"),
                      "config": task["config"], "parameters": task["config"], "status": task["status"],
                      "timeout_seconds": task["timeout_seconds"], "priority": task["priority"],
                      "dependencies": list(task.get("dependencies") or []),
                      # Its reserved devices, as the websocket frame gives them (the agent pins the task).
                      **resmod.assignment_fields(task, (worker.get("reserved") or {}).get(task_id))})
    items.sort(key=lambda item: coord.state.tasks[item["task_id"]].get("seq", 0))
    return items


def _has_news(coord: Coordinator, session: HttpSession) -> bool:
    if session.cancels or session.ended:
        return True
    return any((task_id, attempt) not in session.delivered for task_id, attempt in held(coord, session.conn.worker_id).items())


async def open_session(coord: Coordinator, worker_id: str, credential: str | None, key_name: str | None) -> HttpSession:
    """The worker's HTTP session, opened (as a websocket hello would) when it has none.

    Raises :class:`LookupError` when the id was never registered and enrolment.CredentialRefused when the
    credential is not the id's.
    """
    session = session_of(coord, worker_id)
    if session is not None:
        enrolment.verify(coord.state.enrolments, worker_id, credential)
        return session
    worker = coord.state.workers.get(worker_id)
    if worker is None:
        raise LookupError(worker_id)
    # The hello a websocket worker would send, from what its registration recorded (so a new session
    # keeps the capabilities and slots it registered with).
    hello = {"type": proto.HELLO, "worker_id": worker_id, "hostname": worker.get("hostname") or "",
             "capabilities": worker.get("capabilities") or {}, "tags": list(worker.get("tags") or []),
             "max_concurrent_tasks": worker.get("max_concurrent_tasks") or 1,
             "simulated": bool(worker.get("simulated")), "metrics": worker.get("hardware_metrics") or {}}
    send, receive = trio.open_memory_channel[dict[str, Any]](SESSION_QUEUE)
    conn = await coord.intake.hello(hello, send, credential=credential, key_name=key_name)
    session = HttpSession(conn, receive)
    _SESSIONS[conn] = session
    coord.wake_dispatcher()
    return session


def poll_wait_max(coord: Coordinator) -> float:
    """The longest a poll waits: a waiting poll must not outlast the worker timeout it counts against."""
    return max(0.0, min(POLL_WAIT_MAX_S, coord.settings.worker_timeout / 2))


async def poll(coord: Coordinator, session: HttpSession, wait: float) -> dict[str, Any]:
    """Wait (at most ``wait`` seconds) for news for this worker, then describe what it holds."""
    conn = session.conn
    conn.last_seen = time.monotonic()
    if wait > 0 and not _has_news(coord, session):
        with trio.move_on_after(wait):
            while not _has_news(coord, session):
                try:
                    session.take(await session.receive.receive())
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    session.ended = True
    while not session.ended:
        try:
            session.take(session.receive.receive_nowait())
        except trio.WouldBlock:
            break
        except (trio.EndOfChannel, trio.ClosedResourceError):
            session.ended = True
    conn.last_seen = time.monotonic()
    tasks = [] if session.error is not None else assignments(coord, conn.worker_id)
    before = session.delivered
    session.delivered = {(t["task_id"], t["attempt"]) for t in tasks}
    now = time.monotonic()
    for task in tasks:
        # Handed over: the worker has it, so the liveness rule "assigned but no longer run" starts
        # from here; its health reports (running) say what it really runs from then on.
        conn.running.add(task["task_id"])
        conn.assigned_at.setdefault(task["task_id"], now)
    cancels, session.cancels = session.cancels, []
    return {"worker_id": conn.worker_id, "tasks": tasks,
            "new": [t["task_id"] for t in tasks if (t["task_id"], t["attempt"]) not in before],
            "cancel": cancels, "session_open": not session.ended,
            "heartbeat_interval": coord.settings.heartbeat_interval,
            "worker_timeout": coord.settings.worker_timeout, "poll_wait_max": poll_wait_max(coord)}


def report_running(coord: Coordinator, session: HttpSession, running: list[dict[str, Any]]) -> None:
    """``running`` of a health report: commit first reports as started, then treat it as a heartbeat's."""
    mine = held(coord, session.conn.worker_id)
    fresh = [item for item in running
             if mine.get(item["task_id"]) == item["attempt"] and (item["task_id"], item["attempt"]) not in session.started]
    if fresh:
        session.started.update((item["task_id"], item["attempt"]) for item in fresh)
        coord.intake.message(session.conn, {"type": proto.STARTED, "items": [
            {"task_id": item["task_id"], "attempt": item["attempt"],
             "start_time": item.get("start_time") or time.time()} for item in fresh]})


def worker_of_credential(coord: Coordinator, credential: str) -> str | None:
    """The enrolled worker id bound to this credential, or None."""
    import hmac

    digest = keymod.hash_key(credential)
    for worker_id, record in coord.state.enrolments.items():
        if hmac.compare_digest(record.get("credential_hash", ""), digest):
            return worker_id
    return None


def note_report(coord: Coordinator, worker_id: str, task_id: str) -> None:
    """An HTTP outcome was committed: it counts as a sign of life, and the task left the worker."""
    session = session_of(coord, worker_id)
    if session is not None:
        session.conn.last_seen = time.monotonic()
        session.conn.running.discard(task_id)


def capabilities_summary(coord: Coordinator) -> dict[str, Any]:
    """The cluster's capability profile: per hardware kind, how many workers (connected) and slots."""
    kinds: dict[str, dict[str, int]] = {}
    workers = []
    for worker_id in sorted(coord.state.workers):
        worker = coord.state.workers[worker_id]
        conn = coord.conns.get(worker_id)
        connected = conn is not None and not conn.closed
        slots = int(worker.get("max_concurrent_tasks") or 1)
        hardware = list(worker.get("hardware") or ["cpu"])
        for kind in hardware:
            entry = kinds.setdefault(kind, {"workers": 0, "connected": 0, "slots": 0, "connected_slots": 0})
            entry["workers"] += 1
            entry["slots"] += slots
            if connected:
                entry["connected"] += 1
                entry["connected_slots"] += slots
        workers.append({"worker_id": worker_id, "hardware": hardware, "tags": list(worker.get("tags") or []),
                        "max_concurrent_tasks": slots, "simulated": bool(worker.get("simulated")),
                        "connected": connected})
    return {"hardware": kinds, "task_types": list(proto.TASK_TYPES), "workers": workers}


def worker_profile(coord: Coordinator, worker_id: str) -> dict[str, Any]:
    """What the coordinator matches tasks against for this worker (its registration)."""
    from dtf_app.coordinator import views

    worker = coord.state.workers[worker_id]
    return {"worker_id": worker_id, "hostname": worker.get("hostname") or "",
            "hardware_id": views.hardware_id(worker), "hardware": list(worker.get("hardware") or ["cpu"]),
            "tags": list(worker.get("tags") or []), "capabilities": worker.get("capabilities") or {},
            "max_concurrent_tasks": int(worker.get("max_concurrent_tasks") or 1),
            "simulated": bool(worker.get("simulated")), "connected": session_of(coord, worker_id) is not None
            or (worker_id in coord.conns and not coord.conns[worker_id].closed)}


def register(app: QuartTrio, coord: Coordinator) -> Callable[[], Awaitable[Response]]:
    """Add the worker HTTP routes that api.py does not define itself; returns the poll's handler, which
    api.py's ``GET /api/tasks`` hands a request with a worker credential to."""
    from dtf_app.coordinator.http import (
        ApiError,
        act_as,
        json_body,
        json_response,
        not_leader_response,
        requires,
    )

    def _credential_worker(credential: str, named: str | None = None) -> str:
        """The worker id the request acts as: ``named`` (the poll's worker_id), else the credential's own."""
        worker_id = named or worker_of_credential(coord, credential)
        if worker_id is None:
            raise ApiError(403, proto.CREDENTIAL_REFUSED, f"the {proto.WORKER_CREDENTIAL_HEADER} is not the "
                                                          "credential of any enrolled worker; register first "
                                                          "(POST /api/register)")
        try:
            enrolment.verify(coord.state.enrolments, worker_id, credential)
        except enrolment.CredentialRefused as exc:
            raise ApiError(403, exc.code, str(exc)) from None
        return worker_id

    @requires("worker")
    async def poll_tasks() -> Response:
        if not coord.is_leader:
            return not_leader_response(coord)  # even with ?stale=true: assignments come from the leader
        unknown = sorted(set(request.args) - POLL_PARAMS)
        if unknown:
            raise ApiError(400, "invalid_parameter", f"a worker's poll (X-Worker-Credential given) takes only "
                                                     f"worker_id and wait, not {', '.join(unknown)}")
        cap = poll_wait_max(coord)
        raw = request.args.get("wait")
        try:
            wait = cap if raw in (None, "") else float(raw)
        except ValueError:
            raise ApiError(400, "invalid_parameter", f"wait must be a number of seconds, got {raw!r}") from None
        if not 0 <= wait <= POLL_WAIT_MAX_S:  # also refuses nan
            raise ApiError(400, "invalid_parameter", f"wait must be from 0 to {POLL_WAIT_MAX_S:g} seconds")
        credential = enrolment.credential_from_headers(request.headers) or ""
        worker_id = _credential_worker(credential, request.args.get("worker_id"))
        try:
            session = await open_session(coord, worker_id, credential, g.principal.name)
        except LookupError:
            raise ApiError(404, "not_registered", f"worker {worker_id!r} is enrolled but not registered: "
                                                  "POST /api/register first") from None
        except enrolment.CredentialRefused as exc:
            raise ApiError(403, exc.code, str(exc)) from None
        answer = await poll(coord, session, min(wait, cap))
        if session.error is not None:
            if session.error.get("code") == "not_leader":
                return not_leader_response(coord)  # stepped down while the poll waited
            raise ApiError(403, str(session.error.get("code") or proto.CREDENTIAL_REFUSED),
                           str(session.error.get("message") or "the session was ended"))
        return json_response(answer)

    @app.get("/api/capabilities")
    async def capabilities() -> Response:
        credential = enrolment.credential_from_headers(request.headers)
        if credential is None:
            return await _cluster_capabilities()
        return await _worker_capabilities(credential)

    @requires("read")
    async def _cluster_capabilities() -> Response:
        return json_response(capabilities_summary(coord))

    @requires("worker")
    async def _worker_capabilities(credential: str) -> Response:
        worker_id = _credential_worker(credential)
        if worker_id not in coord.state.workers:
            raise ApiError(404, "not_registered", f"worker {worker_id!r} is not registered: POST /api/register")
        return json_response(worker_profile(coord, worker_id))

    @app.post("/api/health")
    @requires("worker")
    async def post_health() -> Response:
        body = await json_body()
        if not isinstance(body, dict) or not isinstance(body.get("worker_id"), str):
            raise ApiError(400, "invalid_health", "the body must be an object with a string worker_id")
        if not isinstance(body.get("metrics", {}), dict | None):
            raise ApiError(400, "invalid_health", "metrics must be an object")
        running = body.get("running")
        if running is not None and (not isinstance(running, list) or not all(
                isinstance(r, dict) and isinstance(r.get("task_id"), str) and isinstance(r.get("attempt"), int)
                and not isinstance(r.get("attempt"), bool)
                and (r.get("start_time") is None or (isinstance(r["start_time"], int | float)
                                                     and not isinstance(r["start_time"], bool)))
                for r in running)):
            raise ApiError(400, "invalid_health", "running must be an array of {task_id: string, attempt: "
                                                  "integer, start_time: unix seconds (optional)}")
        worker_id = body["worker_id"]
        act_as(coord, worker_id)
        conn = coord.conns.get(worker_id)
        session = session_of(coord, worker_id)
        if conn is None or conn.closed:
            # A worker without a websocket: its health report is a sign of life, like a poll.
            try:
                session = await open_session(coord, worker_id, enrolment.credential_from_headers(request.headers),
                                             g.principal.name)
            except LookupError:
                raise ApiError(404, "not_found", f"worker {worker_id!r} is not registered: POST /api/register "
                                                 "first") from None
            except enrolment.CredentialRefused as exc:
                raise ApiError(403, exc.code, str(exc)) from None
            conn = session.conn
        if session is not None and running is not None:
            report_running(coord, session, running)
        heartbeat: dict[str, Any] = {"type": proto.HEARTBEAT, "metrics": body.get("metrics") or {}}
        if running is not None:
            heartbeat["running"] = running
        coord.intake.message(conn, heartbeat)
        return json_response({"ok": True, "worker_id": worker_id,
                              "heartbeat_interval": coord.settings.heartbeat_interval})

    return poll_tasks


__all__ = ["HttpSession", "POLL_WAIT_MAX_S", "assignments", "open_session", "poll", "register"]
