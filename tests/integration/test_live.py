"""The dashboard's data layer (dtf_app.live) against real coordinator and worker processes.

It must keep its store equal to the coordinator's state through pushes, resync after a
``missed_updates`` notice and after the coordinator is killed and restarted, follow a leader hint,
wait out a starting node (503), and say clearly when its key is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from dtf_app.live import Changed, Connection, LiveClient, LiveEvent
from tests.integration.harness import Cluster


class Recorder:
    """A sink that records events and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.events: list[LiveEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: LiveEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def states(self) -> list[str]:
        return [e.state for e in self.events if isinstance(e, Connection)]

    async def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        with trio.move_on_after(timeout):
            while not (value := predicate()):
                await self._changed.wait()
                self._changed = trio.Event()
            return value
        raise AssertionError(f"timed out waiting for {what}; events: {self.events[-10:]}")


def _statuses(client: LiveClient) -> dict[str, str]:
    return {task_id: task.get("status") for task_id, task in client.store.tasks.items()}


async def test_store_follows_the_cluster_through_pushes(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    await trio.to_thread.run_sync(lambda: cluster.start_worker("w1", slots=2))
    await trio.to_thread.run_sync(lambda: cluster.wait_workers(1))
    sink = Recorder()
    client = LiveClient([cluster.url], cluster.admin_key, sink=sink)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        await sink.wait(lambda: "connected" in sink.states(), "connected")
        assert client.store.workers["w1"]["connected"] is True
        created = await client.submit([{"type": "custom", "config": {"command": ["true"]}} for _ in range(5)])
        ids = {t["task_id"] for t in created}
        await sink.wait(lambda: all(_statuses(client).get(i) == "completed" for i in ids), "5 tasks completed")
        assert any(isinstance(e, Changed) and ids & e.tasks for e in sink.events)
        # The counts the Overview shows follow the transitions.
        assert client.store.counts()["completed"] == 5 and client.store.counts()["total"] == 5
        assert sum(client.store.throughput) == 5
        detail = await client.task(next(iter(ids)))
        assert detail["status"] == "completed"
        nursery.cancel_scope.cancel()
    await client.aclose()


async def test_missed_updates_notice_makes_it_resync(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(lambda: cluster.start_coordinator(env={"DTF_SUBSCRIBER_BUFFER": "5"}))
    sink = Recorder()
    client = LiveClient([cluster.url], cluster.admin_key, sink=sink, page_size=64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        await sink.wait(lambda: "connected" in sink.states(), "connected")
        assert client.resyncs == 1
        batch = [{"type": "custom", "config": {"command": ["true"]}} for _ in range(300)]
        response = await trio.to_thread.run_sync(lambda: cluster.submit(batch, allow_unschedulable="true"))
        assert response.status_code == 201
        # 300 pushes into a queue of 5: most are dropped, the notice comes, the client reads everything again
        # (in pages of 64) and ends up with every task although it never saw most pushes.
        await sink.wait(lambda: len(client.store.tasks) == 300, "all 300 tasks in the store")
        assert client.resyncs >= 2
        assert set(_statuses(client).values()) == {"pending"}  # no worker yet: they wait
        nursery.cancel_scope.cancel()
    await client.aclose()


async def test_survives_coordinator_kill_and_restart(cluster: Cluster) -> None:
    import signal

    await trio.to_thread.run_sync(cluster.start_coordinator)
    sink = Recorder()
    client = LiveClient([cluster.url], cluster.admin_key, sink=sink)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        await sink.wait(lambda: "connected" in sink.states(), "connected")
        first = await client.submit({"type": "custom", "config": {"command": ["true"]}, "name": "before"})
        await trio.to_thread.run_sync(lambda: cluster.coordinator.kill(signal.SIGKILL))
        await sink.wait(lambda: "lost" in sink.states(), "the loss to be reported")
        lost = next(e for e in sink.events if isinstance(e, Connection) and e.state == "lost")
        assert lost.retry_in is not None and lost.message
        await trio.to_thread.run_sync(cluster.coordinator.wait)
        await trio.to_thread.run_sync(cluster.start_coordinator)  # same port
        await sink.wait(lambda: sink.states().count("connected") >= 2, "reconnected")
        # The resync after the reconnect shows what the restarted coordinator recovered.
        assert first["task_id"] in client.store.tasks
        second = await client.submit({"type": "custom", "config": {"command": ["true"]}, "name": "after"})
        await sink.wait(lambda: second["task_id"] in client.store.tasks, "a push after the restart")
        nursery.cancel_scope.cancel()
    await client.aclose()


async def test_refused_key_is_reported_not_retried_silently(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    sink = Recorder()
    client = LiveClient([cluster.url], "not-a-key", sink=sink)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        await sink.wait(lambda: "refused" in sink.states(), "the refusal")
        refused = next(e for e in sink.events if isinstance(e, Connection) and e.state == "refused")
        assert "API key" in refused.message
        nursery.cancel_scope.cancel()
    await client.aclose()


async def _fake_node(leader_url: str, starting_answers: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A real HTTP server on loopback that answers like a node that is starting, then like a follower
    pointing at ``leader_url`` (the shape a Raft follower answers with)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart import Response
    from quart_trio import QuartTrio

    app = QuartTrio("fake-follower")
    calls = {"status": 0}

    @app.get("/status")
    async def status() -> Response:
        calls["status"] += 1
        if calls["status"] <= starting_answers:
            return Response(json.dumps({"status": "starting"}), status=503, content_type="application/json")
        body = {"error": {"code": "not_leader", "message": "not the leader", "leader_id": "c1",
                          "leader_url": leader_url}}
        return Response(json.dumps(body), status=307, content_type="application/json",
                        headers={"Location": leader_url + "/status"})

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, app, config))
        task_status.started((urls[0], calls))
        await trio.sleep_forever()


async def test_waits_for_a_starting_node_then_follows_the_leader_hint(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start_coordinator)
    async with trio.open_nursery() as nursery:
        fake_url, calls = await nursery.start(_fake_node, cluster.url, 2)
        sink = Recorder()
        client = LiveClient([fake_url], cluster.admin_key, sink=sink)
        nursery.start_soon(client.run)
        await sink.wait(lambda: "connected" in sink.states(), "connected through the leader hint")
        states = sink.states()
        assert states.count("starting") == 2 and states.index("starting") < states.index("connected")
        assert client.url == cluster.url and cluster.url in client.urls
        assert calls["status"] == 3
        nursery.cancel_scope.cancel()
    await client.aclose()
