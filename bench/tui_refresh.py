"""The dashboard's refresh cost on a large cluster (DESIGN.md §11: measured here, never asserted in tests).

    PYTHONPATH=. .venv/bin/python bench/tui_refresh.py [--workers 1000] [--tasks 100000] [--rounds 20]

Builds a store as a resync leaves it (``--workers`` workers, ``--tasks`` tasks in mixed states), opens the
real app headless at 160x48, and per round applies a burst of pushes (``--burst`` task transitions, new
tasks and worker heartbeats: what arrives between two refreshes, which run at 4 Hz), then times the
visible tab's refresh (``DashApp.refresh_views``: the work the app does per tick) for each view, plus the
repaint that follows (one ``pilot.pause()``). Prints median / p95 / max in milliseconds per view.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time
from typing import Any

STATES = ("pending", "running", "completed", "completed", "completed", "failed", "cancelled", "assigned")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".000Z"


def build_store(workers: int, tasks: int, seed: int = 1) -> Any:
    from dtf_app.live import LiveStore

    rng = random.Random(seed)
    now = time.time()
    ws = []
    for i in range(workers):
        ws.append({"worker_id": f"w{i:04d}", "hostname": f"node-{i:04d}", "status": "online", "connected": True,
                   "hardware": ["cpu", "cuda"] if i % 4 == 0 else ["cpu"], "max_concurrent_tasks": 4, "running": 2,
                   "capabilities": {"gpu": {"devices": [{"name": "NVIDIA H100"}] * (8 if i % 4 == 0 else 0)}},
                   "health": {"cpu_percent": rng.uniform(0, 100), "memory_percent": rng.uniform(0, 100),
                              "disk_percent": 50.0}, "health_status": {"status": "healthy", "alerts": []},
                   "last_heartbeat": _iso(now)})
    rows = []
    counts: dict[str, int] = {}
    for i in range(tasks):
        state = STATES[rng.randrange(len(STATES))]
        counts[state] = counts.get(state, 0) + 1
        rows.append(({"task_id": f"t{i:07d}", "name": f"task-{i}", "type": ("test", "benchmark", "custom")[i % 3],
                      "status": state, "priority": i % 5, "worker_id": f"w{i % workers:04d}", "attempts": 1,
                      "create_time": _iso(now - tasks + i), "start_time": _iso(now - tasks + i + 1),
                      "end_time": _iso(now - tasks + i + 3) if state in ("completed", "failed") else None,
                      "error": "boom" if state == "failed" else None}, 1))
    counts["total"] = tasks
    store = LiveStore()
    started = time.perf_counter()
    store.load(rows, ws, 1, {"tasks": counts}, tasks)
    return store, (time.perf_counter() - started) * 1000


def burst(store: Any, rng: random.Random, size: int, index: int, new_base: int) -> tuple[set[str], set[str], float]:
    """Apply ``size`` task pushes (90% transitions, 10% new tasks) and size/2 worker heartbeats."""
    ids = list(store.tasks) if not hasattr(burst, "ids") else burst.ids  # type: ignore[attr-defined]
    burst.ids = ids  # type: ignore[attr-defined]
    workers = list(store.workers)
    tasks: set[str] = set()
    changed_workers: set[str] = set()
    started = time.perf_counter()
    for k in range(size):
        if k % 10 == 0:
            task_id = f"n{new_base + k:07d}"
            doc = {"task_id": task_id, "name": f"new-{k}", "type": "custom", "status": "pending", "priority": 1,
                   "attempts": 0, "create_time": _iso(time.time())}
        else:
            task_id = ids[rng.randrange(len(ids))]
            doc = dict(store.tasks[task_id], status=STATES[rng.randrange(len(STATES))])
        store.apply({"type": "task_update", "task_id": task_id, "status": doc["status"], "index": index,
                     "task": doc})
        tasks.add(task_id)
    for _ in range(size // 2):
        worker_id = workers[rng.randrange(len(workers))]
        doc = dict(store.workers[worker_id], health={"cpu_percent": rng.uniform(0, 100),
                                                      "memory_percent": rng.uniform(0, 100), "disk_percent": 50.0})
        store.apply({"type": "worker_update", "worker_id": worker_id, "index": index, "worker": doc})
        changed_workers.add(worker_id)
    return tasks, changed_workers, (time.perf_counter() - started) * 1000


async def measure(args: argparse.Namespace) -> None:
    from dtf_app.tui.app import DashApp
    from dtf_app.tui.backend import StaticBackend
    from dtf_app.tui.messages import Changes

    store, load_ms = build_store(args.workers, args.tasks)
    print(f"store: {args.workers:,} workers, {args.tasks:,} tasks; loading a resync took {load_ms:.0f} ms")
    gc.freeze()  # what the app does after a resync (see DashApp.on_live_update)
    app = DashApp(StaticBackend(store, "bench"), live=False, clock=False)
    rng = random.Random(2)
    views = [("overview", None), ("workers", None), ("tasks", None), ("tasks", "status:failed"),
             ("tasks", "bert failed"), ("tasks", "sort:status")]
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        apply_ms: list[float] = []
        print(f"{'view':<24} {'refresh median':>14} {'p95':>7} {'max':>7} {'+repaint median':>16} {'full rebuild':>12}   (ms, "
              f"{args.rounds} rounds, burst {args.burst} task pushes + {args.burst // 2} heartbeats)")
        for n, (tab, variant) in enumerate(views):
            app.action_show_tab(tab)
            await pilot.pause()
            view = app.query_one(f"#view-{tab}")
            if tab == "tasks":
                view.spec = type(view.spec)("" if variant in (None, "sort:status") else variant)
                view.sort = "status" if variant == "sort:status" else "newest"
                view._shown = []
            # A new filter or order rebuilds the view's index from the whole store once (a keystroke's
            # cost, not a refresh's): timed apart from the steady state.
            started = time.perf_counter()
            view.refresh_view(store, Changes(full=True))
            app.changes[tab] = Changes(full=False)
            build = (time.perf_counter() - started) * 1000
            await pilot.pause()
            refresh: list[float] = []
            total: list[float] = []
            for r in range(args.rounds):
                changed_tasks, changed_workers, took = burst(store, rng, args.burst, 2 + n * 1000 + r,
                                                             (n * args.rounds + r) * args.burst)
                apply_ms.append(took)
                for changes in app.changes.values():
                    changes.add(changed_tasks, changed_workers)
                started = time.perf_counter()
                app.refresh_views()
                middle = time.perf_counter()
                await pilot.pause()
                refresh.append((middle - started) * 1000)
                total.append((time.perf_counter() - started) * 1000)
            refresh.sort()
            label = tab + (f" [{variant}]" if variant else "")
            print(f"{label:<24} {statistics.median(refresh):>14.1f} {refresh[int(0.95 * (len(refresh) - 1))]:>7.1f} "
                  f"{refresh[-1]:>7.1f} {statistics.median(total):>16.1f} {build:>12.0f}")
        per_push = statistics.median(apply_ms) / (args.burst * 1.5) * 1000
        print(f"applying a burst of pushes to the store: median {statistics.median(apply_ms):.1f} ms "
              f"({per_push:.1f} µs per push)")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=500)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
