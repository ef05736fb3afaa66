"""Snapshots of every view at fixed sizes with deterministic data (pytest-textual-snapshot).

A failing snapshot writes an HTML report with both pictures; after a deliberate change to a view, accept
the new pictures with ``pytest tests/tui/test_snapshots.py --snapshot-update`` and look at them.
"""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Markdown
from textual.widgets._markdown import MarkdownTable

from dtf_app.tui.app import DashApp
from dtf_app.tui.backend import StaticBackend
from dtf_app.tui.screens.detail import TaskDetailScreen
from tests.tui.sample import CLUSTER, RESULTS, sample_store

BIG, SMALL = (160, 48), (80, 24)


def make_app() -> DashApp:
    backend = StaticBackend(sample_store(), "sample data")
    backend.cluster_info, backend.results_info = CLUSTER, RESULTS
    return DashApp(backend, live=False, clock=False)


async def _until_rows(pilot: Pilot[Any], selector: str, rows: int) -> None:
    for _ in range(600):  # generous: the machine may be loaded
        if pilot.app.query_one(selector, DataTable).row_count >= rows:
            await _settle(pilot)
            return
        await pilot.pause(0.05)
    raise AssertionError(f"{selector} never got {rows} rows")


async def _settle(pilot: Pilot[Any]) -> None:
    """Let background work (HTTP-fed views, Markdown) finish and the screen repaint."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def pressing(*keys: str) -> Any:
    async def run(pilot: Pilot[Any]) -> None:
        await pilot.press(*keys)
        await _settle(pilot)

    return run


@pytest.mark.parametrize("size", [BIG, SMALL], ids=["160x48", "80x24"])
def test_overview(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), run_before=pressing(), terminal_size=size)


@pytest.mark.parametrize("size", [BIG, SMALL], ids=["160x48", "80x24"])
def test_tasks(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), run_before=pressing("4"), terminal_size=size)


def test_tasks_filtered(snap_compare: Any) -> None:
    assert snap_compare(make_app(), run_before=pressing("4", "slash", *"status:failed,running", "escape"),
                        terminal_size=BIG)


def test_workers(snap_compare: Any) -> None:
    assert snap_compare(make_app(), run_before=pressing("3"), terminal_size=BIG)


def test_cluster(snap_compare: Any) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        await pilot.press("2")
        await _until_rows(pilot, "#nodes", 1)

    assert snap_compare(make_app(), run_before=ready, terminal_size=BIG)


def test_results(snap_compare: Any) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        await pilot.press("5")
        await _until_rows(pilot, "#aggregates", 2)

    assert snap_compare(make_app(), run_before=ready, terminal_size=BIG)


def test_task_detail(snap_compare: Any) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        app = pilot.app
        task_id = next(t for t, d in sorted(app.store.tasks.items()) if d["status"] == "completed" and d["type"] == "test")
        screen = TaskDetailScreen(task_id, app.store)
        await app.push_screen(screen)
        app.store.logs[task_id] = __import__("collections").deque(["collected 3 items", "... [100%]", "3 passed"])
        screen.set_fetched({"log_tail": []}, [
            {"attempt": 1, "worker_id": "w2", "status": "failed", "start_time": "2026-01-01T00:00:01.000Z",
             "execution_time_seconds": 1.5, "error_message": "worker lost (no heartbeat)"},
            {"attempt": 2, "worker_id": "w1", "status": "completed", "start_time": "2026-01-01T00:00:05.000Z",
             "execution_time_seconds": 2.5, "error_message": None}],
            {"tests": [{"nodeid": "test_math.py::test_addition", "outcome": "passed", "duration": 0.01},
                       {"nodeid": "test_math.py::test_division", "outcome": "failed", "duration": 0.02},
                       {"nodeid": "test_strings.py::test_upper", "outcome": "skipped", "duration": 0.0}],
             "benchmarks": []})
        await _settle(pilot)

    assert snap_compare(make_app(), run_before=ready, terminal_size=BIG)


def test_help(snap_compare: Any) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        await pilot.press("question_mark")
        for _ in range(600):
            if "Tasks" in str(pilot.app.screen.query_one(Markdown).source) and pilot.app.screen.query(MarkdownTable):
                break
            await pilot.pause(0.05)
        await _settle(pilot)

    assert snap_compare(make_app(), run_before=ready, terminal_size=BIG)
