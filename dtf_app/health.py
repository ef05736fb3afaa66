"""Health metrics of this machine (psutil) and threshold alerts.

``sample()`` is called on every worker heartbeat, so it must stay cheap: cpu_percent uses
``interval=None`` (the utilisation since the previous call, no sleeping) and nothing here spawns a
process. ``evaluate()`` turns a sample into alerts against thresholds (DESIGN.md §1 health monitor).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

DEFAULT_THRESHOLDS: dict[str, float] = {
    "cpu_percent": 90.0,
    "memory_percent": 90.0,
    "disk_percent": 95.0,
    "temperature_max_c": 85.0,
}
"""Warning thresholds; a value above ``(threshold + 100) / 2`` (or +10 °C for temperature) is critical."""

_GIB = 1024**3
# Temperature sensors are read from sysfs, which costs a few ms on some machines; a machine without any
# sensor (VMs, containers) is remembered so later samples skip the lookup entirely.
_temperatures_supported: bool | None = None


def sample(data_dir: str | None = None) -> dict:
    """One snapshot of machine health; ``data_dir`` is the directory whose disk is reported."""
    import psutil

    vm = psutil.virtual_memory()
    disk_path = _existing(Path(data_dir or os.environ.get("DTF_DATA_DIR", ".")))
    disk = psutil.disk_usage(str(disk_path))
    metrics: dict = {
        "timestamp": time.time(),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count() or 1,
        "memory_percent": vm.percent,
        "memory_available_gb": round(vm.available / _GIB, 3),
        "memory_total_gb": round(vm.total / _GIB, 3),
        "disk_path": str(disk_path),
        "disk_percent": disk.percent,
        "disk_free_gb": round(disk.free / _GIB, 3),
    }
    try:
        metrics["load_average"] = list(os.getloadavg())
    except (AttributeError, OSError):  # Windows has no load average
        metrics["load_average"] = None
    try:
        net = psutil.net_io_counters()
        metrics["net_bytes_sent"] = net.bytes_sent
        metrics["net_bytes_recv"] = net.bytes_recv
    except (OSError, AttributeError):
        metrics["net_bytes_sent"] = metrics["net_bytes_recv"] = None
    metrics["temperatures"] = _temperatures(psutil)
    temps = [t for t in (metrics["temperatures"] or {}).values() if t is not None]
    metrics["temperature_max_c"] = max(temps) if temps else None
    metrics["process_count"] = len(psutil.pids())
    return metrics


def _temperatures(psutil: object) -> dict[str, float] | None:
    global _temperatures_supported
    if _temperatures_supported is False or not hasattr(psutil, "sensors_temperatures"):
        return None
    try:
        sensors = psutil.sensors_temperatures()  # type: ignore[attr-defined]
    except (OSError, RuntimeError):
        sensors = {}
    if not sensors:
        _temperatures_supported = False
        return None
    _temperatures_supported = True
    # One figure per sensor chip: its hottest reading, which is what a threshold should look at.
    return {chip: max(r.current for r in readings) for chip, readings in sensors.items() if readings}


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def evaluate(metrics: dict, thresholds: dict[str, float] | None = None) -> list[dict]:
    """Alerts for every metric above its threshold.

    Each alert: ``{"metric", "value", "threshold", "severity": "warning" | "critical", "message"}``.
    ``thresholds`` overrides the defaults key by key; unknown keys raise ValueError naming the accepted ones.
    """
    limits = dict(DEFAULT_THRESHOLDS)
    if thresholds:
        unknown = set(thresholds) - set(DEFAULT_THRESHOLDS)
        if unknown:
            raise ValueError(f"unknown health threshold(s) {sorted(unknown)}; accepted: {sorted(DEFAULT_THRESHOLDS)}")
        limits.update(thresholds)
    alerts = []
    for metric, threshold in limits.items():
        value = metrics.get(metric)
        if not isinstance(value, int | float) or value <= threshold:
            continue
        critical_at = threshold + 10 if metric == "temperature_max_c" else (threshold + 100) / 2
        severity = "critical" if value >= critical_at else "warning"
        unit = " °C" if metric == "temperature_max_c" else "%"
        alerts.append({
            "metric": metric,
            "value": value,
            "threshold": threshold,
            "severity": severity,
            "message": f"{metric.replace('_', ' ')} is {value:.1f}{unit}, above the {threshold:g}{unit} threshold",
        })
    return alerts
