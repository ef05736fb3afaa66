"""Views: the task, worker and status documents the API, pushes and dashboard show.

They are read-only projections of the replicated state plus this node's connection data; nothing here
changes state. On top of DTF's own worker view come the source design's Worker model fields
(sources' api-shapes.md):

``Worker {worker_id, status: online|offline|busy|error, hardware_id, capabilities, last_seen,
current_task, performance_metrics, health_status, metadata}``: DTF's own view already has the
capabilities and the raw health sample; this adds the source names, derived from what the coordinator
knows, so outside clients and the dashboard read one shape.

``status`` refines "online": ``busy`` when every slot holds a task, ``error`` when the last health sample
raised a critical memory or disk alert (resources that make tasks fail; a saturated CPU only makes them
slow, so it shows in ``health_status`` but not as an error). ``connected`` stays the plain yes/no for code
that only asks "is it there".
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from dtf_app import __version__, health
from dtf_app.coordinator import resources

if TYPE_CHECKING:
    from dtf_app.coordinator.service import Coordinator

WORKER_STATUSES = ("online", "busy", "error", "offline")
ERROR_METRICS = frozenset({"memory_percent", "disk_percent"})
"""Health metrics whose critical alert makes a worker's status ``error``."""
"""Every status a worker view can have (one definition for API filters, OpenAPI and the dashboard)."""


def hardware_id(worker: dict[str, Any]) -> str:
    """A stable id of the machine's hardware profile: same host and devices, same id (12 hex digits)."""
    caps = worker.get("capabilities") if isinstance(worker.get("capabilities"), dict) else {}
    cpu = caps.get("cpu") if isinstance(caps.get("cpu"), dict) else {}
    gpu = caps.get("gpu") if isinstance(caps.get("gpu"), dict) else {}
    devices = gpu.get("devices") if isinstance(gpu.get("devices"), list) else []
    profile = {"hostname": worker.get("hostname"), "cpu": cpu.get("model"), "cores": cpu.get("cores"),
               "gpus": sorted(str(d.get("name")) for d in devices if isinstance(d, dict)),
               "hardware": sorted(str(h) for h in worker.get("hardware") or [])}
    return hashlib.sha1(json.dumps(profile, sort_keys=True, default=str).encode()).hexdigest()[:12]


def health_status(metrics: dict[str, Any], alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``{"status": healthy|warning|critical|unknown, "alerts": [...], "cpu_percent", ...}`` of a sample.

    ``alerts``: the ones already evaluated against the source's own thresholds (a worker's heartbeat);
    without them the sample is evaluated against the defaults.
    """
    if not metrics:
        return {"status": "unknown", "alerts": []}
    if alerts is None:
        try:
            alerts = health.evaluate(metrics)
        except (TypeError, ValueError):
            alerts = []
    severities = {a["severity"] for a in alerts}
    status = "critical" if "critical" in severities else "warning" if severities else "healthy"
    out: dict[str, Any] = {"status": status, "alerts": alerts}
    for key in ("cpu_percent", "memory_percent", "disk_percent", "temperature_max_c", "load_average"):
        if key in metrics:
            out[key] = metrics[key]
    return out


def add_source_fields(view: dict[str, Any], worker: dict[str, Any]) -> None:
    """Add the source Worker model's fields to a worker view, in place."""
    assigned = worker.get("assigned") or {}
    health_doc = health_status(view.get("health") or {}, view.get("alerts"))
    view["hardware_id"] = hardware_id(worker)
    view["last_seen"] = view.get("last_heartbeat")
    view["current_task"] = next(iter(sorted(assigned)), None) if isinstance(assigned, dict) else None
    view["current_tasks"] = sorted(assigned) if isinstance(assigned, dict) else []
    view["health_status"] = health_doc
    capacity = int(worker.get("max_concurrent_tasks") or 1)
    view["performance_metrics"] = {
        "running": view.get("running", 0), "slots": capacity,
        "load": round(view.get("running", 0) / capacity, 3) if capacity else 0.0,
    }
    view.setdefault("metadata", {})
    if view.get("connected"):
        if any(a.get("severity") == "critical" and a.get("metric") in ERROR_METRICS for a in health_doc["alerts"]):
            view["status"] = "error"
        elif capacity and view.get("running", 0) >= capacity:
            view["status"] = "busy"


def wait_reason(coord: Coordinator, task: dict[str, Any]) -> dict[str, Any] | None:
    """Why a task that has not started waits (scheduler.wait_reason), with times in the API's format."""
    from dtf_app.coordinator import scheduler

    # The leader knows which workers are connected to it; a follower judges by the replicated status.
    connected = [w for w, c in coord.conns.items() if not c.closed] if coord.is_leader else None
    reason = scheduler.wait_reason(task, coord.state.tasks, coord.state.workers, coord.queue, now=time.time(),
                                   policy=coord.duties.policy, connected=connected)
    if reason is not None and reason["code"] == "backoff":
        reason["message"] = f"{reason['message']}; retry after {iso(reason['until'])}"
        reason["until"] = iso(reason["until"])
    return reason


def iso(ts: float | None) -> str | None:
    """Unix seconds -> ISO 8601 UTC (the API's time format)."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def task_view(task: dict[str, Any]) -> dict[str, Any]:
    """A task as the API shows it."""
    view = {k: v for k, v in task.items() if k != "seq"}
    for key in ("create_time", "start_time", "end_time"):
        view[key] = iso(task.get(key))
    return view


def worker_view(coord: Coordinator, worker_id: str) -> dict[str, Any] | None:
    """A worker as the API shows it: the replicated document plus this node's connection data."""
    worker = coord.state.workers.get(worker_id)
    if worker is None:
        return None
    conn = coord.conns.get(worker_id)
    running = len(worker.get("assigned") or {})
    capacity = int(worker.get("max_concurrent_tasks") or 1)
    view = {k: v for k, v in worker.items() if k != "assigned"}
    connected = conn is not None and not conn.closed
    view.update(
        status="online" if connected else "offline", connected=connected,
        running=running, free_slots=max(0, capacity - running),
        # Tasks held (running or queued on it) per slot: the balancer's load (above 1: prefetched extras).
        load=round(running / capacity, 3) if capacity else 0.0,
        health=conn.health if conn is not None else {},
        registration_time=iso(worker.get("registration_time")),
        last_heartbeat=iso(worker.get("last_heartbeat")),
        enrolled=worker_id in coord.state.enrolments,  # bound to a credential (dtf workers forget frees it)
        # Reserved vs capacity per resource (task ``resources``; coordinator/resources.py).
        resources=resources.worker_usage(worker),
        alerts=conn.alerts if conn is not None else [],
        quarantine=worker.get("quarantine"),
    )
    if conn is not None:
        view["last_heartbeat"] = iso(time.time() - (time.monotonic() - conn.last_seen))
    add_source_fields(view, worker)
    return view


def status(coord: Coordinator) -> dict[str, Any]:
    """``GET /api/status``: this node's role in the cluster, task counts, workers, queue depth."""
    online = sum(1 for c in coord.conns.values() if not c.closed)
    rep = coord.replicator
    return {
        "node_id": coord.node_id, "role": rep.role, "leader_id": coord.leader_id,
        "leader_url": coord.leader_url, "term": rep.term,
        "commit_index": rep.commit_index, "applied_index": coord.state.applied_index,
        "url": coord.url, "version": __version__, "uptime_seconds": round(time.time() - coord.started_at, 3),
        "tasks": coord.state.task_counts(),
        "workers": {"online": online, "offline": len(coord.state.workers) - online,
                    "total": len(coord.state.workers)},
        "queue_depth": len(coord.queue),
    }
