"""The client websocket /ws: subscribe with filters, request ids echoed, auth required."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.integration.harness import Cluster


async def test_subscribe_task_updates_with_filter(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    await trio.to_thread.run_sync(lambda: cluster.start_worker("w1"))
    await trio.to_thread.run_sync(lambda: cluster.wait_workers(1))
    ws_url = cluster.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(ws_url, extra_headers=[(b"X-API-Key", cluster.admin_key.encode())]) as ws:
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "task_updates", "request_id": 7,
                                          "filter": {"type": "custom"}}))
        reply = json.loads(await ws.get_message())
        assert reply == {"type": "subscribe_response", "request_id": 7, "status": "ok",
                         "channel": "task_updates", "filter": {"type": "custom"}}
        await ws.send_message(json.dumps({"type": "get_cluster_status", "request_id": "s1"}))
        status = json.loads(await ws.get_message())
        assert status["type"] == "cluster_status_response" and status["request_id"] == "s1"
        await ws.send_message(json.dumps({"type": "bogus", "request_id": 9}))
        error = json.loads(await ws.get_message())
        assert error["type"] == "error" and error["request_id"] == 9

        created = await trio.to_thread.run_sync(lambda: cluster.submit([
            {"type": "custom", "config": {"command": ["true"]}},
            {"type": "test", "config": {"test_file": "/nonexistent/test_x.py"}, "max_retries": 0},
        ]).json())
        custom_id = created[0]["task_id"]
        seen: list[str] = []
        with trio.fail_after(30):
            while "completed" not in seen:
                message = json.loads(await ws.get_message())
                if message["type"] == "task_update":
                    assert message["task"]["type"] == "custom"  # the filter keeps the test task out
                    assert message["task"]["task_id"] == custom_id
                    seen.append(message["task"]["status"])
        assert seen[-1] == "completed" and "assigned" in seen


async def test_ws_without_key_is_refused(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    ws_url = cluster.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(ws_url) as ws:
        first = json.loads(await ws.get_message())
        assert first["type"] == "error" and first["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 4401


async def test_worker_socket_needs_worker_role(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    viewer = await trio.to_thread.run_sync(lambda: cluster.create_key("viewer"))
    ws_url = cluster.url.replace("http://", "ws://") + "/ws/worker"
    async with open_websocket_url(ws_url, extra_headers=[(b"X-API-Key", viewer.encode())]) as ws:
        first = json.loads(await ws.get_message())
        assert first["type"] == "error" and first["code"] == "forbidden"
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 4403
