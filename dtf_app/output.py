"""Terminal rendering for the CLI: plain tables, task summaries and a live progress line.

Nothing here imports a third-party library: ``dtf`` must render in a bare terminal, a CI log or a pipe.
Data goes to stdout, progress and logs to stderr, so ``--json`` output stays machine-readable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

# The order in which states are shown: live states first, so a glance at the line says what is moving.
STATE_ORDER = ("pending", "blocked", "unschedulable", "assigned", "running", "completed", "failed", "cancelled")


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """Pretty JSON on stdout (or ``stream``)."""
    out = stream or sys.stdout
    out.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    out.flush()


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    """A left-aligned text table; ``None`` cells print as ``-``; long cells are cut to keep lines readable."""
    body = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body]
    return "\n".join(lines)


def format_timestamp(value: Any) -> Any:
    """Unix seconds as ``YYYY-MM-DD HH:MM:SS`` UTC (the API returns some times as numbers); others unchanged."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 1e8:
        from datetime import UTC

        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return value


def _cell(value: Any, limit: int = 60) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value) or "-"
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp from the API (``...Z`` or with offset), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def task_duration(task: Mapping[str, Any]) -> float | None:
    """Seconds between a task's start and end, or None when it has not run to the end."""
    start, end = parse_time(task.get("start_time")), parse_time(task.get("end_time"))
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def format_seconds(seconds: float | None) -> str:
    """``0.42s``, ``12.3s``, ``4m05s``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest:02d}s"


def result_status(task: Mapping[str, Any]) -> str | None:
    """The result document's status (success | failure | partial) of a task, when it has one."""
    result = task.get("result")
    return result.get("status") if isinstance(result, Mapping) else None


def tasks_table(tasks: Sequence[Mapping[str, Any]]) -> str:
    """The summary table printed after ``submit --wait`` and by ``tasks list``."""
    rows = [(t.get("task_id"), t.get("name"), t.get("type"), t.get("status"), result_status(t),
             t.get("worker_id"), format_seconds(task_duration(t)), _short_error(t)) for t in tasks]
    return table(rows, ("task id", "name", "type", "status", "result", "worker", "duration", "error"))


def _short_error(task: Mapping[str, Any]) -> str | None:
    error = task.get("error")
    if error:
        return str(error)
    result = task.get("result")
    if isinstance(result, Mapping) and result.get("status") == "failure":
        metrics = result.get("metrics") or {}
        if isinstance(metrics, Mapping) and "failed" in metrics:
            parts = [f"{metrics.get(key)} {label}" for key, label in
                     (("failed", "failed"), ("errors", "error(s)")) if metrics.get(key)]
            return ", ".join(parts) or "failure"
        if isinstance(metrics, Mapping) and "return_code" in metrics:
            return f"exit code {metrics['return_code']}"
    return None


def task_detail(task: Mapping[str, Any]) -> str:
    """A readable multi-line view of one task document (``dtf tasks show``)."""
    lines = [f"{key + ':':<12} {_cell(task.get(key), 200)}" for key in
             ("task_id", "name", "type", "status", "priority", "worker_id", "attempts", "create_time",
              "start_time", "end_time", "batch_id", "error")]
    for key, label in (("submitter", "submitter"), ("group", "group"), ("preemptions", "preempted")):
        if task.get(key):
            lines.append(f"{label + ':':<12} {_cell(task.get(key), 200)}")
    if task.get("wait_reason"):
        lines.append(f"{'waiting:':<12} {_cell(task['wait_reason'], 300)}")
    lines.append(f"{'duration:':<12} {format_seconds(task_duration(task))}")
    lines.append(f"{'config:':<12} {json.dumps(task.get('config'), default=str)}")
    if task.get("requirements"):
        lines.append(f"{'requires:':<12} {json.dumps(task.get('requirements'), default=str)}")
    result = task.get("result")
    if isinstance(result, Mapping):
        lines.append(f"{'result:':<12} {result.get('status')} in {format_seconds(result.get('execution_time'))}")
        if result.get("metrics"):
            lines.append(f"{'metrics:':<12} {json.dumps(result.get('metrics'), default=str)}")
        for test in result.get("tests") or []:
            lines.append(f"  {str(test.get('outcome', '?')):<8} {test.get('nodeid')}  "
                         f"{format_seconds(test.get('duration'))}")
        if result.get("benchmarks"):
            lines.append(benchmarks_table(result["benchmarks"]))
        if result.get("output"):
            lines.append("output (tail):")
            lines.extend("  " + line for line in str(result["output"]).splitlines()[-20:])
    for line in task.get("log_tail") or []:
        lines.append(f"  log: {line}")
    return "\n".join(lines)


def benchmarks_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-configuration benchmark rows (latency percentiles, throughput, peak memory)."""
    return table([(b.get("model"), b.get("batch_size"), b.get("precision"), b.get("backend"),
                   b.get("latency_ms_p50"), b.get("latency_ms_p90"), b.get("throughput"), b.get("memory_peak_mb"))
                  for b in rows],
                 ("model", "batch", "precision", "backend", "p50 ms", "p90 ms", "items/s", "peak MB"))


def workers_table(workers: Sequence[Mapping[str, Any]]) -> str:
    """``dtf workers list``."""
    rows = []
    for w in workers:
        hardware = w.get("hardware") or []
        if w.get("simulated"):
            hardware = [*hardware, "(simulated)"]
        caps = w.get("capabilities")
        labels = caps.get("labels") if isinstance(caps, Mapping) and isinstance(caps.get("labels"), Mapping) else {}
        if labels.get("hardware_id"):
            hardware = [f"[{labels['hardware_id']}]", *hardware]
        host = w.get("hostname")
        if labels.get("name"):
            host = f"{host} ({labels['name']})" if host else labels["name"]
        status = w.get("status")
        quarantine = w.get("quarantine")
        if isinstance(quarantine, Mapping) and quarantine.get("state"):
            status = f"{status} ({quarantine['state']})"  # quarantined, canary or retired: why it gets no work
        elif w.get("drained"):
            status = f"{status} (drained)"
        rows.append((w.get("worker_id"), host, status, hardware,
                     f"{w.get('running', 0)}/{w.get('max_concurrent_tasks', '?')}", w.get("tags") or None,
                     w.get("last_heartbeat")))
    return table(rows, ("worker id", "host", "status", "hardware", "running", "tags", "last heartbeat"))


def counts_line(counts: Mapping[str, int], total: int) -> str:
    """``3/10 done  running 2  pending 5  completed 3`` — only states with tasks in them."""
    done = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
    parts = [f"{state} {counts[state]}" for state in STATE_ORDER if counts.get(state)]
    return (f"{done}/{total} done  " + "  ".join(parts)).rstrip()


class Progress:
    """A live progress line on a TTY (redrawn with ``\\r``), or a plain line per change otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""
        self._drawn = False

    def update(self, counts: Mapping[str, int], total: int, prefix: str = "") -> None:
        """Show the latest counts; a non-TTY stream only gets a line when they changed."""
        line = prefix + counts_line(counts, total)
        if self.live:
            done = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
            filled = int(self.width * done / total) if total else 0
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r\x1b[2K[{bar}] {line}")
            self.stream.flush()
            self._drawn = True
        elif line != self._last:
            self.stream.write(line + "\n")
            self.stream.flush()
        self._last = line

    def close(self) -> None:
        """End the live line so later output starts on a fresh line."""
        if self.live and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def aggregate_table(data: Mapping[str, Any]) -> str:
    """``dtf results --aggregate``: one row per group with every statistic the server returned."""
    groups = data.get("groups") or []
    if not groups:
        return "no results to aggregate"
    columns: list[str] = []
    for group in groups:
        for key in group:
            if key not in columns:
                columns.append(key)
    return table([[g.get(c) for c in columns] for g in groups], columns)


def results_table(results: Sequence[Mapping[str, Any]]) -> str:
    """``dtf results``: one row per stored result."""
    rows = [(r.get("result_id"), r.get("task_id"), r.get("worker_id"), r.get("status"),
             format_seconds(r.get("execution_time")), format_timestamp(r.get("timestamp")), _metrics_summary(r.get("metrics")))
            for r in results]
    return table(rows, ("result id", "task id", "worker", "status", "time", "timestamp", "metrics"))


def _metrics_summary(metrics: Any) -> str | None:
    if not isinstance(metrics, Mapping):
        return None
    parts = [f"{k}={_cell(v, 12)}" for k, v in metrics.items() if isinstance(v, int | float | str)]
    return " ".join(parts[:5]) or None
