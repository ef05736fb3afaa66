"""``/ws`` pushes in the source design's shapes, channel refusal, and the missed-updates notice.

Also the source model names over REST: a task's ``parameters`` for ``config``, the Worker model's
fields. Real coordinator and worker processes on loopback.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from trio_websocket import open_websocket_url

from tests.integration.harness import Cluster


def _ws_url(cluster: Cluster) -> str:
    return cluster.url.replace("http://", "ws://") + "/ws"


async def _next(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] == kind:
            return message


async def test_task_update_carries_the_source_fields_at_top_level(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    await trio.to_thread.run_sync(lambda: cluster.start_worker("w1"))
    await trio.to_thread.run_sync(lambda: cluster.wait_workers(1))
    async with open_websocket_url(_ws_url(cluster), extra_headers=[(b"X-API-Key", cluster.admin_key.encode())]) as ws:
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "task_updates"}))
        assert (await _next(ws, "subscribe_response"))["status"] == "ok"
        created = await trio.to_thread.run_sync(
            lambda: cluster.submit({"type": "custom", "parameters": {"command": ["true"]}}).json())
        seen: list[dict[str, Any]] = []
        with trio.fail_after(60):
            while not seen or seen[-1]["status"] != "completed":
                seen.append(await _next(ws, "task_update"))
    for push in seen:
        assert push["task_id"] == created["task_id"] == push["task"]["task_id"]
        assert push["status"] == push["task"]["status"]
        assert push["timestamp"].endswith("Z") and isinstance(push["index"], int)
    assert seen[-1]["worker_id"] == "w1"
    # Pushes are in log order.
    assert [p["index"] for p in seen] == sorted(p["index"] for p in seen)
    # "parameters" was taken as the config.
    assert seen[-1]["task"]["config"] == {"command": ["true"]}


async def test_every_design_channel_is_published_and_unknown_ones_are_refused(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    async with open_websocket_url(_ws_url(cluster), extra_headers=[(b"X-API-Key", cluster.admin_key.encode())]) as ws:
        # The cluster channels have publishers (the cluster monitor, leadership changes), and the
        # orchestration channel the orchestrator (tests/integration/test_orchestrator.py sees its pushes).
        for channel in ("leadership_updates", "cluster_status", "orchestrated_task_updates"):
            await ws.send_message(json.dumps({"type": "subscribe", "channel": channel, "request_id": channel}))
            reply = await _next(ws, "subscribe_response")
            assert reply["request_id"] == channel and reply["status"] == "ok", reply
        assert (await _next(ws, "cluster_status_update"))["nodes"][0]["state"] == "leader"
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "nonsense"}))
        reply = await _next(ws, "subscribe_response")
        assert reply["error"]["code"] == "invalid_channel"
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "worker_updates"}))
        assert (await _next(ws, "subscribe_response"))["status"] == "ok"


async def test_a_slow_subscriber_is_told_it_missed_updates(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(lambda: cluster.start_coordinator(env={"DTF_SUBSCRIBER_BUFFER": "5"}))
    async with open_websocket_url(_ws_url(cluster), extra_headers=[(b"X-API-Key", cluster.admin_key.encode())]) as ws:
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "task_updates"}))
        assert (await _next(ws, "subscribe_response"))["status"] == "ok"
        # 200 tasks in one batch: 200 pushes from one log entry, applied without a pause, into a queue of 5.
        batch = [{"type": "custom", "config": {"command": ["true"]}} for _ in range(200)]
        response = await trio.to_thread.run_sync(lambda: cluster.submit(batch, allow_unschedulable="true"))
        assert response.status_code == 201, response.text
        updates, notices = 0, []
        with trio.fail_after(30):
            # Every push is either delivered or counted in a notice: nothing vanishes silently.
            while not notices or updates + sum(n["dropped"] for n in notices) < 200:
                message = json.loads(await ws.get_message())
                if message["type"] == "task_update":
                    updates += 1
                else:
                    assert message["type"] == "missed_updates", message
                    notices.append(message)
        # The queue held five (plus the one handed straight to its idle sender); the rest were dropped, once told.
        assert len(notices) == 1 and updates in (5, 6)
        message = notices[0]
        assert message["dropped"] == 200 - updates
        assert message["channels"] == ["task_updates"]
        assert "read the current state again" in message["message"]


def test_worker_view_has_the_source_model_fields(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1", slots=1)
    cluster.wait_workers(1)
    worker = cluster.api("GET", "/api/workers/w1").json()
    for key in ("hardware_id", "last_seen", "current_task", "performance_metrics", "health_status", "metadata"):
        assert key in worker, key
    assert worker["connected"] is True and worker["current_task"] is None
    assert len(worker["hardware_id"]) == 12 and worker["performance_metrics"]["slots"] == 1
    created = cluster.submit({"type": "custom", "config": {"command": ["sleep", "30"]}}).json()
    cluster.wait_task(created["task_id"], states=("running",))
    busy = cluster.api("GET", "/api/workers/w1").json()
    assert busy["status"] == "busy" and busy["current_task"] == created["task_id"]
    listed = cluster.api("GET", "/api/workers", params={"status": "busy"}).json()
    assert [w["worker_id"] for w in listed["workers"]] == ["w1"] and isinstance(listed["applied_index"], int)
    bad = cluster.api("GET", "/api/workers", params={"status": "sleepy"})
    assert bad.status_code == 400 and "busy" in bad.json()["error"]["message"]
    cluster.api("POST", f"/api/tasks/{created['task_id']}/cancel")


def test_parameters_and_config_together_must_agree(cluster: Cluster) -> None:
    cluster.start_coordinator()
    response = cluster.submit({"type": "custom", "config": {"command": ["true"]},
                               "parameters": {"command": ["false"]}}, allow_unschedulable="true")
    assert response.status_code == 400
    assert "both config and parameters" in response.json()["error"]["message"]
