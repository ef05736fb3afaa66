"""The source design's Worker model fields on top of DTF's worker view (sources' api-shapes.md).

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
from typing import Any

from dtf_app import health

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


def health_status(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{"status": healthy|warning|critical|unknown, "alerts": [...], "cpu_percent", ...}`` of a sample."""
    if not metrics:
        return {"status": "unknown", "alerts": []}
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
    health_doc = health_status(view.get("health") or {})
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
