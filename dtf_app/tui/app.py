"""The DTF dashboard: a Textual app over a backend (embedded cluster, running cluster, or fixed data).

Data flows one way: the backend's trio side (guest mode on Textual's asyncio loop) keeps a
:class:`~dtf_app.live.LiveStore` current and posts :class:`LiveUpdate` messages; the app collects what
changed and refreshes the visible tab at most four times a second, so a burst of pushes costs one
refresh. Operations (submit, cancel, task detail, cluster, results) run in trio through the host and
come back as results or notifications, never as crashes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from dtf_app.live import Changed, Connection, LiveError, LiveEvent, LogLines, TrioHost
from dtf_app.tui.backend import Backend
from dtf_app.tui.messages import CancelTask, Changes, DrainWorker, LiveUpdate, OpenTask
from dtf_app.tui.screens.detail import TaskDetailScreen
from dtf_app.tui.screens.dialogs import ConfirmScreen, HelpScreen, SubmitScreen
from dtf_app.tui.widgets.base import View
from dtf_app.tui.widgets.cluster import ClusterView
from dtf_app.tui.widgets.overview import OverviewView
from dtf_app.tui.widgets.results import ResultsView
from dtf_app.tui.widgets.tasks import TasksView
from dtf_app.tui.widgets.workers import WorkersView

REFRESH_S = 0.25
REMOTE_REFRESH_S = 5.0
TABS = (("overview", "Overview", OverviewView), ("cluster", "Cluster", ClusterView),
        ("workers", "Workers", WorkersView), ("tasks", "Tasks", TasksView), ("results", "Results", ResultsView))


class DashApp(App[int]):
    """``dtf`` / ``dtf dash``: live cluster, workers, tasks and results."""

    CSS_PATH = "dash.tcss"
    TITLE = "DTF"
    # The focus is placed on purpose (each tab's table), so keys never land in a widget by accident.
    AUTO_FOCUS = None
    BINDINGS = [
        Binding("1", "show_tab('overview')", "Overview"),
        Binding("2", "show_tab('cluster')", "Cluster"),
        Binding("3", "show_tab('workers')", "Workers"),
        Binding("4", "show_tab('tasks')", "Tasks"),
        Binding("5", "show_tab('results')", "Results"),
        Binding("s", "submit", "Submit"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, backend: Backend, *, live: bool = True, clock: bool = True) -> None:
        super().__init__()
        self.show_clock = clock
        self.backend = backend
        self.store = backend.store
        self.live = live
        self.host = TrioHost()
        self.changes: dict[str, Changes] = {key: Changes() for key, _, _ in TABS}
        self.connection: Connection | None = None
        self.sub_title = backend.description
        self._stopping = False

    # -------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        yield Header(show_clock=self.show_clock)
        yield Static("", id="banner")
        with TabbedContent(initial="overview", id="tabs"):
            for key, title, view in TABS:
                with TabPane(f"{title} [{TABS.index((key, title, view)) + 1}]", id=key):
                    yield view(id=f"view-{key}")
        yield Footer()

    async def on_mount(self) -> None:
        self._show_banner()
        self.set_interval(REFRESH_S, self.refresh_views)
        self.set_interval(REMOTE_REFRESH_S, self.refresh_remote_now)
        if self.live:
            self.host.on_done = self._trio_done
            try:
                await self.backend.start(self.host, self._sink)
            except Exception as exc:  # noqa: BLE001 - shown to the user, the app stays up to say so
                self.notify(f"could not start: {exc}", severity="error", timeout=30)
        self.refresh_views()
        self._focus_table(self.active_tab())

    # -------------------------------------------------------------- data in
    def _sink(self, event: LiveEvent) -> None:
        self.post_message(LiveUpdate(event))

    def _trio_done(self, error: BaseException | None) -> None:
        if error is not None and not self._stopping:
            self.connection = Connection("refused", None, f"the dashboard's services stopped: {_describe(error)}")
            self._show_banner()

    def on_live_update(self, message: LiveUpdate) -> None:
        event = message.event
        if isinstance(event, Connection):
            previous = self.connection.state if self.connection else None
            self.connection = event
            self._show_banner()
            if event.state == "connected" and previous not in (None, "connected", "connecting"):
                self.notify(f"reconnected to {event.url}", timeout=4)
        elif isinstance(event, Changed):
            for changes in self.changes.values():
                changes.add(event.tasks, event.workers, event.resync)
            if event.resync:
                # A resync leaves ~100,000 long-lived dicts; frozen out of the collector's young generations,
                # a full collection no longer walks them (without this one refresh in a few took ~1 s).
                gc.freeze()
        elif isinstance(event, LogLines):
            screen = self.screen
            if isinstance(screen, TaskDetailScreen) and screen.task_id == event.task_id:
                screen.refresh_detail()

    def _show_banner(self) -> None:
        banner = self.query_one("#banner", Static)
        conn = self.connection
        if not self.live:
            banner.display = False
            return
        if conn is not None and conn.state == "connected":
            banner.display = False
            return
        banner.display = True
        if conn is None or conn.state == "connecting":
            text = Text(f" connecting to {conn.url if conn and conn.url else self.backend.description} ... ",
                        style="bold black on yellow")
        elif conn.state == "starting":
            text = Text(f" coordinator starting: {conn.message} ", style="bold black on yellow")
        elif conn.state == "refused":
            text = Text(f" refused: {conn.message} ", style="bold white on red")
        else:
            retry = f"; retrying in {conn.retry_in:g} s" if conn.retry_in is not None else ""
            text = Text(f" connection lost ({conn.message}){retry}; the rows below may be stale ",
                        style="bold white on red")
        banner.update(text)

    # -------------------------------------------------------------- refresh
    def active_tab(self) -> str:
        return self.query_one("#tabs", TabbedContent).active or "overview"

    def refresh_views(self) -> None:
        """Refresh the visible tab with what changed since it last refreshed (cheap when nothing did)."""
        if isinstance(self.screen, TaskDetailScreen):
            self.screen.refresh_detail()
        if self._stopping:
            return
        try:
            key = self.active_tab()
            view = self.query_one(f"#view-{key}", View)
        except NoMatches:  # the app is closing: its widgets are being removed
            return
        changes = self.changes[key]
        if changes.dirty or key in ("overview", "cluster", "results"):
            self.changes[key] = Changes(full=False)
            try:
                view.refresh_view(self.store, changes)
            except NoMatches:  # closing while refreshing: the view's children are already gone
                return

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_views()
        self._focus_table(self.active_tab())
        self.refresh_remote_now()

    def refresh_remote_now(self) -> None:
        """Fetch the HTTP-only data of the visible tab (cluster, results) in the background."""
        key = self.active_tab()
        if key == "cluster":
            self._fetch_remote("cluster")
        elif key == "results":
            self._fetch_remote("results")

    @work(exclusive=True, group="remote")
    async def _fetch_remote(self, key: str) -> None:
        client = self.backend.client
        if client is None:
            data = getattr(self.backend, f"{key}_info", None)
        else:
            try:
                if key == "cluster":
                    data = await self.host.call(client.cluster)
                else:
                    level = self.query_one("#view-results", ResultsView).level
                    data = await self.host.call(client.results_overview, level)
            except (LiveError, RuntimeError, NoMatches) as exc:
                self.log.warning(f"{key}: {exc}")
                return
        if not data or self._stopping:
            return
        try:
            view = self.query_one(f"#view-{key}", View)
            view.set_remote(key, data)
            view.refresh_view(self.store, Changes(full=False))
        except NoMatches:  # the app closed while the answer was on its way
            pass

    # -------------------------------------------------------------- actions
    def action_show_tab(self, key: str) -> None:
        if isinstance(self.screen, TaskDetailScreen):
            self.pop_screen()
        self.query_one("#tabs", TabbedContent).active = key
        self._focus_table(key)

    def _focus_table(self, key: str) -> None:
        # The tab's table takes the keys (enter, c, /, o ...), so its bindings show in the footer.
        tables = self.query_one(f"#view-{key}", View).query(DataTable)
        if tables:
            tables.first().focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_submit(self) -> None:
        self.push_screen(SubmitScreen(), self._submit_chosen)

    def _submit_chosen(self, choice: Any) -> None:
        if choice:
            self._submit(choice["tasks"], choice["path"])

    @work(group="ops")
    async def _submit(self, tasks: list[dict[str, Any]], path: str) -> None:
        try:
            client = self.backend.require_client()
            created = await self.host.call(client.submit, tasks)
        except (LiveError, RuntimeError) as exc:
            self.notify(f"submit failed: {getattr(exc, 'message', exc)}", severity="error", timeout=10)
            return
        count = len(created) if isinstance(created, list) else 1
        self.notify(f"submitted {count} task(s) from {path}", timeout=5)
        self.action_show_tab("tasks")

    def on_open_task(self, message: OpenTask) -> None:
        self.push_screen(TaskDetailScreen(message.task_id, self.store))

    def on_cancel_task(self, message: CancelTask) -> None:
        task = self.store.tasks.get(message.task_id, {})
        label = task.get("name") or message.task_id

        def chosen(yes: bool | None) -> None:
            if yes:
                self._cancel(message.task_id)

        self.push_screen(ConfirmScreen(f"Cancel task {label} ({task.get('status', '?')})?"), chosen)

    @work(group="ops")
    async def _cancel(self, task_id: str) -> None:
        try:
            client = self.backend.require_client()
            task = await self.host.call(client.cancel, task_id)
        except (LiveError, RuntimeError) as exc:
            self.notify(f"cancel failed: {getattr(exc, 'message', exc)}", severity="warning", timeout=8)
            return
        self.notify(f"task {task_id} is now {task.get('status') if isinstance(task, dict) else '?'}", timeout=5)

    @work(group="ops")
    async def on_drain_worker(self, message: DrainWorker) -> None:
        try:
            client = self.backend.require_client()
            await self.host.call(client.set_drain, message.worker_id, message.drained)
        except (LiveError, RuntimeError) as exc:
            self.notify(f"{'drain' if message.drained else 'enable'} failed: {getattr(exc, 'message', exc)}",
                        severity="warning", timeout=8)
            return
        self.notify(f"worker {message.worker_id} " + ("drained: it finishes its tasks and gets no new ones"
                                                      if message.drained else "enabled: it gets tasks again"),
                    timeout=5)

    @work(group="detail")
    async def fetch_detail(self, screen: TaskDetailScreen) -> None:
        """Read a task's detail, attempts and result rows for its screen (again when it finishes)."""
        client = self.backend.client
        if client is None:
            return
        task_id = screen.task_id
        detail = attempts = result = None
        try:
            detail = await self.host.call(client.task, task_id)
            attempts = await self.host.call(client.attempts, task_id)
            if isinstance(detail, dict) and detail.get("status") == "completed":
                result = await self.host.call(client.result, f"{task_id}-{detail.get('attempts')}")
        except (LiveError, RuntimeError) as exc:
            self.notify(f"task {task_id}: {getattr(exc, 'message', exc)}", severity="warning", timeout=6)
        if screen.is_attached:
            screen.set_fetched(detail, attempts, result)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for key, title, _ in TABS:
            yield SystemCommand(f"Show {title}", f"switch to the {title} view",
                                lambda key=key: self.action_show_tab(key))
        yield SystemCommand("Submit a task file", "submit tasks from a JSON task file", self.action_submit)
        yield SystemCommand("Help: key map", "every key binding of the dashboard", self.action_help)

    async def action_quit(self) -> None:
        """Stop cleanly: worker processes, then trio (the embedded coordinator flushes its store)."""
        if self._stopping:
            return
        self._stopping = True
        if self.live:
            self.notify("stopping ...", timeout=10)
            try:
                await self.backend.before_stop()
            finally:
                await self.host.stop()
        self.exit(0)


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in error.exceptions)
    return f"{type(error).__name__}: {error}"
