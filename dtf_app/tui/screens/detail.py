"""Task detail: the task's fields, live log lines, attempts with their workers and errors, result, tests."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, RichLog, Static

from dtf_app.live import LiveStore
from dtf_app.tui import format as fmt


class TaskDetailScreen(Screen[None]):
    """Opened with enter on a task row; ``escape`` goes back, ``c`` cancels."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("c", "cancel", "Cancel task")]
    AUTO_FOCUS = "#log"

    def __init__(self, task_id: str, store: LiveStore) -> None:
        super().__init__()
        self.task_id = task_id
        self.store = store
        self._log_len = 0
        self._status: Any = None
        self.detail: dict[str, Any] = {}
        self.attempts: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="detail-top"):
            yield Static(id="detail-fields", classes="box")
            with Vertical(classes="box", id="detail-attempts-box"):
                yield Label("Attempts", classes="box-title")
                table: DataTable = DataTable(id="attempts", cursor_type="row")
                table.add_columns("#", "worker", "status", "started", "took", "error")
                yield table
        with Horizontal(id="detail-bottom"):
            with Vertical(classes="box", id="detail-log-box"):
                yield Label("Log (live)", classes="box-title")
                yield RichLog(id="log", max_lines=2000, wrap=False, highlight=False, markup=False)
            with Vertical(classes="box", id="detail-result-box"):
                yield Label("Result", classes="box-title")
                yield Static(id="result")
                table = DataTable(id="tests", cursor_type="row", zebra_stripes=True)
                table.add_columns("outcome", "test", "seconds")
                yield table
        yield Footer()

    @property
    def task(self) -> dict[str, Any]:
        return {**self.detail, **self.store.tasks.get(self.task_id, {})}

    def on_mount(self) -> None:
        self.title = f"task {self.task_id}"
        self.refresh_detail()
        self.app.fetch_detail(self)  # type: ignore[attr-defined]

    def action_cancel(self) -> None:
        from dtf_app.tui.messages import CancelTask

        self.app.post_message(CancelTask(self.task_id))

    def set_fetched(self, detail: dict[str, Any] | None, attempts: list[dict[str, Any]] | None,
                    result: dict[str, Any] | None) -> None:
        """What the app read over HTTP: the task (with ``log_tail``), its attempts, its result rows."""
        if isinstance(detail, dict):
            self.detail = detail
            lines = [str(x) for x in detail.get("log_tail") or []]
            known = self.store.logs.get(self.task_id)
            if lines and not known:
                try:
                    log = self.query_one("#log", RichLog)
                except NoMatches:  # the screen was closed while the read was on its way
                    return
                for line in lines:
                    log.write(line)
        if isinstance(attempts, list):
            self.attempts = [a for a in attempts if isinstance(a, dict)]
        if isinstance(result, dict):
            self.result = result
        self.refresh_detail()

    def refresh_detail(self) -> None:
        """Redraw from the live store; a no-op while the screen is being mounted or taken down."""
        try:
            self._refresh_detail()
        except NoMatches:
            # A refresh tick can land between a push and its compose, or during the pop: the widgets
            # are not (or no longer) there, and the next tick draws the whole screen anyway.
            pass

    def _refresh_detail(self) -> None:
        task = self.task
        if task.get("status") != self._status:
            # A new state means new attempts or a result to read (e.g. it just finished or was requeued).
            if self._status is not None and self.is_mounted:
                self.app.fetch_detail(self)  # type: ignore[attr-defined]
            self._status = task.get("status")
        text = Text()
        for label, value in (("id", task.get("task_id", self.task_id)), ("name", task.get("name")),
                             ("type", task.get("type")), ("priority", task.get("priority")),
                             ("worker", task.get("worker_id")), ("attempts", task.get("attempts")),
                             ("created", task.get("create_time")), ("started", task.get("start_time")),
                             ("ended", task.get("end_time")), ("took", fmt.duration(task))):
            text += Text(f"{label:<9} ", style="grey70") + Text(f"{value if value is not None else '-'}\n")
        text += Text(f"{'status':<9} ", style="grey70") + fmt.state(task.get("status")) + Text("\n")
        if task.get("error"):
            text += Text(f"{'error':<9} ", style="grey70") + Text(str(task["error"])[:500], style="red") + Text("\n")
        config = task.get("config")
        if isinstance(config, dict):
            text += Text(f"{'config':<9} ", style="grey70") + Text(json.dumps(config, default=str)[:300])
        self.query_one("#detail-fields", Static).update(text)

        table = self.query_one("#attempts", DataTable)
        table.clear()
        for a in self.attempts:
            table.add_row(str(a.get("attempt", "-")), str(a.get("worker_id") or "-"), fmt.state(a.get("status")),
                          fmt.clock(a.get("start_time")), f"{fmt.number(a.get('execution_time_seconds')) or 0:.2f}s",
                          str(a.get("error_message") or "")[:100])

        logs = self.store.logs.get(self.task_id)
        if logs is not None and len(logs) != self._log_len:
            log = self.query_one("#log", RichLog)
            new = list(logs)[self._log_len:] if len(logs) > self._log_len else list(logs)
            for line in new:
                log.write(line)
            self._log_len = len(logs)

        summary = task.get("result") if isinstance(task.get("result"), dict) else None
        rtext = Text()
        if summary:
            rtext += Text("status ", style="grey70") + fmt.state(summary.get("status"))
            rtext += Text(f"   in {fmt.number(summary.get('execution_time')) or 0:.2f}s\n")
            metrics = summary.get("metrics") if isinstance(summary.get("metrics"), dict) else {}
            for key, value in list(metrics.items())[:8]:
                rtext += Text(f"{key}: ", style="grey70") + Text(f"{value}\n")
        else:
            rtext += Text("no result yet", style="grey50")
        if self.result:
            for row in (self.result.get("benchmarks") or [])[:10]:
                if isinstance(row, dict):
                    rtext += Text(f"bs={row.get('batch_size')} {row.get('precision')}: "
                                  f"{fmt.number(row.get('throughput')) or 0:,.1f}/s, "
                                  f"{fmt.number(row.get('latency_ms_mean')) or 0:.3f} ms\n")
        self.query_one("#result", Static).update(rtext)
        tests = self.query_one("#tests", DataTable)
        rows = [r for r in (self.result or {}).get("tests") or [] if isinstance(r, dict)]
        if tests.row_count != len(rows):
            # Columns sized from the rows here: DataTable widens auto-width columns only when the app goes
            # idle, which a busy dashboard may not do for a long while (node ids were seen cut to "test").
            cells = [(str(row.get("outcome")), str(row.get("nodeid")), f"{fmt.number(row.get('duration')) or 0:.3f}")
                     for row in rows]
            tests.clear(columns=True)
            for index, label in enumerate(("outcome", "test", "seconds")):
                tests.add_column(label, width=max([len(label), *(len(c[index]) for c in cells)]))
            for outcome, nodeid, seconds in cells:
                style = "green" if outcome == "passed" else "red" if outcome in ("failed", "error") else "yellow"
                tests.add_row(Text(outcome, style=style), nodeid, seconds)
