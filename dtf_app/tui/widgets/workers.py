"""Workers: hardware, GPU devices, cpu/memory/disk gauges, slots and load, status, last heartbeat."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from dtf_app.live import LiveStore
from dtf_app.tui import format as fmt
from dtf_app.tui.messages import Changes, DrainWorker
from dtf_app.tui.widgets.base import View

PAGE_ROWS = 100

# (label, key, width): fixed widths, because a cell updated in place never widens its column.
COLUMNS = (("worker", "worker", 14), ("host", "host", 16), ("status", "status", 8), ("hardware", "hardware", 16),
           ("gpus", "gpus", 22), ("cpu", "cpu", 13), ("memory", "memory", 13), ("disk", "disk", 13),
           ("slots", "slots", 5), ("health", "health", 8), ("current task", "current", 12),
           ("heartbeat", "heartbeat", 9))


def _cells(worker: dict[str, Any]) -> tuple[Any, ...]:
    health = worker.get("health") if isinstance(worker.get("health"), dict) else {}
    status_doc = worker.get("health_status") if isinstance(worker.get("health_status"), dict) else {}
    running = int(fmt.number(worker.get("running")) or 0)
    slots = int(fmt.number(worker.get("max_concurrent_tasks")) or 0)
    status = fmt.state("drained" if worker.get("drained") and worker.get("connected") else worker.get("status"))
    return (str(worker.get("worker_id") or "-")[:14], str(worker.get("hostname") or "-")[:16], status,
            fmt.hardware(worker), fmt.gpus(worker), fmt.gauge(health.get("cpu_percent"), 8),
            fmt.gauge(health.get("memory_percent"), 8), fmt.gauge(health.get("disk_percent"), 8),
            f"{running}/{slots}", fmt.state(status_doc.get("status")),
            fmt.short_id(worker.get("current_task")), fmt.clock(worker.get("last_heartbeat")))


class WorkersView(View):
    """One row per worker, a page of ``PAGE_ROWS`` at a time; a heartbeat rewrites only the cells it changed."""

    BINDINGS = [
        Binding("d", "drain(True)", "Drain"),
        Binding("e", "drain(False)", "Enable"),
        Binding("right_square_bracket", "page(1)", "Next page", show=False),
        Binding("left_square_bracket", "page(-1)", "Prev page", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: list[str] = []
        self._cells: dict[str, tuple[Any, ...]] = {}
        self._ids: list[str] = []
        self._known: set[str] = set()
        self._store: LiveStore | None = None
        self.page = 0

    def compose(self) -> ComposeResult:
        yield Static(id="workers-header")
        table: DataTable = DataTable(id="worker-table", cursor_type="row", zebra_stripes=True)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table

    def action_drain(self, drained: bool) -> None:
        table = self.query_one("#worker-table", DataTable)
        if not table.row_count:
            return
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        if key.value:
            self.post_message(DrainWorker(str(key.value), drained))

    def action_page(self, delta: int) -> None:
        self.page = max(0, self.page + delta)
        self._shown = []
        if self._store is not None:
            self.refresh_view(self._store, Changes(full=True))

    def refresh_view(self, store: LiveStore, changes: Changes) -> None:
        self._store = store
        table = self.query_one("#worker-table", DataTable)
        if changes.full or len(store.workers) != len(self._known) or not changes.workers <= self._known:
            self._ids = sorted(store.workers)  # a new or vanished worker: the order changes
            self._known = set(self._ids)
        pages = max(1, -(-len(self._ids) // PAGE_ROWS))
        self.page = min(self.page, pages - 1)
        ids = self._ids[self.page * PAGE_ROWS:(self.page + 1) * PAGE_ROWS]
        if ids != self._shown or changes.full:
            table.clear()
            self._cells = {}
            for worker_id in ids:
                cells = self._cells[worker_id] = _cells(store.workers[worker_id])
                table.add_row(*cells, key=worker_id)
            self._shown = ids
        else:
            keys = [c for _, c, _ in COLUMNS]
            for worker_id in changes.workers & set(ids):
                cells = _cells(store.workers[worker_id])
                old = self._cells.get(worker_id, ())
                for i, (key, value) in enumerate(zip(keys, cells, strict=True)):
                    if i >= len(old) or old[i] != value:
                        table.update_cell(worker_id, key, value)
                self._cells[worker_id] = cells
        connected = sum(1 for w in store.workers.values() if w.get("connected")) if changes.workers or changes.full \
            else self._connected
        self._connected = connected
        simulated = sum(1 for w in store.workers.values() if w.get("simulated")) if changes.full else self._simulated
        self._simulated = simulated
        text = f"{len(self._ids):,} worker(s), {connected:,} connected"
        if simulated:
            text += f" · {simulated:,} advertise SIMULATED hardware (sim)"
        if pages > 1:
            text += f" · page {self.page + 1} of {pages} ([ ])"
        self.query_one("#workers-header", Static).update(text)

    _connected = 0
    _simulated = 0
