"""Pilot tests of the dashboard: posted messages and widget state, on fixed data and on a real cluster.

Textual runs on asyncio, so these are plain test functions that run the app with ``asyncio.run``
(pytest-trio drives only ``async def`` tests). The live tests use real coordinator and worker processes
(tests/integration/harness.py) and the app's own trio guest run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.widgets import DataTable, Input, Static

from dtf_app.live import Connection, LiveStore
from dtf_app.tui.app import DashApp
from dtf_app.tui.backend import RemoteBackend, StaticBackend
from dtf_app.tui.messages import LiveUpdate, OpenTask
from dtf_app.tui.screens.detail import TaskDetailScreen
from dtf_app.tui.screens.dialogs import ConfirmScreen, HelpScreen, SubmitScreen
from tests.integration.harness import Cluster
from tests.tui.sample import CLUSTER, RESULTS, sample_store, task, worker

SIZE = (160, 48)


async def until(pilot: Any, predicate: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    """Let the app run until ``predicate()`` is truthy (a generous deadline, never a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def static_app(store: LiveStore | None = None) -> DashApp:
    backend = StaticBackend(store or sample_store(), "sample data")
    backend.cluster_info, backend.results_info = CLUSTER, RESULTS
    return DashApp(backend, live=False, clock=False)


# ---------------------------------------------------------------- fixed data
def test_tabs_keys_and_task_detail_on_fixed_data() -> None:
    messages: list[Any] = []

    async def run() -> None:
        app = static_app()
        async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
            await pilot.pause()
            assert app.active_tab() == "overview"
            failures = app.query_one("#failures", DataTable)
            assert failures.row_count == sum(1 for t in app.store.tasks.values() if t["status"] == "failed")
            await pilot.press("3")
            workers = app.query_one("#worker-table", DataTable)
            assert app.active_tab() == "workers" and workers.row_count == 4
            await pilot.press("4")
            tasks = app.query_one("#task-table", DataTable)
            assert tasks.row_count == 40 and tasks.has_focus
            newest = max(app.store.tasks)  # ids grow with creation: newest first
            assert app.query_one("#view-tasks").selected_task_id() == newest
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, TaskDetailScreen) and app.screen.task_id == newest
            assert any(isinstance(m, OpenTask) and m.task_id == newest for m in messages)
            await pilot.press("escape", "question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape", "2")
            await until(pilot, lambda: app.query_one("#nodes", DataTable).row_count == 1, "cluster nodes")
            await pilot.press("5")
            await until(pilot, lambda: app.query_one("#aggregates", DataTable).row_count == 2, "aggregates")

    asyncio.run(run())


def test_filter_and_sort_the_task_table() -> None:
    async def run() -> None:
        app = static_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4", "slash")
            assert app.query_one("#task-filter", Input).has_focus
            await pilot.press(*"status:failed")
            await pilot.pause()
            failed = sum(1 for t in app.store.tasks.values() if t["status"] == "failed")
            assert app.query_one("#task-table", DataTable).row_count == failed
            await pilot.press("escape")
            assert app.query_one("#task-table", DataTable).has_focus
            app.query_one("#task-filter", Input).value = "status:nonsense"
            await pilot.pause()
            summary = str(app.query_one("#task-summary", Static).render())
            assert "unknown state nonsense" in summary
            app.query_one("#task-filter", Input).value = ""
            await pilot.pause()
            await pilot.press("down", "down")
            chosen = app.query_one("#view-tasks").selected_task_id()
            assert chosen == sorted(app.store.tasks)[-3]
            await pilot.press("o")  # newest -> oldest
            await pilot.pause()
            table = app.query_one("#task-table", DataTable)
            assert table.coordinate_to_cell_key((0, 0))[0].value == min(app.store.tasks)
            # The selected task stays selected when the order changes.
            assert app.query_one("#view-tasks").selected_task_id() == chosen
            await pilot.press("f")  # state filter: running
            await pilot.pause()
            running = sum(1 for t in app.store.tasks.values() if t["status"] == "running")
            assert app.query_one("#task-table", DataTable).row_count == running

    asyncio.run(run())


def test_odd_and_missing_fields_never_crash_a_view() -> None:
    store = sample_store(workers=2, tasks=5)
    store.tasks["odd"] = {"task_id": "odd", "status": 7, "priority": "high", "create_time": "yesterday",
                          "start_time": {"x": 1}, "end_time": None, "result": "???", "error": ["list"],
                          "attempts": None}
    store.tasks["bare"] = {"task_id": "bare"}
    store.workers["ghost"] = {"worker_id": "ghost", "health": "n/a", "capabilities": [], "hardware": "cpu",
                              "max_concurrent_tasks": "four", "health_status": {"alerts": ["x", None]}}
    store.status["tasks"] = {"pending": "many", "total": 7}

    async def run() -> None:
        app = static_app(store)
        async with app.run_test(size=SIZE) as pilot:
            for key in ("1", "2", "3", "4", "5"):
                await pilot.press(key)
                await pilot.pause()
            await pilot.press("4")
            app.query_one("#view-tasks").action_page(0)
            await pilot.pause()
            app.push_screen(TaskDetailScreen("odd", app.store))
            await pilot.pause()
            app.pop_screen()
            app.push_screen(TaskDetailScreen("missing-entirely", app.store))
            await pilot.pause()
            assert app.query_one("#worker-table", DataTable).row_count == 3

    asyncio.run(run())


def test_a_detail_refresh_while_the_screen_is_mounting_or_closing_is_harmless() -> None:
    """A refresh tick or an HTTP answer can land while the detail screen is not (or no longer) composed:
    it must not raise (it once took the whole TUI down with NoMatches on '#attempts')."""

    async def run() -> None:
        app = static_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            task_id = max(app.store.tasks)
            closed = TaskDetailScreen(task_id, app.store)  # never mounted: no widgets at all
            closed.refresh_detail()
            closed.set_fetched({"task_id": task_id, "log_tail": ["a line"]}, [{"attempt": 1}], {"status": "success"})
            screen = TaskDetailScreen(task_id, app.store)
            app.push_screen(screen)
            await pilot.pause()
            app.pop_screen()
            screen.refresh_detail()  # during/after the pop
            screen.set_fetched({"task_id": task_id, "log_tail": ["late"]}, [], None)
            await pilot.pause()
            assert not isinstance(app.screen, TaskDetailScreen)

    asyncio.run(run())


def test_the_banner_shows_a_lost_connection_and_hides_when_back() -> None:
    async def run() -> None:
        app = static_app()
        app.live = True  # banner logic on, no backend started (StaticBackend.start does nothing)
        async with app.run_test(size=SIZE) as pilot:
            banner = app.query_one("#banner", Static)
            app.post_message(LiveUpdate(Connection("lost", "http://x", "connection refused", retry_in=2.0)))
            await pilot.pause()
            assert banner.display and "connection lost" in str(banner.render())
            assert "retrying in 2 s" in str(banner.render())
            app.post_message(LiveUpdate(Connection("connected", "http://x")))
            await pilot.pause()
            assert not banner.display

    asyncio.run(run())


# ---------------------------------------------------------------- a real cluster
def _write_tasks(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"tasks": tasks}))
    return path


def test_submit_watch_detail_and_cancel_on_a_real_cluster(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1", slots=2)
    cluster.wait_workers(1)
    task_file = _write_tasks(tmp_path / "tasks.json", [
        {"type": "custom", "name": f"echo-{i}", "config": {"command": ["python3", "-c", f"print('line {i}')"]}}
        for i in range(3)])
    long_file = _write_tasks(tmp_path / "long.json", [
        {"type": "custom", "name": "sleeper", "config": {"command": ["sleep", "120"]}}])
    messages: list[Any] = []

    async def run() -> None:
        app = DashApp(RemoteBackend([cluster.url], cluster.admin_key), clock=False)
        async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
            await until(pilot, lambda: app.connection and app.connection.state == "connected", "connected")
            assert any(isinstance(m, LiveUpdate) and isinstance(m.event, Connection)
                       and m.event.state == "connected" for m in messages)
            await until(pilot, lambda: "w1" in app.store.workers, "the worker in the store")
            # Submit from the UI: s, the path, enter.
            await pilot.press("s")
            assert isinstance(app.screen, SubmitScreen)
            app.screen.query_one("#submit-path", Input).value = str(task_file)
            await pilot.press("enter")
            names = {"echo-0", "echo-1", "echo-2"}
            await until(pilot, lambda: {t.get("name") for t in app.store.tasks.values()
                                        if t.get("status") == "completed"} >= names, "the three tasks to complete")
            assert app.active_tab() == "tasks"
            await until(pilot, lambda: app.query_one("#task-table", DataTable).row_count == 3, "three rows")
            # Open the newest task: its attempts (worker w1) and its log come over HTTP.
            await pilot.press("enter")
            screen = await until(pilot, lambda: isinstance(app.screen, TaskDetailScreen) and app.screen, "detail")
            await until(pilot, lambda: screen.query_one("#attempts", DataTable).row_count >= 1, "attempts")
            assert screen.attempts[0]["worker_id"] == "w1" and screen.attempts[0]["status"] == "completed"
            await pilot.press("escape")
            # Cancel a long task from the table: c, then y in the confirmation.
            await pilot.press("s")
            app.screen.query_one("#submit-path", Input).value = str(long_file)
            await pilot.press("enter")
            sleeper = await until(pilot, lambda: next((t for t in app.store.tasks.values()
                                                       if t.get("name") == "sleeper"
                                                       and t.get("status") == "running"), None), "sleeper running")
            await until(pilot, lambda: app.query_one("#view-tasks").selected_task_id() == sleeper["task_id"],
                        "the sleeper selected (newest first)")
            await pilot.press("c")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await until(pilot, lambda: app.store.tasks[sleeper["task_id"]].get("status") == "cancelled",
                        "the sleeper cancelled")
            # Drain and enable the worker from the Workers view (d / e): the pushes bring the flag back.
            await pilot.press("3", "d")
            await until(pilot, lambda: app.store.workers["w1"].get("drained") is True, "w1 drained")
            await until(pilot, lambda: "drained" in str(app.query_one("#worker-table", DataTable).get_row("w1")),
                        "the drained status in the table")
            await pilot.press("e")
            await until(pilot, lambda: app.store.workers["w1"].get("drained") is False, "w1 enabled")
            await app.action_quit()

    asyncio.run(run())
    # What the UI showed is what the coordinator holds.
    final = {t["name"]: t["status"] for t in cluster.api("GET", "/api/tasks").json()["tasks"]}
    assert final == {"echo-0": "completed", "echo-1": "completed", "echo-2": "completed", "sleeper": "cancelled"}


def test_survives_its_coordinator_being_killed_and_restarted(cluster: Cluster) -> None:
    import signal

    cluster.start_coordinator()
    cluster.start_worker("w1", slots=1)
    cluster.wait_workers(1)

    async def run() -> None:
        app = DashApp(RemoteBackend([cluster.url], cluster.admin_key), clock=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.connection and app.connection.state == "connected", "connected")
            cluster.coordinator.kill(signal.SIGKILL)
            banner = app.query_one("#banner", Static)
            await until(pilot, lambda: banner.display and "lost" in str(banner.render()), "the lost banner")
            await asyncio.get_running_loop().run_in_executor(None, cluster.coordinator.wait)
            await asyncio.get_running_loop().run_in_executor(None, cluster.start_coordinator)
            await until(pilot, lambda: app.connection.state == "connected" and not banner.display, "reconnected")
            created = await asyncio.get_running_loop().run_in_executor(
                None, lambda: cluster.submit({"type": "custom", "name": "after-restart",
                                              "config": {"command": ["true"]}}).json())
            await until(pilot, lambda: app.store.tasks.get(created["task_id"], {}).get("status") == "completed",
                        "a task submitted after the restart to show as completed")
            await app.action_quit()

    asyncio.run(run())


def test_sample_helpers_are_consistent() -> None:
    assert task(3, "failed")["error"] and worker(2, status="busy")["running"] == 2
