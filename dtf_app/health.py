"""Health metrics of this machine (psutil) and threshold alerts.

``sample()`` is called on every worker heartbeat, so it must stay cheap: cpu_percent uses
``interval=None`` (the utilisation since the previous call, no sleeping) and nothing here spawns a
process. ``evaluate()`` turns a sample into alerts against warning and critical thresholds (DESIGN.md §1
health monitor): cpu, memory, disk, temperature, load average per CPU and network traffic (MB/s since
the previous sample). :func:`thresholds_from` reads them from the settings (the design's
``health_monitor`` / worker ``health`` sections), which every coordinator and worker evaluates against.
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
    "load_per_cpu": 2.0,
}
"""Warning thresholds; unless given, critical is ``(threshold + 100) / 2`` for percentages, +10 °C for
temperature, twice the threshold otherwise (load per CPU, network MB/s)."""
ACTING_METRICS = ("memory_percent", "disk_percent", "temperature_max_c")
"""Metrics whose critical alert takes a worker out (quarantine) even at a default threshold: they say the
machine is in trouble. A busy CPU or a high load is what running tasks looks like, so those act only at a
critical threshold set explicitly."""
METRICS = ("cpu_percent", "memory_percent", "disk_percent", "temperature_max_c", "load_per_cpu", "net_mb_per_s")
"""Every metric a threshold may be set for."""
_SETTING_OF = {"cpu_percent": "cpu", "memory_percent": "memory", "disk_percent": "disk",
               "temperature_max_c": "temperature", "load_per_cpu": "load", "net_mb_per_s": "network"}
_last_net: tuple[float, int] | None = None  # (time, bytes sent + received) of the previous sample

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
    if metrics["load_average"]:
        metrics["load_per_cpu"] = round(metrics["load_average"][0] / metrics["cpu_count"], 3)
    try:
        net = psutil.net_io_counters()
        metrics["net_bytes_sent"] = net.bytes_sent
        metrics["net_bytes_recv"] = net.bytes_recv
        metrics["net_mb_per_s"] = _net_rate(metrics["timestamp"], net.bytes_sent + net.bytes_recv)
    except (OSError, AttributeError):
        metrics["net_bytes_sent"] = metrics["net_bytes_recv"] = metrics["net_mb_per_s"] = None
    metrics["temperatures"] = _temperatures(psutil)
    temps = [t for t in (metrics["temperatures"] or {}).values() if t is not None]
    metrics["temperature_max_c"] = max(temps) if temps else None
    metrics["process_count"] = len(psutil.pids())
    return metrics


def _net_rate(now: float, total: int) -> float | None:
    """MB/s of network traffic since the previous sample of this process (None for the first)."""
    global _last_net
    previous, _last_net = _last_net, (now, total)
    if previous is None or now - previous[0] < 0.05 or total < previous[1]:
        return None
    return round((total - previous[1]) / (now - previous[0]) / 1e6, 4)


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


def _critical_default(metric: str, warning: float) -> float:
    if metric.endswith("_percent"):
        return (warning + 100) / 2
    if metric == "temperature_max_c":
        return warning + 10
    return warning * 2


def takes_out(alert: dict) -> bool:
    """Does this alert make its worker drained and quarantined (see ACTING_METRICS)?"""
    return alert.get("severity") == "critical" and (alert.get("metric") in ACTING_METRICS or bool(alert.get("explicit")))


def thresholds_from(settings: object) -> tuple[dict[str, float], dict[str, float]]:
    """(warning, critical) thresholds from Settings' ``health_*_threshold`` / ``health_*_critical`` fields."""
    warning: dict[str, float] = {}
    critical: dict[str, float] = {}
    for metric, name in _SETTING_OF.items():
        warn = getattr(settings, f"health_{name}_threshold", None)
        crit = getattr(settings, f"health_{name}_critical", None)
        if warn is not None:
            warning[metric] = float(warn)
        if crit is not None:
            critical[metric] = float(crit)
    return warning, critical


def evaluate(metrics: dict, thresholds: dict[str, float] | None = None,
             critical: dict[str, float] | None = None) -> list[dict]:
    """Alerts for every metric at or above its critical threshold, or above its warning threshold.

    Each alert: ``{"metric", "value", "threshold", "severity": "warning" | "critical", "level" (the
    same), "message"}``; ``threshold`` is the one crossed. ``thresholds`` (warning) and ``critical``
    override the defaults key by key; unknown keys raise ValueError naming the accepted ones. A metric
    with only a critical threshold alerts only when that is reached.
    """
    limits = dict(DEFAULT_THRESHOLDS)
    for given in (thresholds, critical):
        unknown = set(given or ()) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown health threshold(s) {sorted(unknown)}; accepted: {sorted(METRICS)}")
    limits.update(thresholds or {})
    alerts = []
    for metric in METRICS:
        value = metrics.get(metric)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        warning = limits.get(metric)
        crit = (critical or {}).get(metric)
        if crit is None and warning is not None:
            crit = _critical_default(metric, warning)
        if crit is not None and value >= crit:
            severity, threshold = "critical", crit
        elif warning is not None and value > warning:
            severity, threshold = "warning", warning
        else:
            continue
        unit = {"temperature_max_c": " °C", "load_per_cpu": "", "net_mb_per_s": " MB/s"}.get(metric, "%")
        alerts.append({
            # A critical threshold the operator set (not a derived default) is meant to act on.
            "explicit": severity == "critical" and metric in (critical or {}),
            "metric": metric,
            "value": value,
            "threshold": threshold,
            "severity": severity,
            "level": severity,
            "message": f"{metric.replace('_', ' ')} is {value:.1f}{unit}, "
                       f"{'at or above' if severity == 'critical' else 'above'} the {threshold:g}{unit} "
                       f"{severity} threshold",
        })
    return alerts
