"""Deterministic dashboard data: a store with workers and tasks in every state, fixed times and ids.

Used by the Pilot tests, the snapshot tests and bench/tui_refresh.py (which scales it up).
"""

from __future__ import annotations

import random
from typing import Any

from dtf_app.live import LiveStore

STATES = ("pending", "running", "completed", "completed", "completed", "failed", "cancelled", "assigned")


def _iso(seconds: float) -> str:
    # Fixed epoch (2026-01-01T00:00:00Z) so snapshots never depend on the clock.
    base = 1767225600.0
    import time

    ts = base + seconds
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def worker(i: int, *, gpus: int = 0, status: str = "online", cpu: float = 20.0) -> dict[str, Any]:
    devices = [{"name": "NVIDIA H100 80GB HBM3", "type": "cuda", "memory_gb": 80} for _ in range(gpus)]
    running = 2 if status == "busy" else 1 if status == "online" else 0
    return {
        "worker_id": f"w{i}", "hostname": f"node-{i:03d}", "status": status, "connected": status != "offline",
        "hardware": ["cpu", "cuda"] if gpus else ["cpu"], "simulated": bool(gpus),
        "capabilities": {"gpu": {"count": gpus, "devices": devices}},
        "max_concurrent_tasks": 2, "running": running, "free_slots": 2 - running,
        "health": {"cpu_percent": cpu, "memory_percent": 40.0 + i % 50, "disk_percent": 55.0},
        "health_status": {"status": "critical" if status == "error" else "healthy",
                          "alerts": [{"metric": "cpu_percent", "value": 99.0, "threshold": 90.0,
                                      "severity": "critical", "message": "cpu percent is 99.0%, above the 90% threshold"}]
                          if status == "error" else []},
        "current_task": None, "last_heartbeat": _iso(3600 + i),
    }


def task(i: int, state: str, *, kind: str | None = None) -> dict[str, Any]:
    kind = kind or ("test", "benchmark", "custom")[i % 3]
    started = state not in ("pending", "assigned")
    done = state in ("completed", "failed", "cancelled")
    doc: dict[str, Any] = {
        "task_id": f"t{i:06d}-{'abcdef'[i % 6]}", "name": f"{kind}-{i}", "type": kind, "status": state,
        "priority": i % 5, "worker_id": f"w{i % 4 + 1}" if started else None, "attempts": 1 if started else 0,
        "create_time": _iso(i), "start_time": _iso(i + 1) if started else None,
        "end_time": _iso(i + 3.5) if done else None, "config": {"command": ["true"]},
    }
    if state == "failed":
        doc["error"] = f"exit code 1: AssertionError in case {i}"
    if state == "completed":
        doc["result"] = {"status": "failure" if i % 7 == 0 else "success", "execution_time": 2.5}
    return doc


def sample_store(workers: int = 4, tasks: int = 40, seed: int = 7) -> LiveStore:
    """A store as a resync would leave it: ``workers`` workers and ``tasks`` tasks in mixed states."""
    rng = random.Random(seed)
    store = LiveStore(clock=lambda: 0.0)  # a frozen clock: the throughput buckets never move
    ws = [worker(i + 1, gpus=(2 if i % 3 == 0 else 0), status=("online", "busy", "error", "offline")[i % 4],
                 cpu=float(rng.randint(5, 95))) for i in range(workers)]
    ts = [task(i, STATES[rng.randrange(len(STATES))]) for i in range(tasks)]
    counts: dict[str, int] = {}
    for t in ts:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    counts["total"] = len(ts)
    store.load([(t, 1) for t in ts], ws, 1, {"tasks": counts, "node_id": "coord-1", "role": "leader"}, len(ts))
    for i, value in enumerate([0, 1, 3, 2, 5, 8, 6, 4, 7, 9, 3, 2] * 5):
        store.throughput[i] = value
    return store


CLUSTER = {"status": {"node_id": "coord-1", "role": "leader", "leader_id": "coord-1", "term": 1},
           "nodes": [{"node_id": "coord-1", "url": "http://127.0.0.1:8080", "role": "leader", "term": 1,
                      "healthy": True, "enabled": True, "applied_index": 1234}],
           "leader": {"leader_id": "coord-1", "term": 1, "url": "http://127.0.0.1:8080"}}

RESULTS = {"level": "model", "benchmark": {"groups": [
    {"key": "bert", "count": 6, "throughput_mean": 812.5, "throughput_p50": 800.0, "throughput_stddev": 40.2,
     "latency_ms_mean": 1.23, "latency_ms_p50": 1.2, "latency_ms_min": 0.9, "latency_ms_max": 1.9,
     "memory_peak_mb_max": 120.0},
    {"key": "vit", "count": 4, "throughput_mean": 301.0, "throughput_p50": 290.0, "throughput_stddev": 12.0,
     "latency_ms_mean": 3.3, "latency_ms_p50": 3.2, "latency_ms_min": 3.0, "latency_ms_max": 4.1,
     "memory_peak_mb_max": 260.0}]},
    "tests": {"groups": [{"key": "success", "passed": 12, "failed": 0, "error": 0, "skipped": 1},
                         {"key": "failure", "passed": 3, "failed": 2, "error": 0, "skipped": 0}]},
    "anomalies": [{"model": "bert", "batch_size": 4, "precision": "fp16", "metric": "throughput", "value": 120.0,
                   "z_score": -2.9, "direction": "low"}]}
