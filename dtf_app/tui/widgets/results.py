"""Results: benchmark aggregates by hardware / model / batch size / precision, charts, anomalies, tests.

The data is DuckDB analytics over HTTP (``/api/results/aggregate`` and ``/anomalies``), fetched by the
app every few seconds while this tab is shown; ``l`` switches the aggregation level.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, Static

from dtf_app.live import LiveStore
from dtf_app.tui import format as fmt
from dtf_app.tui.messages import Changes
from dtf_app.tui.widgets.base import View

LEVELS = ("model", "hardware", "batch_size", "precision", "backend", "worker")
BAR_WIDTH = 30


def bar_chart(groups: list[dict[str, Any]], metric: str, unit: str, width: int = BAR_WIDTH) -> Text:
    """Horizontal bars of ``metric`` per group key; groups without the metric are listed as ``-``."""
    values = [(str(g.get("key")), fmt.number(g.get(metric))) for g in groups]
    top = max((v for _, v in values if v is not None), default=0.0)
    text = Text()
    label_width = min(24, max((len(k) for k, _ in values), default=4))
    for key, value in values:
        text += Text(f"{key[:label_width]:>{label_width}} ", style="grey70")
        if value is None or top <= 0:
            text += Text("-\n", style="grey50")
            continue
        filled = max(1, round(value / top * width))
        text += Text("█" * filled, style="cyan") + Text(f" {value:,.2f} {unit}\n")
    text.rstrip()  # no blank last line inside the box
    return text or Text("no benchmark results yet", style="grey50")


class ResultsView(View):
    """Aggregates table, throughput and latency charts, anomalies and test outcomes."""

    BINDINGS = [Binding("l", "cycle_level", "Level")]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.level = "model"
        self.info: dict[str, Any] = {}
        self._dirty = True

    def compose(self) -> ComposeResult:
        yield Static(id="results-header")
        table: DataTable = DataTable(id="aggregates", cursor_type="row", zebra_stripes=True)
        table.add_columns("key", "runs", "throughput mean", "p50", "stddev", "latency ms mean", "p50", "min",
                          "max", "peak MB")
        yield table
        with Horizontal(id="charts"):
            with Vertical(classes="box"):
                yield Label("Throughput (items/s, mean)", classes="box-title")
                yield Static(id="throughput-chart")
            with Vertical(classes="box"):
                yield Label("Latency (ms, mean)", classes="box-title")
                yield Static(id="latency-chart")
        with Horizontal(id="results-bottom"):
            with Vertical(classes="box"):
                yield Label("Anomalies (|z| > 2.5 within model/batch/precision/backend)", classes="box-title")
                yield Static(id="anomalies")
            with Vertical(classes="box"):
                yield Label("Test results by status", classes="box-title")
                yield Static(id="test-status")

    def action_cycle_level(self) -> None:
        self.level = LEVELS[(LEVELS.index(self.level) + 1) % len(LEVELS)]
        self.query_one("#results-header", Static).update(f"aggregation level: {self.level} (l: next) · loading ...")
        self.app.refresh_remote_now()  # type: ignore[attr-defined]

    def set_remote(self, key: str, data: Any) -> None:
        if key == "results" and isinstance(data, dict):
            self.info = data
            self._dirty = True

    def refresh_view(self, store: LiveStore, changes: Changes) -> None:
        if not self._dirty:
            return
        self._dirty = False
        info = self.info
        bench = info.get("benchmark") if isinstance(info.get("benchmark"), dict) else {}
        groups = [g for g in bench.get("groups") or [] if isinstance(g, dict)]
        self.query_one("#results-header", Static).update(
            f"aggregation level: {info.get('level', self.level)} (l: next) · {len(groups)} group(s)")
        table = self.query_one("#aggregates", DataTable)
        table.clear()
        for column in table.columns.values():
            # clear() keeps each column as wide as the widest value it ever held; size to what is shown now,
            # so the same data always draws the same way (whatever a refresh showed before).
            if column.auto_width:
                column.content_width = column.label.cell_len

        def num(value: Any, digits: int = 2) -> str:
            v = fmt.number(value)
            return "-" if v is None else f"{v:,.{digits}f}"

        for i, g in enumerate(groups):
            table.add_row(str(g.get("key")), str(g.get("count", "-")), num(g.get("throughput_mean")),
                          num(g.get("throughput_p50")), num(g.get("throughput_stddev")), num(g.get("latency_ms_mean"), 3),
                          num(g.get("latency_ms_p50"), 3), num(g.get("latency_ms_min"), 3),
                          num(g.get("latency_ms_max"), 3), num(g.get("memory_peak_mb_max"), 1), key=f"g{i}")
        self._pair("#throughput-chart", bar_chart(groups, "throughput_mean", "/s"),
                   "#latency-chart", bar_chart(groups, "latency_ms_mean", "ms"))
        anomalies = [a for a in info.get("anomalies") or [] if isinstance(a, dict)]
        text = Text()
        for a in anomalies[:12]:
            text += Text(f"{a.get('model')} bs={a.get('batch_size')} {a.get('precision')}: ", style="bold")
            text += Text(f"{a.get('metric')} {num(a.get('value'))} z={num(a.get('z_score'))} ({a.get('direction')})\n",
                         style="red" if a.get("direction") == "low" else "yellow")
        text.rstrip()
        anomalies_text = text or Text("none", style="green")
        tests = info.get("tests") if isinstance(info.get("tests"), dict) else {}
        text = Text()
        for g in tests.get("groups") or []:
            if isinstance(g, dict):
                text += Text(f"{str(g.get('key')):>10} ", style="grey70") + Text(
                    f"{g.get('passed', 0)} passed  {g.get('failed', 0)} failed  {g.get('error', 0)} error  "
                    f"{g.get('skipped', 0)} skipped\n")
        text.rstrip()
        self._pair("#anomalies", anomalies_text, "#test-status", text or Text("no test results yet", style="grey50"))

    def _pair(self, left_id: str, left: Text, right_id: str, right: Text) -> None:
        """Fill two boxes side by side, both as tall as the taller one (a ragged row looks broken)."""
        lines = max(len(left.plain.splitlines()) or 1, len(right.plain.splitlines()) or 1)
        for widget_id, text in ((left_id, left), (right_id, right)):
            widget = self.query_one(widget_id, Static)
            widget.styles.height = lines
            widget.update(text)
