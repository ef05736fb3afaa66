"""Overview: counts by state, throughput sparkline, worker summary, recent failures, alerts."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, Sparkline, Static

from dtf_app.live import THROUGHPUT_BUCKET_S, LiveStore
from dtf_app.tui import format as fmt
from dtf_app.tui.messages import Changes, OpenTask
from dtf_app.tui.widgets.base import View

FAILURES_SHOWN = 12


class OverviewView(View):
    """The first tab: is the cluster healthy and moving?"""

    def compose(self) -> ComposeResult:
        with Horizontal(id="overview-top"):
            with Vertical(id="counts-box", classes="box"):
                yield Label("Tasks", classes="box-title")
                yield Static(id="counts")
            with Vertical(id="workers-box", classes="box"):
                yield Label("Workers", classes="box-title")
                yield Static(id="workers-summary")
        with Vertical(id="throughput-box", classes="box"):
            yield Label("Throughput", id="throughput-label", classes="box-title")
            yield Sparkline([], id="throughput", summary_function=max)
        with Horizontal(id="overview-bottom"):
            with Vertical(id="failures-box", classes="box"):
                yield Label("Recent failures", classes="box-title")
                table: DataTable = DataTable(id="failures", cursor_type="row", zebra_stripes=True)
                table.add_columns("time", "task", "type", "attempts", "error")
                yield table
            with Vertical(id="alerts-box", classes="box"):
                yield Label("Alerts", classes="box-title")
                yield Static(id="alerts")

    def refresh_view(self, store: LiveStore, changes: Changes) -> None:
        store.tick()
        counts = store.counts()
        line = Text()
        # Two columns (active states | finished states), so the box fits an 80x24 terminal too.
        left, right = ("running", "assigned", "pending", "blocked"), ("completed", "failed", "cancelled", "unschedulable")
        for a, b in zip(left, right, strict=True):
            # 8 + 7 + 1 + 13 + 7 = 36 cells: one line per pair even in the half-width box of 80 columns.
            line += Text(f"{a:<8}", style="grey70") + Text(f"{counts.get(a, 0):>7,}", style=fmt.STATE_STYLES[a])
            line += Text(f" {b:<13}", style="grey70") + Text(f"{counts.get(b, 0):>7,}\n", style=fmt.STATE_STYLES[b])
        line += Text(f"{'total':<8}", style="bold") + Text(f"{counts.get('total', 0):>7,}", style="bold")
        self.query_one("#counts", Static).update(line)

        by_status: dict[str, int] = {}
        slots = running = 0
        for worker in store.workers.values():
            status = str(worker.get("status") or "unknown")
            by_status[status] = by_status.get(status, 0) + 1
            if worker.get("connected"):
                slots += int(fmt.number(worker.get("max_concurrent_tasks")) or 0)
                running += int(fmt.number(worker.get("running")) or 0)
        text = Text()
        for a, b in (("online", "busy"), ("error", "offline")):
            text += Text(f"{a:<8}", style="grey70") + Text(f"{by_status.get(a, 0):>6,}", style=fmt.STATE_STYLES[a])
            text += Text(f"   {b:<8}", style="grey70") + Text(f"{by_status.get(b, 0):>6,}\n", style=fmt.STATE_STYLES[b])
        text += Text(f"{'slots':<8}", style="grey70") + Text(f"{running:>6,} / {slots:,} in use\n")
        text += Text(f"{'load':<8}", style="grey70") + fmt.gauge(100 * running / slots if slots else None, 20)
        self.query_one("#workers-summary", Static).update(text)

        data = list(store.throughput)
        recent = sum(data[-5:]) / (5 * THROUGHPUT_BUCKET_S)
        self.query_one("#throughput", Sparkline).data = data
        self.query_one("#throughput-label", Label).update(
            f"Throughput: completions per {THROUGHPUT_BUCKET_S:g} s over the last "
            f"{len(data) * THROUGHPUT_BUCKET_S / 60:.0f} min · now {recent:.1f}/s · peak {max(data, default=0)}")

        table = self.query_one("#failures", DataTable)
        failures = list(store.recent_failures)[-FAILURES_SHOWN:][::-1]
        keys = [str(t.get("task_id")) for t in failures]
        if changes.full or keys != [str(k.value) for k in table.rows]:
            table.clear()
            for task in failures:
                error = str(task.get("error") or "-").splitlines()[0] if task.get("error") else "-"
                table.add_row(fmt.clock(task.get("end_time")), fmt.task_label(task), str(task.get("type") or "-"),
                              str(task.get("attempts") or 0), error[:120], key=str(task.get("task_id")))

        alerts = Text()
        for worker in store.workers.values():
            health = worker.get("health_status") if isinstance(worker.get("health_status"), dict) else {}
            for alert in health.get("alerts") or []:
                if isinstance(alert, dict):
                    alerts += Text(f"{worker.get('worker_id')}: ", style="bold") + Text(
                        f"{alert.get('message')}\n", style=fmt.STATE_STYLES.get(str(alert.get("severity")), ""))
        if counts.get("unschedulable"):
            alerts += Text(f"{counts['unschedulable']} task(s) no worker can run (unschedulable)\n", style="magenta")
        if not alerts:
            alerts = Text("no alerts", style="green")
        self.query_one("#alerts", Static).update(alerts)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.post_message(OpenTask(str(event.row_key.value)))
