"""``dtf report --html FILE``: one self-contained HTML file with inline SVG charts (no network to view it).

It draws the document of ``GET /api/report`` (:mod:`dtf_app.store.report_data`): task states, worker
states, a histogram of execution times, worker performance, benchmark throughput trends per hardware
class with regressions marked, the slowest and the flakiest tests. Everything is escaped; there is no
script and nothing is loaded from anywhere.
"""

from __future__ import annotations

import html
import time
from typing import Any

STATE_COLOURS = {"completed": "#2e7d32", "running": "#1565c0", "assigned": "#42a5f5", "pending": "#9e9e9e",
                 "blocked": "#795548", "unschedulable": "#ff8f00", "failed": "#c62828", "cancelled": "#6d4c41",
                 "online": "#2e7d32", "offline": "#9e9e9e"}
ACCENT = "#3949ab"
BAD = "#c62828"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:,.{max(0, digits - 1)}f}"
    return str(value)


def bar_chart(items: list[tuple[str, float, str]], *, width: int = 520, unit: str = "") -> str:
    """Horizontal bars: (label, value, colour)."""
    if not items:
        return '<p class="empty">no data</p>'
    row, label_w = 24, 170
    top = max(v for _, v, _ in items) or 1.0
    height = row * len(items) + 8
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, value, colour) in enumerate(items):
        y = 4 + i * row
        w = max(1.0, (width - label_w - 80) * value / top)
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{colour}">'
                     f'<title>{_e(label)}: {_e(_fmt(value))}{_e(unit)}</title></rect>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{_e(_fmt(value))}{_e(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(bins: list[dict[str, Any]], *, width: int = 520, height: int = 180) -> str:
    """Vertical bars over logarithmic duration bins."""
    if not bins:
        return '<p class="empty">no executions recorded</p>'
    pad_l, pad_b = 40, 34
    top = max(b["count"] for b in bins) or 1
    bar_w = (width - pad_l - 10) / len(bins)
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             'xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - 5}" y2="{height - pad_b}" stroke="#888"/>',
             f'<text x="4" y="14">{top}</text>']
    for i, b in enumerate(bins):
        h = (height - pad_b - 20) * b["count"] / top
        x = pad_l + i * bar_w
        parts.append(f'<rect x="{x + 1:.1f}" y="{height - pad_b - h:.1f}" width="{max(1.0, bar_w - 2):.1f}" '
                     f'height="{h:.1f}" fill="{ACCENT}"><title>{_fmt(b["from_s"])}-{_fmt(b["to_s"])} s: '
                     f'{b["count"]}</title></rect>')
        if i % max(1, len(bins) // 6) == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - pad_b + 14}" class="small">{_e(_fmt(b["from_s"], 2))}s</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 4}" class="small">execution time (log scale)</text></svg>')
    return "".join(parts)


def trend_chart(series: dict[str, Any], *, width: int = 520, height: int = 170) -> str:
    """Throughput over time for one configuration; a regression shades the recent window in red."""
    points = series["points"]
    if len(points) < 2:
        return '<p class="empty">one point so far</p>'
    pad_l, pad_r, pad_t, pad_b = 56, 10, 10, 22
    ts = [p[0] for p in points]
    vs = [p[1] for p in points]
    t0, t1 = min(ts), max(ts)
    lo, hi = min(vs), max(vs)
    if hi == lo:
        lo, hi = lo * 0.95, hi * 1.05 + 1e-9
    span = (t1 - t0) or 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        return (pad_l + (width - pad_l - pad_r) * (t - t0) / span,
                pad_t + (height - pad_t - pad_b) * (1 - (v - lo) / (hi - lo)))

    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             'xmlns="http://www.w3.org/2000/svg">']
    regression = series.get("regression")
    if regression:
        recent = ts[-int(regression["recent_count"]):]
        x_start = xy(recent[0], lo)[0] - 4
        parts.append(f'<rect x="{x_start:.1f}" y="{pad_t}" width="{width - pad_r - x_start:.1f}" '
                     f'height="{height - pad_t - pad_b}" fill="{BAD}" opacity="0.12"/>')
        base_y = xy(t0, regression["baseline_mean"])[1]
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{base_y:.1f}" y2="{base_y:.1f}" '
                     f'stroke="{BAD}" stroke-dasharray="4 3"/>'
                     f'<text x="{width - pad_r - 4}" y="{height - pad_b - 6}" text-anchor="end" class="bad">'
                     f'REGRESSION {regression["change"]:+.1%} (p={regression["p_value"]:.1g})</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(xy(t, v) for t, v in points))
    parts.append(f'<path d="{path}" fill="none" stroke="{ACCENT}" stroke-width="1.5"/>')
    for t, v in points:
        x, y = xy(t, v)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="{ACCENT}"><title>'
                     f'{_e(time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)))}: {_e(_fmt(v))}/s</title></circle>')
    parts.append(f'<text x="4" y="{pad_t + 8}" class="small">{_e(_fmt(hi))}</text>'
                 f'<text x="4" y="{height - pad_b}" class="small">{_e(_fmt(lo))}</text>'
                 f'<text x="{pad_l}" y="{height - 6}" class="small">'
                 f'{_e(time.strftime("%Y-%m-%d %H:%M", time.gmtime(t0)))}</text>'
                 f'<text x="{width - pad_r}" y="{height - 6}" class="small" text-anchor="end">'
                 f'{_e(time.strftime("%Y-%m-%d %H:%M", time.gmtime(t1)))}</text></svg>')
    return "".join(parts)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return '<p class="empty">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: dict[str, Any], *, title: str = "DTF report", source: str = "") -> str:
    """The whole report as one HTML document."""
    tasks = sorted(data.get("tasks", {}).items(), key=lambda kv: -kv[1])
    workers = data.get("workers") or []
    worker_states: dict[str, int] = {}
    for w in workers:
        worker_states[w.get("status") or "unknown"] = worker_states.get(w.get("status") or "unknown", 0) + 1
    perf = data.get("worker_performance") or []
    trends = data.get("benchmark_trends") or []
    regressions = data.get("regressions") or []
    sections = [
        ("Task states", bar_chart([(s, float(n), STATE_COLOURS.get(s, ACCENT)) for s, n in tasks])),
        ("Worker states", bar_chart([(s, float(n), STATE_COLOURS.get(s, ACCENT)) for s, n in worker_states.items()])
         + _table(["worker", "status", "hardware", "slots", "simulated"],
                  [[w["worker_id"], w.get("status"), w.get("hardware"), w.get("max_concurrent_tasks"),
                    "yes" if w.get("simulated") else ""] for w in workers])),
        ("Execution time histogram", histogram(data.get("duration_histogram") or [])),
        ("Worker performance (mean execution time, s)",
         bar_chart([(p["worker_id"], float(p["mean_s"] or 0.0), ACCENT) for p in perf], unit=" s")
         + _table(["worker", "executions", "success rate", "mean s", "p50 s", "p95 s"],
                  [[p["worker_id"], p["executions"], p["success_rate"], p["mean_s"], p["p50_s"], p["p95_s"]]
                   for p in perf])),
    ]
    trend_html = []
    for series in trends:
        name = (f'{series["model"]} batch {series["batch_size"]} {series["precision"]} {series["backend"]} '
                f'on {series["hardware"]}')
        flag = ' <span class="bad">regressed</span>' if series.get("regression") else ""
        trend_html.append(f'<div class="trend"><h3>{_e(name)}{flag}</h3>{trend_chart(series)}</div>')
    sections.append((f"Benchmark throughput trends ({len(regressions)} regression"
                     f"{'s' if len(regressions) != 1 else ''})",
                     "".join(trend_html) or '<p class="empty">no benchmark results</p>'))
    sections.append(("Regressions", _table(
        ["model", "batch", "precision", "backend", "hardware", "baseline", "recent", "change", "p"],
        [[r["model"], r["batch_size"], r["precision"], r["backend"], r["hardware"], r["baseline_mean"],
          r["recent_mean"], f'{r["change"]:+.1%}', r["p_value"]] for r in regressions])))
    sections.append(("Slowest tests", _table(["test", "runs", "mean s", "max s"],
                                             [[t["nodeid"], t["runs"], t["mean_s"], t["max_s"]]
                                              for t in data.get("slowest_tests") or []])))
    sections.append(("Flakiest tests", _table(["test", "runs", "failures", "passes", "flips", "failure rate"],
                                              [[t["nodeid"], t["runs"], t["failures"], t["passes"], t["flips"],
                                                t["failure_rate"]] for t in data.get("flaky_tests") or []])))
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    body = "".join(f"<section><h2>{_e(name)}</h2>{content}</section>" for name, content in sections)
    total = sum(n for _, n in tasks)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; background: #fafafa; }}
h1 {{ margin: 0 0 4px; }} .meta {{ color: #666; margin-bottom: 16px; }}
main {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 16px; }}
section {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px 16px; overflow-x: auto; }}
h2 {{ font-size: 16px; margin: 0 0 8px; }} h3 {{ font-size: 13px; margin: 8px 0 2px; }}
table {{ border-collapse: collapse; margin-top: 8px; font-size: 12px; }}
th, td {{ border-bottom: 1px solid #eee; padding: 3px 8px; text-align: left; }}
svg text {{ font-size: 12px; fill: #333; }} svg text.small {{ font-size: 10px; fill: #666; }}
.bad, svg text.bad {{ color: {BAD}; fill: {BAD}; font-weight: 600; }} .empty {{ color: #888; }}
</style></head><body>
<h1>{_e(title)}</h1>
<div class="meta">{total} tasks, {len(workers)} workers, {len(regressions)} regressions; generated {generated}
{(" from " + _e(source)) if source else ""}</div>
<main>{body}</main></body></html>
"""


def status_png(data: dict[str, Any], *, width: int = 640, height: int = 240) -> bytes:
    """The source design's single status image: task states as bars, workers online/offline, as a PNG.

    Drawn pixel by pixel into an RGB buffer and encoded with zlib (no imaging library needed).
    """
    import struct
    import zlib

    pixels = bytearray(b"\xfa" * (width * height * 3))

    def rect(x0: int, y0: int, x1: int, y1: int, colour: str) -> None:
        r, g, b = int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
        for y in range(max(0, y0), min(height, y1)):
            row = (y * width) * 3
            for x in range(max(0, x0), min(width, x1)):
                i = row + x * 3
                pixels[i:i + 3] = bytes((r, g, b))

    tasks = sorted((data.get("tasks") or {}).items(), key=lambda kv: -kv[1])
    top = max([n for _, n in tasks] or [1]) or 1
    bar_h = max(6, min(28, (height - 80) // max(1, len(tasks))))
    for i, (state, n) in enumerate(tasks):
        y = 20 + i * (bar_h + 6)
        rect(20, y, 20 + int((width - 200) * n / top), y + bar_h, STATE_COLOURS.get(state, ACCENT))
    workers = data.get("workers") or []
    for i, w in enumerate(workers[:40]):
        x = 20 + i * 14
        rect(x, height - 40, x + 10, height - 20, STATE_COLOURS.get(w.get("status") or "offline", "#9e9e9e"))
    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_junit(rows: list[dict[str, Any]], path: str) -> int:
    """Write JUnit XML for per-test rows with pytest's own writer (``_pytest.junitxml.LogXML``).

    Rows of ``dtf pytest`` chunks carry pytest's serialized reports, which are replayed as they are (the
    file then matches what ``pytest --junitxml`` writes); rows of other test tasks (outcome, duration,
    message) become equivalent reports. Returns the number of tests written. Needs pytest installed.
    """
    from _pytest.junitxml import LogXML
    from _pytest.reports import TestReport

    from dtf_app.pytest_dist.chunks import expand_reports

    xml = LogXML(path, None, family="xunit2")
    xml.pytest_sessionstart()
    for row in rows:
        packed = row.get("report") or {}
        if packed.get("r"):
            reports = []
            for data in expand_reports(row["nodeid"], packed["r"]):
                report = TestReport._from_json(data)
                if isinstance(report.longrepr, list):
                    report.longrepr = tuple(report.longrepr)
                reports.append(report)
        else:
            reports = _reports_from_row(row, TestReport)
        for report in reports:
            xml.pytest_runtest_logreport(report)
    xml.pytest_sessionfinish()
    return len(rows)


def _reports_from_row(row: dict[str, Any], report_type: Any) -> list[Any]:
    nodeid = str(row["nodeid"])
    path = nodeid.split("::", 1)[0]
    location = (path, None, nodeid.split("::", 1)[-1].replace("::", "."))
    outcome, message = row.get("outcome") or "passed", row.get("message") or ""
    duration = float(row.get("duration") or 0.0)

    def make(when: str, state: str, longrepr: Any = None, **extra: Any) -> Any:
        report = report_type(nodeid, location, {}, state, longrepr, when, duration=duration if when == "call" else 0.0)
        for key, value in extra.items():
            setattr(report, key, value)
        return report

    if outcome == "error":
        return [make("setup", "failed", message or "error"), make("teardown", "passed")]
    if outcome == "skipped":
        return [make("setup", "skipped", (path, 0, f"Skipped: {message}")), make("teardown", "passed")]
    steps = [make("setup", "passed")]
    if outcome == "failed":
        steps.append(make("call", "failed", message or "failed"))
    elif outcome == "xfailed":
        steps.append(make("call", "skipped", None, wasxfail=message))
    elif outcome == "xpassed":
        steps.append(make("call", "passed", None, wasxfail=message))
    else:
        steps.append(make("call", "passed"))
    return [*steps, make("teardown", "passed")]


__all__ = ["bar_chart", "histogram", "render_html", "status_png", "trend_chart", "write_junit"]
