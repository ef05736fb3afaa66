"""Throughput of in-process no-op custom tasks through a real local cluster.

A coordinator and N worker processes on 127.0.0.1 (the same processes `dtf up` runs); T tasks
``{"type": "custom", "config": {"callable": "dtf_plugins.runners.builtin_tasks:noop"}}`` are submitted
in one request and the clock runs from the submit until the last one is recorded as completed.

    python bench/throughput_bench.py [--tasks 5000] [--workers 2] [--slots 4,64] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.harness import Cluster, wait_for  # noqa: E402

NOOP = {"type": "custom", "config": {"callable": "dtf_plugins.runners.builtin_tasks:noop"}}


def run_once(tasks: int, workers: int, slots: int) -> dict[str, float]:
    """One measurement in a fresh cluster; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="dtf-bench-") as tmp:
        cluster = Cluster(Path(tmp), worker_timeout=30.0, heartbeat_interval=5.0)
        try:
            cluster.start_coordinator()
            for i in range(workers):
                cluster.start_worker(f"bench{i}", slots=slots)
            cluster.wait_workers(workers)
            started = time.perf_counter()
            response = cluster.submit([NOOP] * tasks)
            response.raise_for_status()
            submitted = time.perf_counter()
            batch = response.json()[0]["batch_id"]

            def finished() -> bool:
                summary = cluster.api("GET", "/api/tasks/summary", params={"batch_id": batch}).json()
                return summary["done"]

            wait_for(finished, timeout=600, interval=0.02, what="all tasks done")
            elapsed = time.perf_counter() - started
            counts = cluster.api("GET", "/api/tasks/summary", params={"batch_id": batch}).json()["counts"]
            return {"tasks": tasks, "workers": workers, "slots_per_worker": slots,
                    "submit_seconds": round(submitted - started, 3), "total_seconds": round(elapsed, 3),
                    "tasks_per_second": round(tasks / elapsed, 1), "completed": counts["completed"]}
        finally:
            cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", default="4,64", help="comma-separated max_concurrent_tasks values to try")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [run_once(args.tasks, args.workers, int(s)) for s in args.slots.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'tasks':>6} {'workers':>7} {'slots':>5} {'submit s':>9} {'total s':>8} {'tasks/s':>8} {'done':>6}")
        for r in rows:
            print(f"{r['tasks']:>6} {r['workers']:>7} {r['slots_per_worker']:>5} {r['submit_seconds']:>9} "
                  f"{r['total_seconds']:>8} {r['tasks_per_second']:>8} {r['completed']:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
