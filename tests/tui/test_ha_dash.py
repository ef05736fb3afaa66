"""The dashboard through a real leader change: three coordinator processes (Raft), the leader SIGKILLed.

The TUI, given every coordinator's URL, must show the lost connection in its banner, find the new
leader by itself, resync, and then show what the new leader holds, including the changes that happened
while it was cut off (no row left stale), and keep following pushes afterwards.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from dtf_app.tui.app import DashApp
from dtf_app.tui.backend import RemoteBackend
from tests.integration.harness import HACluster, print_logs_if_failed, wait_for
from tests.tui.test_pilot import SIZE, until


@pytest.fixture
def ha(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    cluster = HACluster(tmp_path)
    yield cluster
    cluster.stop()
    print_logs_if_failed(request, tmp_path)


def _leader_statuses(ha: HACluster) -> dict[str, str] | None:
    leader = ha.leader()
    if leader is None:
        return None
    response = ha.api("GET", leader, "/api/tasks", params={"limit": 1000})
    return {t["task_id"]: t["status"] for t in response.json()["tasks"]} if response.status_code == 200 else None


def test_dashboard_follows_a_leader_change_and_resyncs(ha: HACluster) -> None:
    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    worker_key = ha.api("POST", leader, "/api/keys", json={"name": "dash-workers", "role": "worker"}).json()["key"]
    ha.start_worker("w1", worker_key, slots=2)
    wait_for(lambda: any(w["status"] in ("online", "busy") for w in
                         ha.api("GET", ha.leader() or leader, "/api/workers").json()["workers"]), 60,
             what="the worker online")

    async def in_thread(fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    async def run() -> None:
        app = DashApp(RemoteBackend(ha.urls.split(","), ha.key), clock=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.connection and app.connection.state == "connected", "connected")
            client = app.backend.client
            assert client.url == ha.url(leader)
            first = await in_thread(lambda: ha.submit_anywhere(
                [{"type": "custom", "name": f"quick-{i}", "config": {"command": ["true"]}} for i in range(3)]))
            await until(pilot, lambda: all(app.store.tasks.get(t["task_id"], {}).get("status") == "completed"
                                           for t in first), "the first tasks completed in the store")
            # Work that finishes while the dashboard is cut off from the cluster.
            during = await in_thread(lambda: ha.submit_anywhere(
                [{"type": "custom", "name": f"slow-{i}", "config": {"command": ["sleep", "3"]}} for i in range(2)]))
            await until(pilot, lambda: all(app.store.tasks.get(t["task_id"], {}).get("status") == "running"
                                           for t in during), "the slow tasks running")
            resyncs = client.resyncs
            ha.nodes[leader].kill(signal.SIGKILL)
            banner = app.query_one("#banner", Static)
            await until(pilot, lambda: banner.display and app.connection.state != "connected", "the banner")
            assert "lost" in str(banner.render()) or "connecting" in str(banner.render())
            await in_thread(ha.nodes[leader].wait)
            new_leader = await in_thread(lambda: ha.wait_leader([i for i in ha.ids if i != leader]))
            await until(pilot, lambda: app.connection.state == "connected" and not banner.display,
                        "reconnected by itself", timeout=120)
            assert client.url == ha.url(new_leader) and client.resyncs > resyncs
            # No stale rows: the store converges on what the new leader holds (the slow tasks finished
            # and were recorded by the new leader, with or without the dashboard watching).
            expected = await in_thread(lambda: wait_for(
                lambda: (s := _leader_statuses(ha)) is not None and all(s.get(t["task_id"]) == "completed"
                                                                        for t in during) and s, 120,
                what="the slow tasks completed on the new leader"))
            await until(pilot, lambda: {i: app.store.tasks.get(i, {}).get("status") for i in expected} == expected,
                        "the store to match the new leader")
            # And pushes flow from the new leader.
            (after,) = await in_thread(lambda: ha.submit_anywhere(
                {"type": "custom", "name": "after-failover", "config": {"command": ["true"]}}))
            await until(pilot, lambda: app.store.tasks.get(after["task_id"], {}).get("status") == "completed",
                        "a task submitted after the failover to show as completed")
            await app.action_quit()

    asyncio.run(run())
