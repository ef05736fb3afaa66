"""Does one big submit stall the coordinator? ``/status`` latency while the biggest accepted batch lands.

Starts a real coordinator and two real workers (processes on 127.0.0.1, as the integration tests do),
submits one batch of ``MAX_TASKS_PER_REQUEST`` trivial tasks (``custom``, ``true``), and polls the
open ``GET /status`` every ``--interval`` seconds from another thread the whole time. Prints the
submit's duration, ``/status`` p50/p99/max latency (an unanswered poll counts with its timeout), the
coordinator's resident memory before and after, and whether any worker was declared lost.

Usage::

    python bench/status_latency.py [--tasks N] [--interval S] [--worker-timeout S] [--park] [--json]

Goal (DESIGN.md section 11: measured here, never asserted in tests): ``/status`` under 1 s throughout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Allow `python bench/status_latency.py` from a checkout without installing the package.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import httpx  # noqa: E402

from dtf_app.coordinator.api import MAX_TASKS_PER_REQUEST  # noqa: E402
from tests.integration.harness import Cluster  # noqa: E402

POLL_TIMEOUT_S = 30.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_bench(tasks: int = MAX_TASKS_PER_REQUEST, interval: float = 0.05, worker_timeout: float = 4.0,
              settle: float = 2.0, park: bool = False) -> dict[str, Any]:
    """Run one measurement; returns the figures. ``park``: the tasks need a tag no worker has and are
    queued as unschedulable, so the workers stay connected but idle (the coordinator's own cost alone,
    without the workers' task processes competing for the CPU)."""
    with tempfile.TemporaryDirectory(prefix="dtf-status-bench-") as tmp:
        cluster = Cluster(Path(tmp), worker_timeout=worker_timeout, heartbeat_interval=1.0)
        try:
            cluster.start_coordinator()
            cluster.start_worker("bench-w1", slots=2)
            cluster.start_worker("bench-w2", slots=2)
            cluster.wait_workers(2)
            assert cluster.coordinator is not None
            pid = cluster.coordinator.proc.pid
            rss_before = _rss_mb(pid)
            task: dict[str, Any] = {"type": "custom", "config": {"command": ["true"]}}
            if park:
                task["requirements"] = {"tags": ["bench-parked"]}
            body = json.dumps([task] * tasks).encode()
            latencies: list[float] = []
            failures = 0
            stop = threading.Event()

            def poll() -> None:
                nonlocal failures
                with httpx.Client(timeout=POLL_TIMEOUT_S) as client:
                    while not stop.is_set():
                        started = time.monotonic()
                        try:
                            client.get(cluster.url + "/status").raise_for_status()
                        except httpx.HTTPError:
                            failures += 1
                        latencies.append(time.monotonic() - started)
                        time.sleep(interval)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            time.sleep(settle)
            started = time.monotonic()
            response = httpx.post(cluster.url + "/api/tasks", content=body, timeout=600,
                                  params={"allow_unschedulable": "true"} if park else None,
                                  headers={"Content-Type": "application/json", "X-API-Key": cluster.admin_key})
            submit_s = time.monotonic() - started
            time.sleep(settle)
            stop.set()
            poller.join(POLL_TIMEOUT_S + 5)
            rss_after = _rss_mb(pid)
            workers = cluster.api("GET", "/api/workers").json()["workers"]
            lost = "workers lost" in cluster.coordinator.output()
            return {
                "tasks": tasks, "parked": park, "body_mb": round(len(body) / 2**20, 1), "submit_status": response.status_code,
                "submit_s": round(submit_s, 2), "polls": len(latencies), "poll_failures": failures,
                "status_p50_ms": round(1000 * statistics.median(latencies), 1),
                "status_p99_ms": round(1000 * _percentile(latencies, 0.99), 1),
                "status_max_ms": round(1000 * max(latencies), 1),
                "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1),
                # Connected: online, or busy with every slot taken (a busy worker is not lost).
                "workers_online": sum(1 for w in workers if w.get("connected", w["status"] == "online")),
                "worker_lost_logged": lost,
            }
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=MAX_TASKS_PER_REQUEST)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between /status polls")
    parser.add_argument("--worker-timeout", type=float, default=4.0)
    parser.add_argument("--park", action="store_true", help="queue the tasks unschedulable: workers stay idle")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run_bench(args.tasks, args.interval, args.worker_timeout, park=args.park)
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
