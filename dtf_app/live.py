"""The dashboard's live-data layer: cluster state kept current from ``/ws`` pushes and HTTP reads.

Never imports Textual (like frogmouth's ``data/``): the TUI renders what this keeps, tests drive it
against a real coordinator without a screen, and outside programs may use it as an async client.

- :class:`LiveStore` is plain state: tasks, workers, status counts, live log lines, throughput. It
  applies a push only when the push is at least as new as the row (``index`` of the push vs. the
  ``applied_index`` of the read that produced the row), so an update racing a read never rolls a row back.
- :class:`LiveClient` (trio) keeps the store in sync: it finds the leader among a list of coordinator
  URLs (a 503 from ``/status`` means "starting, retry"; a 307/421 or ``not_leader`` answer is followed),
  subscribes to ``task_updates`` and ``worker_updates`` over ``/ws``, then reads a fresh snapshot over
  HTTP in pages. On a lost connection it reconnects with backoff; after a reconnect or a
  ``missed_updates`` notice it resyncs from a fresh read instead of showing stale rows. Every change is
  reported to a ``sink`` callable as a small event (:class:`Connection`, :class:`Changed`, ...).
- :class:`TrioHost` runs trio as a guest on a running asyncio loop (Textual's), so the trio client
  and an embedded trio coordinator live inside the TUI process (DESIGN.md §9).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

log = logging.getLogger("dtf.live")

CHANNELS = ("task_updates", "worker_updates")
PAGE_SIZE = 5_000
MAX_TASKS = 100_000
LOG_LINES_KEPT = 500
LOGS_KEPT = 1_000
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
THROUGHPUT_BUCKET_S = 2.0
THROUGHPUT_BUCKETS = 60
RECENT_FAILURES = 50
TERMINAL = frozenset({"completed", "failed", "cancelled"})


# ---------------------------------------------------------------------- events (what the sink receives)
@dataclass(frozen=True)
class Connection:
    """The link to the cluster changed: ``state`` is connecting | starting | connected | lost | refused."""

    state: str
    url: str | None = None
    message: str = ""
    retry_in: float | None = None


@dataclass(frozen=True)
class Changed:
    """Rows changed: task ids and worker ids (``resync`` True when the whole store was reloaded)."""

    tasks: frozenset[str] = frozenset()
    workers: frozenset[str] = frozenset()
    resync: bool = False


@dataclass(frozen=True)
class LogLines:
    """Live log lines of a running task."""

    task_id: str
    lines: tuple[str, ...]


LiveEvent = Connection | Changed | LogLines


class LiveError(Exception):
    """An API call failed; ``status`` is the HTTP status when there was an answer, ``code`` its error code."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


# ---------------------------------------------------------------------- the store
def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass
class LiveStore:
    """What the dashboard shows, kept current by :class:`LiveClient` (or filled directly by tests)."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, deque[str]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    ordinals: dict[str, int] = field(default_factory=dict)
    """Position of each task in creation order (stable), so views can keep sorted indexes incrementally."""
    generation: int = 0
    """Bumped by every ``load``: an index built on an older generation must be rebuilt."""
    worker_versions: dict[str, int] = field(default_factory=dict)
    recent_failures: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_FAILURES))
    throughput: deque[int] = field(default_factory=lambda: deque([0] * THROUGHPUT_BUCKETS, maxlen=THROUGHPUT_BUCKETS))
    total_tasks: int = 0
    applied_index: int = 0
    synced_at: float | None = None
    clock: Callable[[], float] = time.monotonic
    """Monotonic seconds for the throughput buckets (a test pins it to render the same picture every time)."""
    _bucket_started: float | None = None

    # -------------------------------------------------------------- reads
    def counts(self) -> dict[str, int]:
        """Tasks per state: the coordinator's counts when known (they cover tasks beyond MAX_TASKS)."""
        counts = _as_dict(self.status.get("tasks"))
        if counts:
            return {k: int(v) for k, v in counts.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        out: dict[str, int] = {}
        for task in self.tasks.values():
            state = str(task.get("status"))
            out[state] = out.get(state, 0) + 1
        out["total"] = len(self.tasks)
        return out

    def tick(self, now: float | None = None) -> None:
        """Advance the throughput buckets to ``now`` (monotonic seconds)."""
        now = self.clock() if now is None else now
        if self._bucket_started is None:
            self._bucket_started = now
        while now - self._bucket_started >= THROUGHPUT_BUCKET_S:
            self.throughput.append(0)
            self._bucket_started += THROUGHPUT_BUCKET_S

    # -------------------------------------------------------------- writes
    def load(self, tasks: Iterable[tuple[dict[str, Any], int]], workers: Iterable[dict[str, Any]],
             workers_index: int, status: Mapping[str, Any], total: int) -> None:
        """Replace everything with a fresh read: (task, applied_index of its page) pairs, workers, status."""
        new_tasks: dict[str, dict[str, Any]] = {}
        versions: dict[str, int] = {}
        for task, index in tasks:
            task_id = task.get("task_id")
            if isinstance(task_id, str):
                new_tasks[task_id] = task
                versions[task_id] = index
        self.tasks, self.versions = new_tasks, versions
        self.ordinals = {task_id: i for i, task_id in enumerate(new_tasks)}
        self.generation += 1
        self.workers = {w["worker_id"]: w for w in workers if isinstance(w, dict) and isinstance(w.get("worker_id"), str)}
        self.worker_versions = dict.fromkeys(self.workers, workers_index)
        self.status = dict(status)
        self.total_tasks = total
        self.applied_index = max([workers_index, *versions.values()]) if versions else workers_index
        self.recent_failures.clear()
        for task in sorted(new_tasks.values(), key=lambda t: str(t.get("end_time") or "")):
            if task.get("status") == "failed":
                self.recent_failures.append(task)
        self.logs = {k: v for k, v in self.logs.items() if k in new_tasks}
        self.synced_at = time.time()

    def apply(self, push: Mapping[str, Any]) -> tuple[str, str] | None:
        """Apply one ``/ws`` push; returns ("task"|"worker"|"log", id) when something changed, else None."""
        kind = push.get("type")
        index = push.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else None
        if kind == "task_update":
            task = push.get("task")
            task = dict(task) if isinstance(task, dict) else {}
            task_id = task.get("task_id") or push.get("task_id")
            if not isinstance(task_id, str):
                return None
            for key in ("status", "worker_id"):  # the source shape: these at the top level
                if key not in task and key in push:
                    task[key] = push[key]
            task["task_id"] = task_id
            if index is not None and index < self.versions.get(task_id, -1):
                return None  # older than what a read already showed
            previous = self.tasks.get(task_id)
            old_state = previous.get("status") if previous else None
            if previous is None:
                self.ordinals[task_id] = len(self.ordinals)
            self.tasks[task_id] = {**previous, **task} if previous and not push.get("task") else task
            if index is not None:
                self.versions[task_id] = index
                self.applied_index = max(self.applied_index, index)
            new_state = task.get("status")
            if previous is None:
                self.total_tasks += 1
            if old_state != new_state:
                self._count_transition(old_state, new_state)
                if new_state == "completed":
                    self.tick()
                    self.throughput[-1] += 1
                elif new_state == "failed":
                    self.recent_failures.append(self.tasks[task_id])
            return ("task", task_id)
        if kind == "worker_update":
            worker = push.get("worker")
            worker_id = push.get("worker_id") or _as_dict(worker).get("worker_id")
            if not isinstance(worker_id, str):
                return None
            if index is not None and index < self.worker_versions.get(worker_id, -1):
                return None
            if isinstance(worker, dict):
                self.workers[worker_id] = worker
            elif worker_id in self.workers and push.get("status"):
                self.workers[worker_id] = {**self.workers[worker_id], "status": push["status"]}
            else:
                return None
            if index is not None:
                self.worker_versions[worker_id] = index
            return ("worker", worker_id)
        if kind == "task_log":
            task_id = push.get("task_id")
            lines = push.get("lines")
            if not isinstance(task_id, str) or not isinstance(lines, list):
                return None
            if task_id not in self.logs and len(self.logs) >= LOGS_KEPT:
                self.logs.pop(next(iter(self.logs)))  # the oldest task's lines go first
            self.logs.setdefault(task_id, deque(maxlen=LOG_LINES_KEPT)).extend(str(line) for line in lines)
            return ("log", task_id)
        return None

    def _count_transition(self, old: Any, new: Any) -> None:
        counts = self.status.get("tasks")
        if not isinstance(counts, dict):
            return
        if isinstance(old, str) and isinstance(counts.get(old), int):
            counts[old] = max(0, counts[old] - 1)
        if isinstance(new, str):
            counts[new] = int(counts.get(new) or 0) + 1
        if old is None:
            counts["total"] = int(counts.get("total") or 0) + 1


# ---------------------------------------------------------------------- the client
def _leader_hint(status: int, data: Any, headers: Mapping[str, str]) -> str | None:
    """The leader's base URL from a 307/421 or ``not_leader`` answer, if it names one."""
    error = _as_dict(_as_dict(data).get("error"))
    if status not in (307, 421) and error.get("code") != "not_leader":
        return None
    hint = error.get("leader_url") or _as_dict(data).get("leader_url") or headers.get("location")
    if isinstance(hint, str) and hint.startswith(("http://", "https://")):
        scheme, _, rest = hint.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"
    return None


def _error_text(data: Any, fallback: str) -> tuple[str, str | None]:
    error = _as_dict(_as_dict(data).get("error"))
    return str(error.get("message") or error.get("code") or fallback), error.get("code")


class LiveClient:
    """Async (trio) API client that keeps a :class:`LiveStore` current and reports to a sink."""

    def __init__(self, urls: str | Sequence[str], api_key: str | None, *, store: LiveStore | None = None,
                 sink: Callable[[LiveEvent], None] | None = None, page_size: int = PAGE_SIZE,
                 max_tasks: int = MAX_TASKS, timeout: float = 30.0) -> None:
        self.urls = [urls] if isinstance(urls, str) else [u.rstrip("/") for u in urls]
        if not self.urls:
            raise LiveError("no coordinator URL given (use --coordinator URL or DTF_COORDINATOR)")
        self.api_key = api_key
        self.store = store if store is not None else LiveStore()
        self.sink = sink or (lambda event: None)
        self.page_size = page_size
        self.max_tasks = max_tasks
        self.timeout = timeout
        self.url: str = self.urls[0]
        self.connection = Connection("connecting", self.url)
        self.resyncs = 0
        self._http: Any = None
        self._resync_needed = trio.Event()
        self._buffer: list[dict[str, Any]] | None = None

    # -------------------------------------------------------------- HTTP
    def _client(self) -> Any:
        if self._http is None:
            import httpx

            headers = {"X-API-Key": self.api_key} if self.api_key else {}
            self._http = httpx.AsyncClient(headers=headers, follow_redirects=False,
                                           timeout=httpx.Timeout(self.timeout, connect=min(5.0, self.timeout)))
        return self._http

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None) -> Any:
        """One API call on the current leader (following a leader hint once); raises LiveError."""
        import httpx

        params = {k: v for k, v in (params or {}).items() if v is not None}
        url = self.url
        for _ in range(3):
            try:
                response = await self._client().request(method, url + path, params=params,
                                                         json=body if body is not None else None)
            except httpx.HTTPError as exc:
                raise LiveError(f"{url}: {exc or type(exc).__name__}") from None
            try:
                data = response.json() if response.content else None
            except ValueError:
                data = None
            leader = _leader_hint(response.status_code, data, response.headers)
            if leader and leader != url:
                url = self.url = leader
                if leader not in self.urls:
                    self.urls.append(leader)
                continue
            if response.status_code >= 400:
                message, code = _error_text(data, f"HTTP {response.status_code}")
                raise LiveError(message, response.status_code, code)
            return data
        raise LiveError(f"{method} {path}: redirected too many times")

    async def find_leader(self) -> str:
        """The first URL whose open ``/status`` answers ready (a leader hint is followed); raises LiveError."""
        import httpx

        problems: list[str] = []
        starting = False
        order = [self.url] + [u for u in self.urls if u != self.url]
        for url in order:
            try:
                response = await self._client().get(url + "/status")
            except httpx.HTTPError as exc:
                problems.append(f"{url}: {str(exc) or type(exc).__name__}")
                continue
            try:
                data = response.json()
            except ValueError:
                data = {}
            if response.status_code == 503:
                starting = True  # the node is up but not ready (recovering): worth waiting for
                problems.append(f"{url}: starting")
                continue
            leader = _leader_hint(response.status_code, data, response.headers)
            hinted = _as_dict(data).get("leader_url")
            if leader is None and _as_dict(data).get("role") not in (None, "leader") and isinstance(hinted, str):
                leader = hinted.rstrip("/")
            if leader and leader != url:
                if leader not in self.urls:
                    self.urls.append(leader)
                url = leader
            self.url = url
            return url
        raise LiveError("; ".join(problems) or "no coordinator URL", 503 if starting else None,
                        "starting" if starting else None)

    # -------------------------------------------------------------- reads the views use
    async def task(self, task_id: str) -> dict[str, Any]:
        """GET /api/tasks/{id} (with ``log_tail``)."""
        return await self.request("GET", f"/api/tasks/{task_id}")

    async def set_drain(self, worker_id: str, drained: bool) -> dict[str, Any]:
        """POST /api/workers/{id}/drain or /enable."""
        return await self.request("POST", f"/api/workers/{worker_id}/{'drain' if drained else 'enable'}")

    async def attempts(self, task_id: str) -> list[dict[str, Any]]:
        """GET /api/tasks/{id}/attempts: recorded attempts with their workers and errors."""
        return _as_dict(await self.request("GET", f"/api/tasks/{task_id}/attempts")).get("attempts") or []

    async def submit(self, tasks: dict[str, Any] | list[dict[str, Any]]) -> Any:
        """POST /api/tasks."""
        return await self.request("POST", "/api/tasks", body=tasks)

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """POST /api/tasks/{id}/cancel."""
        return await self.request("POST", f"/api/tasks/{task_id}/cancel")

    async def result(self, result_id: str) -> dict[str, Any]:
        """GET /api/results/{id}."""
        return await self.request("GET", f"/api/results/{result_id}")

    async def aggregate(self, result_type: str = "benchmark", level: str = "model") -> dict[str, Any]:
        """GET /api/results/aggregate."""
        return await self.request("GET", "/api/results/aggregate",
                                  params={"result_type": result_type, "aggregation_level": level})

    async def anomalies(self, metric: str = "throughput") -> list[dict[str, Any]]:
        """GET /api/results/anomalies."""
        return _as_dict(await self.request("GET", "/api/results/anomalies", params={"metric": metric})).get(
            "anomalies") or []

    async def results_overview(self, level: str) -> dict[str, Any]:
        """What the Results view shows: benchmark aggregates at ``level``, task aggregates, anomalies."""
        return {"level": level, "benchmark": await self.aggregate("benchmark", level),
                "tests": await self.aggregate("test", "status"), "anomalies": await self.anomalies()}

    async def cluster(self) -> dict[str, Any]:
        """What /api/cluster/status, /nodes and /leader say (the Cluster view)."""
        status = await self.request("GET", "/api/cluster/status")
        nodes = await self.request("GET", "/api/cluster/nodes")
        leader = await self.request("GET", "/api/cluster/leader")
        return {"status": status, "nodes": _as_dict(nodes).get("nodes") or [], "leader": leader}

    # -------------------------------------------------------------- sync
    async def resync(self) -> None:
        """Reload the whole store from fresh reads (status, workers, the newest ``max_tasks`` tasks)."""
        status = await self.request("GET", "/api/status")
        workers = await self.request("GET", "/api/workers")
        pages: list[tuple[dict[str, Any], int]] = []
        first = await self.request("GET", "/api/tasks", params={"limit": self.page_size, "offset": 0})
        total = int(_as_dict(first).get("total") or 0)
        start = max(0, total - self.max_tasks)
        page = first if start == 0 else await self.request(
            "GET", "/api/tasks", params={"limit": self.page_size, "offset": start})
        offset = start
        while True:
            index = int(_as_dict(page).get("applied_index") or 0)
            rows = _as_dict(page).get("tasks") or []
            pages.extend((row, index) for row in rows if isinstance(row, dict))
            offset += len(rows)
            if not rows or offset >= int(_as_dict(page).get("total") or 0):
                break
            await trio.sleep(0)  # let pushes and the UI breathe between pages
            page = await self.request("GET", "/api/tasks", params={"limit": self.page_size, "offset": offset})
        self.store.load(pages, _as_dict(workers).get("workers") or [], int(_as_dict(workers).get("applied_index") or 0),
                        _as_dict(status), max(total, len(pages)))
        self.resyncs += 1

    def _emit(self, event: LiveEvent) -> None:
        if isinstance(event, Connection):
            self.connection = event
        try:
            self.sink(event)
        except Exception:  # noqa: BLE001 - a broken view must not stop the data layer
            log.exception("live sink failed on %r", event)

    def _handle(self, push: dict[str, Any]) -> None:
        if push.get("type") == "missed_updates":
            log.info("coordinator dropped %s update(s) for us; resyncing", push.get("dropped"))
            self._resync_needed.set()
            return
        if self._buffer is not None:
            self._buffer.append(push)
            return
        changed = self.store.apply(push)
        if changed is None:
            return
        kind, ident = changed
        if kind == "task":
            self._emit(Changed(tasks=frozenset([ident])))
        elif kind == "worker":
            self._emit(Changed(workers=frozenset([ident])))
        else:
            lines = push.get("lines") or []
            self._emit(LogLines(ident, tuple(str(x) for x in lines)))

    async def _resync_and_replay(self) -> None:
        if self._buffer is None:
            self._buffer = []
        try:
            await self.resync()
        finally:
            buffered, self._buffer = self._buffer or [], None
        for push in buffered:  # the index rule drops those the read already covered
            self.store.apply(push)
        self._emit(Changed(resync=True))

    async def _session(self, url: str) -> None:
        """One websocket session: subscribe, resync, then apply pushes until the connection ends."""
        from trio_websocket import open_websocket_url

        ws_url = url.replace("https://", "wss://").replace("http://", "ws://") + "/ws"
        headers = [(b"X-API-Key", self.api_key.encode())] if self.api_key else []
        async with open_websocket_url(ws_url, extra_headers=headers, message_queue_size=10_000) as ws:
            for channel in CHANNELS:
                await ws.send_message(json.dumps({"type": "subscribe", "channel": channel, "request_id": channel}))
            acked: set[str] = set()
            early: list[dict[str, Any]] = []
            with trio.fail_after(self.timeout):
                while acked != set(CHANNELS):
                    message = _decode(await ws.get_message())
                    if message.get("type") == "error":
                        raise LiveError(_error_text(message, "refused")[0] if "error" in message else
                                        str(message.get("message") or "refused"), 401, str(message.get("code")))
                    if message.get("type") == "subscribe_response":
                        if message.get("status") != "ok":
                            raise LiveError(_error_text(message, "subscription refused")[0])
                        acked.add(str(message.get("channel")))
                    else:
                        early.append(message)
            async with trio.open_nursery() as nursery:
                self._buffer = early
                nursery.start_soon(self._receive, ws)
                await self._resync_and_replay()
                self._emit(Connection("connected", url))
                while True:
                    await self._resync_needed.wait()
                    self._resync_needed = trio.Event()
                    await self._resync_and_replay()

    async def _receive(self, ws: Any) -> None:
        while True:
            self._handle(_decode(await ws.get_message()))

    async def run(self) -> None:
        """Keep the store in sync forever: connect, follow the leader, reconnect with backoff."""
        from trio_websocket import ConnectionClosed, HandshakeError

        delay = BACKOFF_FIRST_S
        while True:
            self._emit(Connection("connecting", self.url))
            try:
                url = await self.find_leader()
                await self._session(url)
                message, state = "the coordinator closed the connection", "lost"
            except LiveError as exc:
                state = "starting" if exc.code == "starting" else "refused" if exc.status in (401, 403) else "lost"
                message = exc.message
            except ConnectionClosed as exc:
                reason = getattr(exc, "reason", None)
                code = getattr(reason, "code", None)
                state = "refused" if code in (4401, 4403) else "lost"
                message = f"connection closed ({getattr(reason, 'reason', None) or code or 'no reason'})"
            except (HandshakeError, OSError, trio.TooSlowError) as exc:
                state, message = "lost", f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - e.g. httpx errors mid-resync: retry, never crash the UI
                state, message = "lost", f"{type(exc).__name__}: {exc}"
            if self.connection.state == "connected":
                delay = BACKOFF_FIRST_S  # it worked for a while: retry quickly
            # Several URLs: the next attempt starts at the next one (the leader may have moved).
            if len(self.urls) > 1:
                self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)] if self.url in self.urls else self.urls[0]
            wait = delay * (0.8 + 0.4 * random.random())
            self._emit(Connection(state, self.url, message, retry_in=round(wait, 1)))
            await trio.sleep(wait)
            delay = min(BACKOFF_MAX_S, delay * 2)


def _decode(raw: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


# ---------------------------------------------------------------------- trio on an asyncio loop
class TrioHost:
    """Trio as a guest on the running asyncio loop: start services, call trio code from asyncio.

    ``start(main)`` begins ``main(nursery)`` in trio guest mode; ``call(fn, *args)`` runs a trio
    coroutine function in that nursery and awaits its result from asyncio; ``stop()`` cancels trio
    and waits until it has finished (shutdown code such as a store flush runs to its end).
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._done: asyncio.Future[Any] | None = None
        self.error: BaseException | None = None
        self.on_done: Callable[[BaseException | None], None] | None = None
        """Called (on the asyncio loop) when trio ends, with the error it ended with (None: cancelled/clean)."""

    @property
    def running(self) -> bool:
        return self._done is not None and not self._done.done()

    async def start(self, main: Callable[[trio.Nursery], Awaitable[None]]) -> None:
        """Start trio with ``main(nursery)``; returns once the nursery exists."""
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        ready: asyncio.Future[None] = loop.create_future()

        async def trio_main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                loop.call_soon_threadsafe(_set_result, ready, None)
                await main(nursery)
                await trio.sleep_forever()

        def done(outcome: Any) -> None:
            try:
                outcome.unwrap()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits stop()/watches error
                self.error = exc
            loop.call_soon_threadsafe(_set_result, ready, None)
            loop.call_soon_threadsafe(_set_result, self._done, self.error)
            if self.on_done is not None:
                error = None if _only_cancelled(self.error) else self.error
                loop.call_soon_threadsafe(self.on_done, error)

        trio.lowlevel.start_guest_run(trio_main, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                                      done_callback=done, host_uses_signal_set_wakeup_fd=True)
        await ready

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a trio task in the host's nursery (fire and forget; thread-safe)."""
        if self._token is None or self._nursery is None:
            raise RuntimeError("trio is not running")
        nursery = self._nursery
        self._token.run_sync_soon(lambda: nursery.start_soon(fn, *args))

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` in trio and return (or raise) its outcome in asyncio."""
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        loop = self._loop

        async def runner() -> None:
            try:
                value = await fn(*args)
            except Exception as exc:  # noqa: BLE001 - passed to the awaiting asyncio side
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, value)

        self.spawn(runner)
        return await future

    async def stop(self) -> BaseException | None:
        """Cancel every trio task and wait for trio to finish; returns the error trio ended with, if any."""
        if self._done is None:
            return None
        if not self._done.done() and self._token is not None and self._nursery is not None:
            scope = self._nursery.cancel_scope
            try:
                self._token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass
        await self._done
        return self.error if not _only_cancelled(self.error) else None


def _only_cancelled(exc: BaseException | None) -> bool:
    if exc is None or isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return False


def _set_result(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


__all__ = ["Changed", "Connection", "LiveClient", "LiveError", "LiveEvent", "LiveStore", "LogLines", "TrioHost"]
