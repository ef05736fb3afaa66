"""Tasks: a live, paged table of tasks with a filter (text, ``status:``, ``type:``) and sort orders.

The store may hold 100,000 tasks; the table holds one page of them (``PAGE_ROWS``). Newest-first with no
filter walks the store from its end and stops after the page, so the common case costs the page, not
the store; filters and other sort orders scan the store once per refresh that has changes.
"""

from __future__ import annotations

import bisect
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from dtf_app.live import LiveStore
from dtf_app.protocol import TASK_STATES, TASK_TYPES
from dtf_app.tui import format as fmt
from dtf_app.tui.messages import CancelTask, Changes, OpenTask
from dtf_app.tui.widgets.base import View

PAGE_ROWS = 100
SORTS = ("newest", "oldest", "status", "priority", "name")
# (label, key, width): fixed widths, because a cell updated in place never widens its column.
COLUMNS = (("id", "id", 12), ("name", "name", 26), ("type", "type", 9), ("status", "status", 13),
           ("prio", "priority", 4), ("worker", "worker_id", 10), ("att", "attempts", 3),
           ("created", "create_time", 8), ("took", "took", 7), ("result / error", "error", None))
# Below NARROW_WIDTH columns (an 80-column terminal) the table keeps what matters most, narrower, so
# nothing scrolls sideways (widths + 2 cells of padding each fit 78): priority, attempts and creation
# time are in the task's detail.
NARROW_WIDTH = 120
NARROW_COLUMNS = (("id", "id", 8), ("name", "name", 14), ("type", "type", 9), ("status", "status", 10),
                  ("worker", "worker_id", 6), ("took", "took", 6), ("result/error", "error", 10))


class FilterSpec:
    """``failed bert status:running,pending type:test``: words match id/name/worker/error, keys narrow."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.words: list[str] = []
        self.states: set[str] = set()
        self.types: set[str] = set()
        self.problems: list[str] = []
        for part in text.split():
            key, sep, value = part.partition(":")
            if sep and key in ("status", "state", "s"):
                wanted = {v for v in value.split(",") if v}
                bad = wanted - set(TASK_STATES)
                if bad:
                    self.problems.append(f"unknown state {', '.join(sorted(bad))} (states: {', '.join(TASK_STATES)})")
                self.states |= wanted & set(TASK_STATES)
            elif sep and key in ("type", "t"):
                wanted = {v for v in value.split(",") if v}
                bad = wanted - set(TASK_TYPES)
                if bad:
                    self.problems.append(f"unknown type {', '.join(sorted(bad))} (types: {', '.join(TASK_TYPES)})")
                self.types |= wanted & set(TASK_TYPES)
            else:
                self.words.append(part.lower())

    @property
    def empty(self) -> bool:
        return not (self.words or self.states or self.types)

    def matches(self, task: dict[str, Any]) -> bool:
        if self.states and task.get("status") not in self.states:
            return False
        if self.types and task.get("type") not in self.types:
            return False
        if self.words:
            hay = " ".join(str(task.get(k) or "") for k in ("task_id", "name", "worker_id", "error", "type")).lower()
            return all(word in hay for word in self.words)
        return True


def _entry(sort: str, task: dict[str, Any], ordinal: int) -> tuple[Any, ...]:
    """The sort key of a task in one order; ties go newest first."""
    if sort == "oldest":
        return (ordinal,)
    if sort == "status":
        return (_STATE_RANK.get(task.get("status"), 99), -ordinal)
    if sort == "priority":
        return (-(fmt.number(task.get("priority")) or 0), -ordinal)
    if sort == "name":
        return (str(task.get("name") or task.get("task_id") or ""), -ordinal)
    return (-ordinal,)


_STATE_RANK = {s: i for i, s in enumerate(fmt.STATE_ORDER)}


class TaskIndex:
    """The tasks matching one filter, in one order, kept up to date change by change.

    A full build sorts the store once (after a resync); afterwards each changed task costs a membership
    check and at most one bisect removal and insertion, so a refresh pays for what changed, not for the
    100,000 tasks the store may hold. Orders with few distinct leading keys (status, priority) keep one
    sorted list per key, so an insertion moves a bucket's worth of references rather than the whole index.
    """

    def __init__(self, store: LiveStore, spec: FilterSpec, sort: str) -> None:
        self.spec, self.sort = spec, sort
        self.bucketed = sort in ("status", "priority")
        self.generation = store.generation
        self.keys: dict[str, tuple[Any, ...]] = {}
        ordinals = store.ordinals
        for task_id, task in store.tasks.items():
            if spec.matches(task):
                self.keys[task_id] = (*_entry(sort, task, ordinals.get(task_id, 0)), task_id)
        self.buckets: dict[Any, list[tuple[Any, ...]]] = {}
        for entry in self.keys.values():
            self.buckets.setdefault(self._bucket(entry), []).append(entry)
        for entries in self.buckets.values():
            entries.sort()

    def _bucket(self, entry: tuple[Any, ...]) -> Any:
        return entry[0] if self.bucketed else None

    def update(self, store: LiveStore, changed: set[str]) -> bool:
        """Apply changed tasks; True when the order or membership changed."""
        moved = False
        ordinals = store.ordinals
        for task_id in changed:
            task = store.tasks.get(task_id)
            old = self.keys.get(task_id)
            new = ((*_entry(self.sort, task, ordinals.get(task_id, 0)), task_id)
                   if task is not None and self.spec.matches(task) else None)
            if old == new:
                continue
            moved = True
            if old is not None:
                entries = self.buckets.get(self._bucket(old), [])
                i = bisect.bisect_left(entries, old)
                if i < len(entries) and entries[i] == old:
                    del entries[i]
                del self.keys[task_id]
            if new is not None:
                bisect.insort(self.buckets.setdefault(self._bucket(new), []), new)
                self.keys[task_id] = new
        return moved

    def __len__(self) -> int:
        return len(self.keys)

    def page(self, page: int, rows: int) -> list[str]:
        skip, out = page * rows, []
        for bucket in sorted(self.buckets, key=lambda b: (b is None, b)):
            entries = self.buckets[bucket]
            if skip >= len(entries):
                skip -= len(entries)
                continue
            out.extend(entry[-1] for entry in entries[skip:skip + rows - len(out)])
            skip = 0
            if len(out) >= rows:
                break
        return out


def visible_tasks(store: LiveStore, spec: FilterSpec, sort: str, page: int,
                  rows: int = PAGE_ROWS) -> tuple[list[dict[str, Any]], int]:
    """The tasks of one page and how many match in all (a one-off index: tests and scripts)."""
    index = TaskIndex(store, spec, sort)
    return [store.tasks[t] for t in index.page(page, rows)], len(index)


def _cells(task: dict[str, Any], columns: tuple[tuple[str, str, int | None], ...] = COLUMNS) -> tuple[Any, ...]:
    """The cells of a task's row for these columns."""
    values = dict(zip([key for _, key, _ in COLUMNS], _all_cells(task), strict=True))
    return tuple(values[key] for _, key, _ in columns)


def _all_cells(task: dict[str, Any]) -> tuple[Any, ...]:
    result = task.get("result") if isinstance(task.get("result"), dict) else None
    if task.get("status") == "completed" and result is not None:
        # An earlier attempt's error (e.g. "worker lost") stays on the task; the row shows how it ended.
        tail = fmt.state(result.get("status"))
    elif task.get("error"):
        tail = str(task["error"]).splitlines()[0][:80] if str(task["error"]) else "-"
    elif result is not None:
        tail = fmt.state(result.get("status"))
    else:
        tail = "-"
    return (fmt.short_id(task.get("task_id")), str(task.get("name") or "-")[:26], str(task.get("type") or "-"),
            fmt.state(task.get("status")), str(task.get("priority", "-")), str(task.get("worker_id") or "-"),
            str(task.get("attempts") or 0), fmt.clock(task.get("create_time")), fmt.duration(task), tail)


class TasksView(View):
    """The task table; enter opens a task, ``c`` cancels it, ``/`` filters, ``o`` changes the order."""

    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("o", "cycle_sort", "Sort"),
        Binding("f", "cycle_state", "State"),
        Binding("c", "cancel_task", "Cancel task"),
        Binding("right_square_bracket", "page(1)", "Next page", show=False),
        Binding("left_square_bracket", "page(-1)", "Prev page", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = FilterSpec()
        self.sort = "newest"
        self.page = 0
        self._shown: list[str] = []
        self._store: LiveStore | None = None
        self._index: TaskIndex | None = None
        self.columns = COLUMNS

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: words status:failed,running type:test  (/ focus, esc leave)",
                    id="task-filter")
        yield Static(id="task-summary")
        table: DataTable = DataTable(id="task-table", cursor_type="row", zebra_stripes=True)
        for label, key, width in self.columns:
            table.add_column(label, key=key, width=width)
        yield table

    def on_resize(self, event: Any) -> None:
        if not event.size.width:
            return  # a hidden tab has no width: decide when it is shown, not before
        columns = NARROW_COLUMNS if event.size.width < NARROW_WIDTH else COLUMNS
        if columns is self.columns:
            return
        self.columns = columns
        table = self.query_one("#task-table", DataTable)
        table.clear(columns=True)
        for label, key, width in columns:
            table.add_column(label, key=key, width=width)
        self._changed()

    # -------------------------------------------------------------- refresh
    def refresh_view(self, store: LiveStore, changes: Changes) -> None:
        self._store = store
        index = self._index
        if (index is None or changes.full or index.generation != store.generation or index.spec is not self.spec
                or index.sort != self.sort):
            index = self._index = TaskIndex(store, self.spec, self.sort)
        elif changes.tasks:
            index.update(store, changes.tasks)
        total = len(index)
        if self.page * PAGE_ROWS >= total and self.page > 0:
            self.page = max(0, (total - 1) // PAGE_ROWS)
        page = [store.tasks[t] for t in index.page(self.page, PAGE_ROWS)]
        ids = [str(t.get("task_id")) for t in page]
        table = self.query_one("#task-table", DataTable)
        if ids != self._shown or changes.full:
            selected = self.selected_task_id()
            # At the top of the newest-first list the cursor follows new tasks (like a tail -f);
            # anywhere else it stays on the task it was on.
            follow = table.cursor_row == 0 and self.sort == "newest" and self.page == 0
            table.clear()
            for task, task_id in zip(page, ids, strict=True):
                table.add_row(*_cells(task, self.columns), key=task_id)
            self._shown = ids
            if selected in ids and not follow:
                table.move_cursor(row=ids.index(selected), animate=False, scroll=False)
        else:
            keys = [c for _, c, _ in self.columns]
            changed = changes.tasks & set(ids)
            for task_id in changed:
                for key, value in zip(keys, _cells(store.tasks[task_id], self.columns), strict=True):
                    table.update_cell(task_id, key, value)
            for task in page:  # running durations move with the clock
                if task.get("status") == "running" and task.get("task_id") not in changed:
                    table.update_cell(str(task["task_id"]), "took", fmt.duration(task))
        first = self.page * PAGE_ROWS + (1 if page else 0)
        if self.columns is NARROW_COLUMNS:
            summary = (f"{first:,}-{self.page * PAGE_ROWS + len(page):,} of {total:,} ({store.total_tasks:,} in "
                       f"the cluster) · {self.sort} · page {self.page + 1} ([ ])")
        else:
            summary = (f"{first:,}-{self.page * PAGE_ROWS + len(page):,} of {total:,} matching"
                       f" ({len(store.tasks):,} in view, {store.total_tasks:,} in the cluster) · order: {self.sort}"
                       f" · page {self.page + 1} ([ ])")
        if self.spec.problems:
            summary += " · " + "; ".join(self.spec.problems)
        self.query_one("#task-summary", Static).update(summary)

    def _changed(self) -> None:
        self._shown = []
        if self._store is not None:
            self.refresh_view(self._store, Changes(full=True))

    # -------------------------------------------------------------- actions
    def selected_task_id(self) -> str | None:
        table = self.query_one("#task-table", DataTable)
        if not table.row_count:
            return None
        try:
            key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        except Exception:  # noqa: BLE001 - an empty or shrinking table has no cursor row
            return None
        return str(key.value) if key.value else None

    def action_focus_filter(self) -> None:
        self.query_one("#task-filter", Input).focus()

    def action_cycle_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.page = 0
        self._changed()

    def action_cycle_state(self) -> None:
        """Cycle the state filter: all -> running -> pending -> failed -> completed -> all."""
        cycle = ["", "running", "pending", "failed", "completed", "cancelled"]
        current = ",".join(sorted(self.spec.states))
        nxt = cycle[(cycle.index(current) + 1) % len(cycle)] if current in cycle else ""
        words = [w for w in self.spec.text.split() if not w.startswith(("status:", "state:", "s:"))]
        text = " ".join(words + ([f"status:{nxt}"] if nxt else []))
        self.query_one("#task-filter", Input).value = text  # on_input_changed applies it

    def action_page(self, delta: int) -> None:
        self.page = max(0, self.page + delta)
        self._changed()

    def action_cancel_task(self) -> None:
        task_id = self.selected_task_id()
        if task_id:
            self.post_message(CancelTask(task_id))

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "task-filter":
            self.spec = FilterSpec(event.value)
            self.page = 0
            self._changed()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#task-table", DataTable).focus()

    def on_key(self, event: Any) -> None:
        if event.key == "escape" and self.query_one("#task-filter", Input).has_focus:
            self.query_one("#task-table", DataTable).focus()
            event.stop()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.post_message(OpenTask(str(event.row_key.value)))
