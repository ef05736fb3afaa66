"""Log frames are bounded: per line, per task, only for the sender's current tasks; drops are counted.

A real coordinator process; the "workers" here are this test speaking the worker protocol over real
websockets, because the point is what a misbehaving worker may send.
"""

from __future__ import annotations

import json
import re
import time

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from dtf_app import protocol as proto
from dtf_app.coordinator.tasklogs import LOG_LINES_KEPT, LOG_TASK_MAX_BYTES
from tests.integration.harness import Cluster, wait_for


def _dropped(cluster: Cluster) -> dict[str, float]:
    text = cluster.api("GET", "/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(r'^dtf_log_lines_dropped_total\{reason="(\w+)"\} (\S+)$',
                                                     text, re.MULTILINE)}


async def _hello(ws: WebSocketConnection, worker_id: str) -> None:
    await ws.send_message(json.dumps({"type": proto.HELLO, "worker_id": worker_id, "hostname": "test",
                                      "capabilities": {"hardware": ["cpu"]}, "max_concurrent_tasks": 1}))
    welcome = json.loads(await ws.get_message())
    assert welcome["type"] == proto.WELCOME, welcome


async def _heartbeats(ws: WebSocketConnection, running: list[dict[str, object]]) -> None:
    while True:
        await ws.send_message(json.dumps({"type": proto.HEARTBEAT, "metrics": {}, "running": running}))
        await trio.sleep(0.5)


async def _drain(ws: WebSocketConnection) -> None:
    while True:
        await ws.get_message()


async def test_log_frames_are_bounded_and_foreign_lines_dropped(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    key = cluster.worker_key
    url = cluster.url.replace("http://", "ws://") + "/ws/worker"
    headers = [(b"X-API-Key", key.encode())]

    async def send_log(ws: WebSocketConnection, task_id: str, attempt: int, lines: list[str]) -> None:
        await ws.send_message(json.dumps({"type": proto.LOG, "task_id": task_id, "attempt": attempt, "lines": lines}))

    async with open_websocket_url(url, extra_headers=headers, max_message_size=16 * 2**20) as mine, \
            open_websocket_url(url, extra_headers=headers, max_message_size=16 * 2**20) as other:
        await _hello(mine, "log-worker")
        await _hello(other, "other-worker")
        await trio.to_thread.run_sync(cluster.wait_workers, 2)
        # Either worker may get the task; the other one is then the foreign worker.
        created = await trio.to_thread.run_sync(
            lambda: cluster.submit({"type": "custom", "config": {"command": ["sleep", "600"]}}).json())
        task_id = created["task_id"]
        with trio.fail_after(60):
            async with trio.open_nursery() as waiting:
                got: dict[str, dict[str, object]] = {}

                async def watch(ws: WebSocketConnection, name: str) -> None:
                    while True:
                        message = json.loads(await ws.get_message())
                        if message["type"] == proto.ASSIGN:
                            got[name] = message["tasks"][0]
                            waiting.cancel_scope.cancel()

                waiting.start_soon(watch, mine, "log-worker")
                waiting.start_soon(watch, other, "other-worker")
        holder_name = next(iter(got))
        holder, foreign = (mine, other) if holder_name == "log-worker" else (other, mine)
        attempt = int(got[holder_name]["attempt"])  # type: ignore[call-overload]
        running = [{"task_id": task_id, "attempt": attempt}]
        await holder.send_message(json.dumps({"type": proto.STARTED, "items": [
            {"task_id": task_id, "attempt": attempt, "start_time": time.time()}]}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_heartbeats, holder, running)
            nursery.start_soon(_heartbeats, foreign, [])
            nursery.start_soon(_drain, holder)
            nursery.start_soon(_drain, foreign)
            # Ten ~1 MB frames for task ids that do not exist.
            for i in range(10):
                await send_log(holder, f"no-such-task-{i}", 1, ["u" * 5000] * 200)
            # Lines for the task from a worker that does not hold it, and for a stale attempt.
            await send_log(foreign, task_id, attempt, ["f" * 100] * 50)
            await send_log(holder, task_id, attempt + 7, ["s" * 100] * 30)
            # A lot for the real task: 60 frames of 200 lines of 2000 characters, one huge line, a marker.
            for i in range(60):
                await send_log(holder, task_id, attempt, [f"{i:03d}" + "x" * 2000] * 200)
            await send_log(holder, task_id, attempt, ["h" * 100_000, "the last line"])

            def tail_complete() -> list[str] | None:
                tail = cluster.task(task_id)["log_tail"]
                return tail if tail and tail[-1] == "the last line" else None

            tail = await trio.to_thread.run_sync(lambda: wait_for(tail_complete, 60, what="the last log line"))
            dropped = await trio.to_thread.run_sync(
                lambda: wait_for(lambda: (d := _dropped(cluster)).get("unknown_task") == 2000 and d, 30,
                                 what="drop counters"))
            nursery.cancel_scope.cancel()

    assert len(tail) <= LOG_LINES_KEPT
    assert sum(len(line.encode()) for line in tail) <= LOG_TASK_MAX_BYTES
    assert all(len(line) <= proto.LOG_LINE_MAX_CHARS + len(proto.LOG_TRUNCATED) for line in tail)
    assert tail[-2] == "h" * proto.LOG_LINE_MAX_CHARS + proto.LOG_TRUNCATED
    assert tail[-3].startswith("059")  # the newest lines are the ones kept
    assert not any(line.startswith(("f", "s", "u")) for line in tail)
    assert dropped["unknown_task"] == 2000 and dropped["not_assigned"] == 80, dropped
    # Unknown task ids got nothing: they are still unknown, with no log.
    assert cluster.api("GET", "/api/tasks/no-such-task-0").status_code == 404
