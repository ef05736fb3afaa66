"""Websocket endpoints: ``/ws/worker`` (the worker fast path) and ``/ws`` (client subscriptions).

Each connection runs a dedicated receive loop and a sender that drains a memory channel, so the
coordinator never awaits a slow socket while holding state: it only ``send_nowait``s into the channel.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio
from quart import g, websocket

from dtf_app import jsonsafe
from dtf_app import protocol as proto
from dtf_app.coordinator import frames, pubsub
from dtf_app.coordinator.enrolment import CredentialRefused, credential_from_headers
from dtf_app.coordinator.pubsub import Subscriber
from dtf_app.coordinator.service import Coordinator
from dtf_app.coordinator.views import status as status_view
from dtf_app.raft.types import NotLeader, ProposalDropped
from dtf_app.security import keys as keymod
from dtf_app.security.keys import Principal

log = logging.getLogger("dtf.ws")

# Close codes in the private range: 4401/4403 mirror HTTP 401/403, 4400 a protocol error.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_PROTOCOL = 4400
# A follower sends websocket clients to the leader (websocket clients do not follow an HTTP 307).
CLOSE_NOT_LEADER = 4307
WORKER_QUEUE = 100_000


def ws_principal(coord: Coordinator, permission: str) -> tuple[Principal | None, str | None]:
    """Authenticate a websocket upgrade: (principal, None) or (None, why not)."""
    key = keymod.key_from_headers(websocket.headers)
    principal = keymod.authenticate(key, coord.state.api_keys) if key else None
    if principal is None:
        return None, "unauthorized: a valid API key is required (X-API-Key header)"
    if not principal.can(permission):
        return None, f"forbidden: role {principal.role!r} may not use this socket"
    return principal, None


async def _receive() -> str | bytes:
    """The next frame's data; Quart hands over an empty binary frame as None, which is b"" here."""
    raw = await websocket.receive()
    return b"" if raw is None else raw


async def _reject(code: str, message: str, close_code: int) -> None:
    await websocket.accept()
    await websocket.send(proto.dumps({"type": proto.ERROR, "code": code, "message": message}))
    await websocket.close(close_code, message[:120])


async def _authorized(coord: Coordinator, permission: str) -> Principal | None:
    """Check the upgrade's API key; on failure answer with an error frame and close 4401/4403."""
    principal, why = ws_principal(coord, permission)
    if principal is not None:
        return principal
    unauthorized = (why or "").startswith("unauth")
    await _reject("unauthorized" if unauthorized else "forbidden", why or "refused",
                  CLOSE_UNAUTHORIZED if unauthorized else CLOSE_FORBIDDEN)
    return None


def _close_reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    return text.encode()[:120].decode(errors="ignore")


async def _refuse_if_follower(coord: Coordinator) -> bool:
    """On a follower: an error frame naming the leader, then close; True when refused."""
    if coord.is_leader:
        return False
    await websocket.accept()
    await _send_to_leader(coord, "is not the leader")
    return True


async def _send_to_leader(coord: Coordinator, what: str) -> None:
    """The not_leader (or no_leader) error frame with the leader's URL, then close (4307)."""
    await websocket.send(proto.dumps({
        "type": proto.ERROR, "code": "not_leader" if coord.leader_url else "no_leader",
        "message": f"this coordinator ({coord.node_id}) {what}; connect to the leader",
        "leader_id": coord.leader_id, "leader_url": coord.leader_url}))
    await websocket.close(CLOSE_NOT_LEADER, "not the leader")


async def raft_socket() -> None:
    """``WS /raft``: inbound Raft peer traffic, authenticated by the cluster secret (not an API key)."""
    coord: Coordinator = g.coord
    transport = coord.replicator.transport
    await websocket.accept()
    if transport is None:
        await websocket.close(4404, "this coordinator is not a member of a cluster")
        return
    reason = await transport.serve_connection(websocket.receive, websocket.send)
    if reason is not None:
        from dtf_app.raft.transport import close_code

        await websocket.close(close_code(reason), reason[:120])


async def _sender(receive: trio.MemoryReceiveChannel[dict[str, Any]], done: trio.CancelScope) -> None:
    """Drain the connection's queue into the socket; when the coordinator closes the queue (the worker
    was declared lost, or replaced by a newer connection) end the whole connection, so the peer sees the
    close and reconnects instead of talking to a socket nobody listens to."""
    async with receive:
        async for message in receive:
            await websocket.send(proto.dumps(message))
    done.cancel()


async def worker_socket() -> None:
    """``WS /ws/worker``: hello -> welcome, then assignments out and reports in."""
    coord: Coordinator = g.coord
    # A follower sends the worker to the leader before it looks at the key: the key may be one the leader
    # created and acknowledged that this follower has not applied yet, and a 4401 would stop the worker.
    if await _refuse_if_follower(coord):
        return
    principal = await _authorized(coord, "worker")
    if principal is None:
        return
    await websocket.accept()
    try:
        hello = proto.loads(await _receive())
    except ValueError as exc:
        await _reject("bad_hello", f"first message must be a hello object: {exc}", CLOSE_PROTOCOL)
        return
    if hello.get("type") != proto.HELLO or not isinstance(hello.get("worker_id"), str) or not hello["worker_id"]:
        await websocket.send(proto.dumps({"type": proto.ERROR, "code": "bad_hello",
                                          "message": "first message must be {type: hello, worker_id: ...}"}))
        await websocket.close(CLOSE_PROTOCOL)
        return
    problem = proto.id_problem(hello["worker_id"], "worker_id") or frames.hello_problem(hello)
    if problem:
        await _reject("bad_hello", f"hello: {problem}", CLOSE_PROTOCOL)
        return
    send, receive = trio.open_memory_channel[dict[str, Any]](WORKER_QUEUE)
    try:
        conn = await coord.intake.hello(hello, send, credential=credential_from_headers(websocket.headers),
                                        key_name=principal.name)
    except CredentialRefused as exc:
        log.warning("refused a hello as worker %.100r: %s", hello["worker_id"], exc)
        await websocket.send(proto.dumps({"type": proto.ERROR, "code": exc.code, "message": str(exc)}))
        await websocket.close(CLOSE_FORBIDDEN, _close_reason(f"{exc.code}: {exc}"))
        return
    except (NotLeader, ProposalDropped):
        # Leadership moved while the registration waited for its commit: send the worker on, as a
        # follower would have at the door (it reconnects to the leader and says hello again).
        await _send_to_leader(coord, "stopped being the leader")
        return
    welcome = {"type": proto.WELCOME, "worker_id": conn.worker_id, "node_id": coord.node_id,
               "heartbeat_interval": coord.settings.heartbeat_interval,
               "worker_timeout": coord.settings.worker_timeout}
    if conn.issued_credential:
        welcome["credential"] = conn.issued_credential  # shown this once; only its hash is kept
    send.send_nowait(welcome)
    coord.wake_dispatcher()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sender, receive, nursery.cancel_scope)
            while True:
                raw = await _receive()
                try:
                    message = proto.loads(raw)
                except ValueError as exc:
                    # Answered, not fatal: the frame is dropped and the connection goes on.
                    log.warning("worker %s sent a malformed frame; ignored: %s", conn.worker_id, exc)
                    conn.push({"type": proto.ERROR, "code": getattr(exc, "code", "invalid_message"),
                               "message": f"frame ignored: {exc}"})
                    continue
                problem = frames.worker_frame_problem(message)
                if problem is not None:  # wrong field types: answered the same way (frames.py)
                    log.warning("worker %s sent a malformed frame; ignored: %s", conn.worker_id, problem[:200])
                    conn.push({"type": proto.ERROR, "code": "bad_frame", "message": f"frame ignored: {problem[:500]}"})
                    continue
                coord.intake.message(conn, message)
        if conn.close_code:  # the coordinator ended it (enrolment revoked): say why in the close frame
            await websocket.close(conn.close_code, _close_reason(f"{proto.CREDENTIAL_REFUSED}: {conn.close_reason}"))
    finally:
        if coord.conns.get(conn.worker_id) is conn:
            coord.intake.gone(conn)
        send.close()


async def _subscriber_sender(sub: Subscriber, receive: trio.MemoryReceiveChannel[dict[str, Any]],
                             done: trio.CancelScope) -> None:
    """Like :func:`_sender`, and after each frame tells the client about updates dropped for it (the
    notice goes straight to the socket: the queue it would wait in is the one that was full)."""
    async with receive:
        async for message in receive:
            await websocket.send(proto.dumps(message))
            notice = sub.take_missed_notice()
            if notice is not None:
                await websocket.send(proto.dumps(notice))
    done.cancel()


def _response(kind: str, request_id: Any, **data: Any) -> dict[str, Any]:
    message = {"type": f"{kind}_response", **data}
    if request_id is not None:
        message["request_id"] = request_id
    return message


async def client_socket() -> None:
    """``WS /ws``: subscribe to task/worker updates and ask for status."""
    coord: Coordinator = g.coord
    if await _refuse_if_follower(coord):  # before the key, as for workers: the leader judges it
        return
    principal = await _authorized(coord, "read")
    if not principal:
        return
    await websocket.accept()
    send, receive = trio.open_memory_channel[dict[str, Any]](
        coord.settings.subscriber_buffer)
    sub = Subscriber(send)
    coord.hub.add(sub)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_subscriber_sender, sub, receive, nursery.cancel_scope)
            while True:
                raw = await _receive()
                try:
                    message = jsonsafe.loads(raw, what="the message")
                except jsonsafe.JsonInputError as exc:
                    sub.push({"type": "error", "error": {"code": exc.code, "message": exc.message}})
                    continue
                if not isinstance(message, dict):
                    sub.push({"type": "error", "error": {"code": "invalid_json",
                                                          "message": "messages must be JSON objects with a type"}})
                    continue
                if message.get("type") == "get_aggregated_results":  # a DuckDB query: async
                    from dtf_app.coordinator.results_api import aggregated_results

                    sub.push(await aggregated_results(coord, message))
                    continue
                if message.get("type") == "orchestrate_task":  # commits through the log: async
                    from dtf_app.coordinator.orchestrator_api import ws_orchestrate

                    sub.push(await ws_orchestrate(coord, principal, message))
                    continue
                sub.push(_client_request(coord, sub, message, pubsub.PUBLISHED_CHANNELS))
    finally:
        coord.hub.discard(sub)
        send.close()


def _client_request(coord: Coordinator, sub: Subscriber, message: dict[str, Any],
                    channels: tuple[str, ...]) -> dict[str, Any]:
    kind = message.get("type")
    request_id = message.get("request_id")
    if kind == "subscribe":
        channel = message.get("channel")
        filter_ = message.get("filter") or {}
        if channel not in channels:
            return _response("subscribe", request_id, status="error", channel=channel,
                             error=pubsub.refuse_channel(channel))
        if not isinstance(filter_, dict):
            return _response("subscribe", request_id, status="error",
                             error={"code": "invalid_filter", "message": "filter must be an object"})
        sub.channels[channel] = filter_
        return _response("subscribe", request_id, status="ok", channel=channel, filter=filter_)
    if kind == "unsubscribe":
        sub.channels.pop(str(message.get("channel")), None)
        return _response("unsubscribe", request_id, status="ok", channel=message.get("channel"))
    if kind in ("get_cluster_status", "get_status"):
        from dtf_app.coordinator import cluster as cluster_views

        doc = cluster_views.status(coord, coord.monitor)
        return _response("cluster_status", request_id, leader_id=doc["leader_id"], current_term=doc["term"],
                         nodes=[{"node_id": n["node_id"], "state": n["state"], "term": n["term"],
                                 "last_heartbeat": n["last_heartbeat"], "uptime_seconds": n["uptime_seconds"]}
                                for n in doc["nodes"]],
                         quorum_size=doc["quorum_size"], cluster_health=doc["cluster_health"], status=status_view(coord))
    if kind == "get_leader_info":
        from dtf_app.coordinator import cluster as cluster_views

        info = cluster_views.leader_info(coord)
        uptime = time.time() - coord.leader_since if coord.is_leader and coord.leader_since else None
        return _response("leader_info", request_id, leader_id=info["leader_id"], current_term=info["term"],
                         term=info["term"], url=info["url"], term_start_time=info["term_start_time"],
                         uptime_seconds=round(uptime, 3) if uptime is not None else None,
                         leadership_history=cluster_views.leader_history(coord))
    if kind == "get_cluster_health":
        from dtf_app.coordinator import cluster as cluster_views

        nodes = cluster_views.health_nodes(coord, coord.monitor)
        wanted = message.get("metrics")
        if isinstance(wanted, list) and all(isinstance(m, str) for m in wanted):
            # The sources' request names metrics ("cpu", "memory", "disk"): keep those (and status).
            keep = {f"{m}_usage" for m in wanted} | set(wanted) | {"status", "last_contact_seconds"}
            nodes = [{**n, "health": {k: v for k, v in n["health"].items() if k in keep}} for n in nodes]
        return _response("cluster_health", request_id, nodes=nodes,
                         cluster_health=cluster_views.health(coord, coord.monitor)["cluster_health"])
    return {"type": "error", "request_id": request_id,
            "error": {"code": "unknown_type", "message": f"unknown message type {repr(kind)[:100]}; known: subscribe, "
                      "unsubscribe, get_cluster_status, get_cluster_health, get_leader_info, "
                      "get_aggregated_results, orchestrate_task"}}
