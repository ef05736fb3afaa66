"""Small renderers shared by the views: state colours, gauges, ids, times. Odd input never raises."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.text import Text

STATE_STYLES = {
    "pending": "yellow", "blocked": "dark_orange", "unschedulable": "magenta", "assigned": "cyan",
    "running": "bold cyan", "completed": "green", "failed": "bold red", "cancelled": "grey62",
    "online": "green", "busy": "bold cyan", "error": "bold red", "offline": "grey50", "drained": "yellow",
    "leader": "bold green", "follower": "cyan", "candidate": "yellow",
    "success": "green", "failure": "red", "partial": "yellow",
    "healthy": "green", "warning": "yellow", "critical": "bold red", "unknown": "grey50",
}
NOW = time.time
"""The clock the views use for ages and running durations (tests pin it for deterministic snapshots)."""
STATE_ORDER = ("running", "assigned", "pending", "blocked", "unschedulable", "completed", "failed", "cancelled")


def state(value: Any) -> Text:
    """A state name in its colour."""
    text = str(value) if value is not None else "-"
    return Text(text, style=STATE_STYLES.get(text, ""))


def number(value: Any) -> float | None:
    """A finite number, or None for anything else (strings, bools, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and value not in (float("inf"), float("-inf")) else None


def gauge(percent: Any, width: int = 10) -> Text:
    """``█████░░░░░ 52%`` coloured by level; ``-`` when unknown."""
    value = number(percent)
    if value is None:
        return Text("-".ljust(width + 5), style="grey50")
    value = max(0.0, min(100.0, value))
    filled = round(value / 100 * width)
    style = "red" if value >= 90 else "yellow" if value >= 75 else "green"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="grey35") + Text(f" {value:3.0f}%")


def short_id(value: Any, length: int = 12) -> str:
    text = str(value) if value is not None else "-"
    return text if len(text) <= length else text[:length]


def parse_time(value: Any) -> float | None:
    """Unix seconds from an ISO 8601 string (the API's format) or a number."""
    if number(value) is not None:
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def clock(value: Any) -> str:
    """HH:MM:SS local time of an API timestamp, ``-`` if none."""
    ts = parse_time(value)
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts is not None else "-"


def ago(value: Any, now: float | None = None) -> str:
    ts = parse_time(value)
    if ts is None:
        return "-"
    seconds = max(0.0, (NOW() if now is None else now) - ts)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def duration(task: dict[str, Any], now: float | None = None) -> str:
    start, end = parse_time(task.get("start_time")), parse_time(task.get("end_time"))
    if start is None:
        return "-"
    seconds = (end if end is not None else (NOW() if now is None else now)) - start
    if seconds < 0:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f}m"


def hardware(worker: dict[str, Any]) -> str:
    kinds = worker.get("hardware")
    text = ",".join(str(k) for k in kinds) if isinstance(kinds, list) else "-"
    return text + (" (sim)" if worker.get("simulated") else "")


def gpus(worker: dict[str, Any]) -> str:
    caps = worker.get("capabilities") if isinstance(worker.get("capabilities"), dict) else {}
    gpu = caps.get("gpu") if isinstance(caps.get("gpu"), dict) else {}
    devices = gpu.get("devices") if isinstance(gpu.get("devices"), list) else []
    names = [str(d.get("name") or d.get("type") or "?") for d in devices if isinstance(d, dict)]
    if not names:
        return "-"
    first = names[0]
    return first if len(names) == 1 else f"{len(names)}x {first}"


def task_label(task: dict[str, Any]) -> str:
    return str(task.get("name") or short_id(task.get("task_id")))
