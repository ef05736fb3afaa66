"""Workers: hardware, GPU devices, cpu/memory/disk gauges, slots and load, status, last heartbeat."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from dtf_app.live import LiveStore
from dtf_app.tui import format as fmt
from dtf_app.tui.messages import Changes
from dtf_app.tui.widgets.base import View

# (label, key, width): fixed widths, because a cell updated in place never widens its column.
COLUMNS = (("worker", "worker", 14), ("host", "host", 16), ("status", "status", 7), ("hardware", "hardware", 16),
           ("gpus", "gpus", 22), ("cpu", "cpu", 13), ("memory", "memory", 13), ("disk", "disk", 13),
           ("slots", "slots", 5), ("health", "health", 8), ("current task", "current", 12),
           ("heartbeat", "heartbeat", 9))


def _cells(worker: dict[str, Any]) -> tuple[Any, ...]:
    health = worker.get("health") if isinstance(worker.get("health"), dict) else {}
    status_doc = worker.get("health_status") if isinstance(worker.get("health_status"), dict) else {}
    running = int(fmt.number(worker.get("running")) or 0)
    slots = int(fmt.number(worker.get("max_concurrent_tasks")) or 0)
    return (str(worker.get("worker_id") or "-")[:14], str(worker.get("hostname") or "-")[:16], fmt.state(worker.get("status")),
            fmt.hardware(worker), fmt.gpus(worker), fmt.gauge(health.get("cpu_percent"), 8),
            fmt.gauge(health.get("memory_percent"), 8), fmt.gauge(health.get("disk_percent"), 8),
            f"{running}/{slots}", fmt.state(status_doc.get("status")),
            fmt.short_id(worker.get("current_task")), fmt.clock(worker.get("last_heartbeat")))


class WorkersView(View):
    """One row per worker, updated cell by cell as heartbeats and registrations arrive."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(id="workers-header")
        table: DataTable = DataTable(id="worker-table", cursor_type="row", zebra_stripes=True)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table

    def refresh_view(self, store: LiveStore, changes: Changes) -> None:
        table = self.query_one("#worker-table", DataTable)
        ids = sorted(store.workers)
        if ids != self._shown or changes.full:
            table.clear()
            for worker_id in ids:
                table.add_row(*_cells(store.workers[worker_id]), key=worker_id)
            self._shown = ids
        else:
            keys = [c for _, c, _ in COLUMNS]
            for worker_id in changes.workers & set(ids):
                for key, value in zip(keys, _cells(store.workers[worker_id]), strict=True):
                    table.update_cell(worker_id, key, value)
        connected = sum(1 for w in store.workers.values() if w.get("connected"))
        simulated = sum(1 for w in store.workers.values() if w.get("simulated"))
        text = f"{len(ids):,} worker(s), {connected:,} connected"
        if simulated:
            text += f" · {simulated:,} advertise SIMULATED hardware (sim)"
        self.query_one("#workers-header", Static).update(text)
