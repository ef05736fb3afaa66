"""Websocket endpoints: ``/ws/worker`` (the worker fast path) and ``/ws`` (client subscriptions).

Each connection runs a dedicated receive loop and a sender that drains a memory channel, so the
coordinator never awaits a slow socket while holding state: it only ``send_nowait``s into the channel.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from quart import g, websocket

from dtf_app import protocol as proto
from dtf_app.coordinator.service import SUBSCRIBER_BUFFER, Coordinator, Subscriber

log = logging.getLogger("dtf.ws")

# Close codes in the private range: 4401/4403 mirror HTTP 401/403, 4400 a protocol error.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_PROTOCOL = 4400
WORKER_QUEUE = 100_000


async def _reject(code: str, message: str, close_code: int) -> None:
    await websocket.accept()
    await websocket.send(proto.dumps({"type": proto.ERROR, "code": code, "message": message}))
    await websocket.close(close_code, message[:120])


async def _authorized(coord: Coordinator, permission: str) -> bool:
    """Check the upgrade's API key; on failure answer with an error frame and close 4401/4403."""
    from dtf_app.coordinator.api import ws_principal

    principal, why = ws_principal(coord, permission)
    if principal is not None:
        return True
    unauthorized = (why or "").startswith("unauth")
    await _reject("unauthorized" if unauthorized else "forbidden", why or "refused",
                  CLOSE_UNAUTHORIZED if unauthorized else CLOSE_FORBIDDEN)
    return False


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
    if not await _authorized(coord, "worker"):
        return
    await websocket.accept()
    try:
        hello = proto.loads(await websocket.receive())
    except ValueError as exc:
        await _reject("bad_hello", f"first message must be a hello object: {exc}", CLOSE_PROTOCOL)
        return
    if hello.get("type") != proto.HELLO or not isinstance(hello.get("worker_id"), str) or not hello["worker_id"]:
        await websocket.send(proto.dumps({"type": proto.ERROR, "code": "bad_hello",
                                          "message": "first message must be {type: hello, worker_id: ...}"}))
        await websocket.close(CLOSE_PROTOCOL)
        return
    send, receive = trio.open_memory_channel[dict[str, Any]](WORKER_QUEUE)
    conn = await coord.worker_hello(hello, send)
    send.send_nowait({"type": proto.WELCOME, "worker_id": conn.worker_id, "node_id": coord.node_id,
                      "heartbeat_interval": coord.settings.heartbeat_interval,
                      "worker_timeout": coord.settings.worker_timeout})
    coord.wake_dispatcher()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sender, receive, nursery.cancel_scope)
            while True:
                raw = await websocket.receive()
                try:
                    message = proto.loads(raw)
                except ValueError:
                    log.warning("worker %s sent a malformed frame; ignored", conn.worker_id)
                    continue
                coord.worker_message(conn, message)
    finally:
        if coord.conns.get(conn.worker_id) is conn:
            coord.worker_gone(conn)
        send.close()


def _response(kind: str, request_id: Any, **data: Any) -> dict[str, Any]:
    message = {"type": f"{kind}_response", **data}
    if request_id is not None:
        message["request_id"] = request_id
    return message


async def client_socket() -> None:
    """``WS /ws``: subscribe to task/worker updates and ask for status."""
    from dtf_app.coordinator.api import CHANNELS

    coord: Coordinator = g.coord
    if not await _authorized(coord, "read"):
        return
    await websocket.accept()
    send, receive = trio.open_memory_channel[dict[str, Any]](SUBSCRIBER_BUFFER)
    sub = Subscriber(send)
    coord.subscribers.add(sub)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sender, receive, nursery.cancel_scope)
            while True:
                raw = await websocket.receive()
                try:
                    message = json.loads(raw)
                    if not isinstance(message, dict):
                        raise ValueError("not an object")
                except ValueError:
                    sub.push({"type": "error", "error": {"code": "invalid_json",
                                                          "message": "messages must be JSON objects with a type"}})
                    continue
                if message.get("type") == "get_aggregated_results":  # a DuckDB query: async
                    from dtf_app.coordinator.results_api import aggregated_results

                    sub.push(await aggregated_results(coord, message))
                    continue
                sub.push(_client_request(coord, sub, message, CHANNELS))
    finally:
        coord.subscribers.discard(sub)
        send.close()


def _client_request(coord: Coordinator, sub: Subscriber, message: dict[str, Any],
                    channels: tuple[str, ...]) -> dict[str, Any]:
    kind = message.get("type")
    request_id = message.get("request_id")
    if kind == "subscribe":
        channel = message.get("channel")
        filter_ = message.get("filter") or {}
        if channel not in channels:
            return _response("subscribe", request_id, status="error",
                             error={"code": "invalid_channel", "message": f"channel must be one of {', '.join(channels)}"})
        if not isinstance(filter_, dict):
            return _response("subscribe", request_id, status="error",
                             error={"code": "invalid_filter", "message": "filter must be an object"})
        sub.channels[channel] = filter_
        return _response("subscribe", request_id, status="ok", channel=channel, filter=filter_)
    if kind == "unsubscribe":
        sub.channels.pop(str(message.get("channel")), None)
        return _response("unsubscribe", request_id, status="ok", channel=message.get("channel"))
    if kind in ("get_cluster_status", "get_status"):
        return _response("cluster_status", request_id, status=coord.status())
    if kind == "get_leader_info":
        return _response("leader_info", request_id, leader_id=coord.node_id, term=1, url=coord.url)
    if kind == "get_cluster_health":
        return _response("cluster_health", request_id, nodes=[{"node_id": coord.node_id, "healthy": True}])
    return {"type": "error", "request_id": request_id,
            "error": {"code": "unknown_type", "message": f"unknown message type {kind!r}; known: subscribe, "
                      "unsubscribe, get_cluster_status, get_cluster_health, get_leader_info, "
                      "get_aggregated_results"}}
