"""Throughput of in-process no-op custom tasks through a real local cluster.

A coordinator and N worker processes on 127.0.0.1 (the same processes `dtf up` runs); T tasks
``{"type": "custom", "config": {"callable": "dtf_plugins.runners.builtin_tasks:noop"}}`` are submitted
in one request and the clock runs from the submit until the last one is recorded as completed.

    python bench/throughput_bench.py [--tasks 5000] [--workers 2] [--slots 4,64] [--coordinators 1,3] [--json]

With ``--coordinators 3`` the same workload runs through a 3-coordinator Raft cluster (every commit
durable on a majority; on one machine mostly a measure of contention), submitted to the leader. ``elections`` counts the terms that began during the measurement (leadership
moved: on a loaded machine a stalled event loop can look like a dead leader); ``cpu s`` is the CPU time
the coordinators and workers used during the measurement (user + system, all processes together).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.harness import Cluster, HACluster, Node, wait_for  # noqa: E402


def cpu_seconds(nodes: dict[str, Node]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (psutil, a dependency of dtf)."""
    import psutil

    out = {}
    for name, node in nodes.items():
        try:
            times = psutil.Process(node.proc.pid).cpu_times()
        except psutil.Error:
            continue
        out[name] = times.user + times.system
    return out


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 2) for name in after}


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
            processes = {"coordinator": cluster.coordinator,
                         **{f"worker{i}": w for i, w in enumerate(cluster.workers)}}
            cpu_before = cpu_seconds(processes)
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
            cpu = cpu_used(cpu_before, cpu_seconds(processes))
            counts = cluster.api("GET", "/api/tasks/summary", params={"batch_id": batch}).json()["counts"]
            return {"tasks": tasks, "workers": workers, "slots_per_worker": slots,
                    "submit_seconds": round(submitted - started, 3), "total_seconds": round(elapsed, 3),
                    "tasks_per_second": round(tasks / elapsed, 1), "completed": counts["completed"],
                    "cpu_seconds": round(sum(cpu.values()), 2), "cpu_by_process": cpu}
        finally:
            cluster.stop()


def run_cluster(tasks: int, workers: int, slots: int, size: int) -> dict[str, float]:
    """The same measurement through a cluster of ``size`` coordinators."""
    with tempfile.TemporaryDirectory(prefix="dtf-bench-ha-") as tmp:
        cluster = HACluster(Path(tmp), size=size)
        try:
            for node_id in cluster.ids:
                cluster.start(node_id, ["--worker-timeout", "30", "--heartbeat-interval", "5"])
            leader = cluster.wait_leader()
            cluster.load_key()
            key = cluster.api("POST", leader, "/api/keys", json={"name": "bench", "role": "worker"}).json()["key"]
            for i in range(workers):
                cluster.start_worker(f"bench{i}", key, slots=slots, heartbeat=5.0)

            def online() -> bool:
                found = cluster.api("GET", leader, "/api/workers").json()["workers"]
                return sum(1 for w in found if w["status"] == "online") >= workers

            wait_for(online, 60, what="workers online")
            term_before = cluster.status(leader)["term"]
            processes = {**cluster.nodes, **{f"worker{i}": w for i, w in enumerate(cluster.workers)}}
            cpu_before = cpu_seconds(processes)
            started = time.perf_counter()
            response = cluster.api("POST", leader, "/api/tasks", json=[NOOP] * tasks)
            response.raise_for_status()
            submitted = time.perf_counter()
            batch = response.json()[0]["batch_id"]
            current = [leader]

            def finished() -> bool:
                # Follow the leader: on a loaded machine an election may move it during the run.
                response = cluster.api("GET", current[0], "/api/tasks/summary", params={"batch_id": batch})
                if response.status_code != 200:
                    current[0] = cluster.leader() or current[0]
                    return False
                return response.json()["done"]

            wait_for(finished, timeout=600, interval=0.02, what="all tasks done")
            elapsed = time.perf_counter() - started
            cpu = cpu_used(cpu_before, cpu_seconds(processes))
            counts = cluster.api("GET", current[0], "/api/tasks/summary",
                                 params={"batch_id": batch}).json()["counts"]
            elections = max(cluster.status(n)["term"] for n in cluster.ids) - term_before
            return {"tasks": tasks, "workers": workers, "slots_per_worker": slots, "coordinators": size,
                    "submit_seconds": round(submitted - started, 3), "total_seconds": round(elapsed, 3),
                    "tasks_per_second": round(tasks / elapsed, 1), "completed": counts["completed"],
                    "elections": elections, "leader": current[0], "cpu_seconds": round(sum(cpu.values()), 2),
                    "cpu_by_process": cpu}
        finally:
            cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", default="4,64", help="comma-separated max_concurrent_tasks values to try")
    parser.add_argument("--coordinators", default="1", help="comma-separated cluster sizes to try (1, 3, ...)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for size in (int(c) for c in args.coordinators.split(",")):
        for slots in (int(s) for s in args.slots.split(",")):
            row = run_once(args.tasks, args.workers, slots) if size == 1 else \
                run_cluster(args.tasks, args.workers, slots, size)
            row.setdefault("coordinators", 1)
            row.setdefault("elections", 0)
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'coord':>5} {'tasks':>6} {'workers':>7} {'slots':>5} {'submit s':>9} {'total s':>8} {'tasks/s':>8} "
              f"{'done':>6} {'elections':>9} {'cpu s':>6}")
        for r in rows:
            print(f"{r['coordinators']:>5} {r['tasks']:>6} {r['workers']:>7} {r['slots_per_worker']:>5} {r['submit_seconds']:>9} "
                  f"{r['total_seconds']:>8} {r['tasks_per_second']:>8} {r['completed']:>6} {r['elections']:>9} {r['cpu_seconds']:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
