"""The worker agent: connect to the leader, run assigned tasks in slots, report outcomes through the outbox.

DESIGN.md §3 steps 3-4 and §8; the wire protocol is in :mod:`dtf_app.protocol`. One websocket per worker
carries everything (hello/welcome, assignments, started/log/results, heartbeats, acks, cancels), batched.

Shape of the service (all in one trio nursery, so cancelling it is a clean shutdown):

* the *task nursery* runs tasks; it outlives connections, so tasks keep running while the coordinator is
  unreachable and their outcomes wait in the outbox;
* the *outbox writer* stores finished outcomes in the DuckDB outbox and deletes acknowledged ones, in one
  transaction per batch; an outcome is queued for sending only once it is on disk;
* the *connection loop* connects, says hello, waits for welcome, then runs one session (receive loop,
  sender, log sender, heartbeat) until the socket drops, and reconnects with exponential backoff.

Start-up is on the clock (a worker should be registered about a second after it starts, DESIGN.md §11):
the hardware probes run in a thread while the websocket opens, so the coordinator's side of the upgrade
overlaps them, and the hello waits for their full result, never a partial one (the scheduler matches
tasks against it). A fresh or emptied outbox (:meth:`Outbox.known_empty`) is opened only after the first
welcome, so importing DuckDB is off the path to registration; an outbox that may hold outcomes is read
before the hello, which must list them.
"""

from __future__ import annotations

import logging
import math
import random
import re
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from dtf_app import protocol
from dtf_app.config import Settings
from dtf_app.worker.errors import WorkerError
from dtf_app.worker.identity import claim_worker_id, credential_path, load_credential, store_credential
from dtf_app.worker.outbox import Outbox, OutboxError, OutboxKey

logger = logging.getLogger("dtf.worker")

# Reconnect backoff: BACKOFF_INITIAL doubling up to BACKOFF_MAX, with +-25 % jitter so a restarted
# coordinator is not hit by every worker in the same instant. Module constants so tests can shrink them.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 10.0
CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 15.0
STARTED_BATCH_DELAY = 0.005
"""Collect "started" notices this long so a big assignment costs one message, not one per task."""
LOG_FLUSH_INTERVAL = 0.1
MAX_LOG_LINES_PER_MESSAGE = protocol.LOG_LINES_PER_MESSAGE
MAX_LOG_LINE_CHARS = protocol.LOG_LINE_MAX_CHARS
MAX_BUFFERED_LOG_LINES = 1000
RESULTS_PER_MESSAGE = 300
OUTBOX_BATCH = 500
OUTBOX_LINGER = 0.02
# A stopping worker waits this long for the acks of its last outcomes (the outbox keeps the rest).
STOP_ACK_WAIT_S = 30.0
"""Let outcomes gather this long before a commit: a DuckDB commit has a fixed cost (WAL sync, and a GIL
hand-over from the writer thread each time), so fewer, bigger commits leave the trio thread more time."""
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
AUTH_CLOSE_CODES = frozenset({4401, 4403})
AUTH_ERROR_CODES = frozenset({"unauthorized", "forbidden"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
LINK_TIMEOUT_MIN = 5.0
"""A connection whose coordinator does not answer a ping within its worker_timeout (at least this) is
dead even if no socket error says so (a network partition black-holes traffic): end it and reconnect."""


@dataclass
class _RunningTask:
    key: OutboxKey
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancel_requested: bool = False


@dataclass
class _LogBuffer:
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_BUFFERED_LOG_LINES))
    dropped: int = 0
    finished: bool = False


class _Signal:
    """A reusable wake-up for one waiter: ``set()`` before or during ``wait()`` is never lost."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


def websocket_url(url: str) -> str:
    """``http(s)://host:port[/prefix]`` -> ``ws(s)://host:port[/prefix]/ws/worker``; ws(s) URLs are kept."""
    text = url.strip().rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if text.startswith(http):
            text = ws + text[len(http):]
    if not text.startswith(("ws://", "wss://")) or len(text.split("://", 1)[1]) == 0:
        raise WorkerError(
            f"coordinator URL {url!r} is not valid: expected http://HOST:PORT, https://HOST:PORT, "
            "ws://HOST:PORT or wss://HOST:PORT",
            exit_code=2,
        )
    return text if text.endswith("/ws/worker") else text + "/ws/worker"


def device_env(devices: Any) -> dict[str, str]:
    """The environment restricting a task to the devices it reserved (an assignment's ``devices``)."""
    by_type: dict[str, list[str]] = {}
    for device in devices if isinstance(devices, list) else []:
        if not isinstance(device, dict):
            continue
        index, kind = device.get("index"), device.get("type")
        if isinstance(index, int) and not isinstance(index, bool) and index >= 0 and isinstance(kind, str):
            by_type.setdefault(kind, []).append(str(index))
    env: dict[str, str] = {}
    for kind, indices in by_type.items():
        for name in protocol.DEVICE_ENV_VARS.get(kind, ()):
            env[name] = ",".join(indices)
    return env


def _task_key(document: dict[str, Any]) -> OutboxKey | None:
    task_id, attempt = document.get("task_id"), document.get("attempt")
    if not isinstance(task_id, str) or not task_id or isinstance(attempt, bool) or not isinstance(attempt, int):
        return None
    return task_id, attempt


class WorkerAgent:
    """One worker's connection, slots and outbox. Use :func:`run_worker`; this class is its machinery."""

    def __init__(
        self,
        settings: Settings,
        worker_id: str,
        outbox: Outbox,
        capabilities: dict[str, Any] | Callable[[], dict[str, Any]],
        *,
        get_runner: Callable[[str], Any] | None = None,
        run_context: Callable[..., Any] | None = None,
        task_error: type[BaseException] | None = None,
        sample_health: Callable[[], dict[str, Any]],
        credential: str | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.outbox = outbox
        # A callable is the hardware detection itself: run() starts it in a thread and the first hello
        # waits for its result, so probing overlaps opening the connection.
        self._detect = capabilities if callable(capabilities) else None
        self.capabilities: dict[str, Any] = {} if callable(capabilities) else capabilities
        self._capabilities_ready = trio.Event()
        if self._detect is None:
            self._capabilities_ready.set()
        self._welcomed = trio.Event()
        # None: dtf_app.worker.runners' own, imported at the first task (it is not needed to register).
        self._get_runner = get_runner
        self._run_context = run_context
        self._task_error = task_error
        self._sample_health = sample_health
        # Absolute, so a runner that changes directory (or a subprocess cwd) still finds it.
        self._work_root = Path(settings.data_dir).resolve() / "work"
        self._max_slots = max(1, int(settings.max_concurrent_tasks))
        self._slots = trio.CapacityLimiter(self._max_slots)
        self._heartbeat_interval = float(settings.heartbeat_interval)
        self._link_timeout = max(LINK_TIMEOUT_MIN, float(settings.worker_timeout))
        self._running: dict[OutboxKey, _RunningTask] = {}
        self._finished: dict[OutboxKey, dict[str, Any]] = {}  # outcomes on their way into the outbox
        # Mirror of the outbox (everything not yet acked) and the part not yet sent on this connection.
        self._unacked: dict[OutboxKey, dict[str, Any]] = {}
        self._to_send: dict[OutboxKey, dict[str, Any]] = {}
        self._started_items: list[dict[str, Any]] = []
        self._send_signal = _Signal()
        self._logs: dict[OutboxKey, _LogBuffer] = {}
        self._log_signal = _Signal()
        self._acked: list[OutboxKey] = []
        self._outbox_signal = _Signal()
        self._spent_dirs: list[Path] = []  # work dirs of completed tasks, to remove
        self._janitor_signal = _Signal()
        self._ws: Any = None
        self._send_lock = trio.Lock()
        self._next_url: str | None = None
        self._fatal: WorkerError | None = None
        self._close_reason = ""
        self._task_nursery: trio.Nursery | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._task_status: trio.TaskStatus[str] | None = None
        self._session_scope: trio.CancelScope | None = None
        # The secret bound to worker_id at enrolment, presented on every connection.
        self._credential_path = credential_path(settings, worker_id)
        self.credential = credential or load_credential(self._credential_path)
        # Health: sampled every report_interval (default each heartbeat), evaluated against this worker's
        # own thresholds (the design's worker `health` section); the alerts travel with the heartbeat.
        from dtf_app import health

        self._health_thresholds = health.thresholds_from(settings)
        self._health_sample: dict[str, Any] = {}
        self._health_alerts: list[dict[str, Any]] = []
        self._health_sampled_at = -math.inf
        # Set by a ``control`` stop/restart frame: no new tasks, finish, wait for the acks, then leave.
        self.exit_action: str | None = None
        self._service_scope: trio.CancelScope | None = None

    # ----------------------------------------------------------------------------------------- service
    async def run(self, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (clean shutdown) or a fatal :class:`WorkerError`."""
        self._trio_token = trio.lowlevel.current_trio_token()
        fatal: WorkerError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._task_nursery = nursery
                if self._detect is not None:
                    nursery.start_soon(self._detect_capabilities)
                if not self.outbox.known_empty():
                    # The hello lists what waits in the outbox, so it is read now (while the probes run).
                    self._take_stored(await self.outbox.connect())
                nursery.start_soon(self._outbox_writer)
                nursery.start_soon(self._janitor)
                try:
                    with trio.CancelScope() as self._service_scope:
                        await self._connection_loop(task_status)
                except WorkerError as exc:
                    fatal = exc
                # Stop taking work and cancel running tasks; the runners kill their process groups.
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Hardware detection that cannot go on (a bad --simulate-hardware profile) ends the worker with
            # its own exit code; a broken outbox (disk full, file removed) is fatal too, with its message.
            detected, _ = group.split(WorkerError)
            if detected is not None:
                raise _first_leaf(detected) from group
            match, _ = group.split(OutboxError)
            if match is None:
                raise
            raise WorkerError(str(_first_leaf(match)), exit_code=2) from group
        finally:
            self._task_nursery = None
        if fatal is not None:
            raise fatal

    async def _detect_capabilities(self) -> None:
        assert self._detect is not None
        try:
            self.capabilities = await trio.to_thread.run_sync(self._detect)
        except (ValueError, OSError) as exc:  # an unreadable or invalid --simulate-hardware profile
            raise WorkerError(f"cannot use the hardware profile: {exc}", exit_code=2) from exc
        self._capabilities_ready.set()

    def _take_stored(self, outcomes: list[dict[str, Any]]) -> None:
        """Outcomes found in the outbox file: unacknowledged, so they are (re-)sent like any other."""
        fresh = 0
        for outcome in outcomes:
            key = _task_key(outcome)
            if key is not None and key not in self._unacked:
                self._unacked[key] = outcome
                self._to_send[key] = outcome
                fresh += 1
        if fresh:
            logger.info("outbox holds %d unacknowledged outcome(s); they will be re-sent", fresh)
            self._send_signal.set()

    # -------------------------------------------------------------------------------------- connection
    async def _connection_loop(self, task_status: trio.TaskStatus[str]) -> None:
        urls = [websocket_url(url) for url in self.settings.coordinator]
        if not urls:
            raise WorkerError("no coordinator URL configured (set --coordinator or DTF_COORDINATOR)", exit_code=2)
        attempts = max(1, int(self.settings.reconnect_attempts))
        failures, index = 0, 0
        self._task_status = task_status
        while True:
            url = self._next_url or urls[index % len(urls)]
            self._next_url = None
            welcomed = await self._session(url)
            if self._fatal is not None:
                raise self._fatal
            if welcomed:
                failures = 0
                logger.warning("lost connection to %s (%s); reconnecting", url, self._close_reason)
            else:
                failures += 1
                if failures >= attempts:
                    raise WorkerError(
                        f"cannot reach coordinator at {', '.join(self.settings.coordinator)} after "
                        f"{failures} attempts: {self._close_reason}",
                        exit_code=3,
                    )
                if self._next_url is None:
                    index += 1
                else:
                    continue  # a redirect or leader hint: follow it now (it still counts as an attempt)
            delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** max(0, failures - 1)) * random.uniform(0.75, 1.25)
            if not welcomed:
                logger.warning(
                    "coordinator %s: %s; retry %d/%d in %.1f s", url, self._close_reason, failures, attempts, delay
                )
            await trio.sleep(delay)

    async def _session(self, url: str) -> bool:
        """One connection: returns whether it got a welcome; sets ``_close_reason`` and maybe ``_fatal``."""
        from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

        headers = [(b"X-API-Key", self.settings.api_key.encode())] if self.settings.api_key else []
        headers.append((protocol.WORKER_CREDENTIAL_HEADER.encode(), self.credential.encode()))
        welcomed = False
        try:
            async with open_websocket_url(
                url, extra_headers=headers, connect_timeout=CONNECT_TIMEOUT, disconnect_timeout=5,
                max_message_size=MAX_MESSAGE_BYTES,
            ) as ws:
                await self._capabilities_ready.wait()  # the probes ran while the socket opened
                await ws.send_message(protocol.dumps(self._hello()))
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    reply = protocol.loads(await ws.get_message())
                if reply["type"] == protocol.ERROR:
                    self._handle_error(reply, url)
                    return False
                if reply["type"] != protocol.WELCOME:
                    self._close_reason = f"expected a welcome, got {reply['type']!r}"
                    return False
                welcomed = True
                self._welcomed.set()
                self._on_welcome(reply, url)
                if self._task_status is not None:
                    self._task_status.started(self.worker_id)  # once: the first welcome
                    self._task_status = None
                await self._serve(ws)
                return True
        except ConnectionRejected as exc:
            if exc.status_code in (401, 403):
                self._fatal = self._auth_error(url, f"HTTP {exc.status_code}")
            elif exc.status_code in REDIRECT_STATUSES and exc.headers:
                location = dict(exc.headers).get(b"location", b"").decode(errors="replace")
                try:
                    self._next_url = websocket_url(location)
                    self._close_reason = f"redirected to {location}"
                except WorkerError:  # a relative or odd Location: retry the configured URLs instead
                    self._close_reason = f"HTTP {exc.status_code} with unusable location {location!r}"
            else:
                body = (exc.body or b"")[:200].decode(errors="replace")
                self._close_reason = f"upgrade refused with HTTP {exc.status_code} {body}".strip()
        except ConnectionClosed as exc:
            self._on_closed(exc, url)
        except HandshakeError as exc:
            cause = exc.__cause__ or exc.__context__
            self._close_reason = str(cause or exc) or type(exc).__name__
        except OSError as exc:
            self._close_reason = str(exc) or type(exc).__name__
        except trio.TooSlowError:
            self._close_reason = f"no welcome within {HANDSHAKE_TIMEOUT:g} s"
        except ValueError as exc:
            self._close_reason = f"unreadable message from the coordinator: {exc}"
        return welcomed

    def _on_closed(self, exc: Any, url: str) -> None:
        reason = exc.reason
        if reason is not None and reason.code in AUTH_CLOSE_CODES:
            if self._fatal is not None:
                return  # the error frame before the close already said why
            text = reason.reason or f"close code {reason.code}"
            if text.startswith(protocol.CREDENTIAL_REFUSED):
                self._fatal = self._credential_error(url, text.removeprefix(protocol.CREDENTIAL_REFUSED).lstrip(": "))
            else:
                self._fatal = self._auth_error(url, text)
        else:
            self._close_reason = f"closed: {reason}" if reason is not None else "closed"

    def _credential_error(self, url: str, reason: str) -> WorkerError:
        return WorkerError(
            f"coordinator {url} refused to let this worker act as {self.worker_id!r} ({reason}). Its credential "
            f"is kept in {self._credential_path}; if the id belongs to a machine that was rebuilt or lost its "
            f"data dir, an admin can run `dtf workers forget {self.worker_id}` and this worker can then start "
            "again (or start it with another --worker-id)",
            exit_code=4,
        )

    def _auth_error(self, url: str, reason: str) -> WorkerError:
        return WorkerError(
            f"coordinator {url} refused this worker's API key ({reason}); give a key with the worker role "
            "via --api-key or DTF_API_KEY",
            exit_code=4,
        )

    def _hello(self) -> dict[str, Any]:
        probe_tags = self.capabilities.get("tags")
        tags = list(dict.fromkeys([*self.settings.tags, *(probe_tags if isinstance(probe_tags, list) else [])]))
        return {
            "type": protocol.HELLO,
            "worker_id": self.worker_id,
            "hostname": self.settings.hostname or socket.gethostname(),
            "capabilities": self.capabilities,
            "max_concurrent_tasks": self._max_slots,
            "tags": tags,
            "simulated": bool(self.capabilities.get("simulated", False)),
            "running": self._running_list(),
            # Outcomes waiting for an ack (they follow the welcome): the coordinator must not run these again.
            "finished": [{"task_id": task_id, "attempt": attempt} for task_id, attempt in self._unacked],
        }

    def _on_welcome(self, welcome: dict[str, Any], url: str) -> None:
        interval = welcome.get("heartbeat_interval")
        # The coordinator owns liveness (worker_timeout), so its interval wins over the local setting.
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            self._heartbeat_interval = float(interval)
        timeout = welcome.get("worker_timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            # Past the coordinator's worker_timeout without an answer it has given up on us anyway.
            self._link_timeout = max(LINK_TIMEOUT_MIN, float(timeout))
        logger.info(
            "worker %s connected to %s (node %s); %d slot(s), %d outcome(s) to re-send",
            self.worker_id, url, welcome.get("node_id", "?"), self._max_slots, len(self._unacked),
        )
        issued = welcome.get("credential")
        if isinstance(issued, str) and issued and issued != self.credential:
            # The coordinator generated our credential (it had none from us): keep it for every reconnect.
            self.credential = issued
            try:
                store_credential(self._credential_path, issued)
            except OSError as exc:  # still valid for this process's reconnects; a restart would be refused
                logger.error("cannot keep the worker credential in %s: %s", self._credential_path, exc)

    def _handle_error(self, message: dict[str, Any], url: str) -> None:
        code, text = str(message.get("code", "")), str(message.get("message", ""))
        if code == protocol.CREDENTIAL_REFUSED:
            self._fatal = self._credential_error(url, text or code)
            return
        if code in AUTH_ERROR_CODES:
            self._fatal = self._auth_error(url, f"{code}: {text}" if text else code)
            return
        leader_url = message.get("leader_url")
        if isinstance(leader_url, str) and leader_url:
            try:
                self._next_url = websocket_url(leader_url)
            except WorkerError:
                logger.warning("ignoring unusable leader hint %r from %s", leader_url, url)
        self._close_reason = f"coordinator error {code}: {text}"
        logger.warning("coordinator %s says %s: %s", url, code, text)

    async def _serve(self, ws: Any) -> None:
        from trio_websocket import ConnectionClosed

        self._ws = ws
        self._to_send = dict(self._unacked)
        if self._to_send or self._started_items:
            self._send_signal.set()
        try:
            async with trio.open_nursery() as nursery:
                self._session_scope = nursery.cancel_scope

                async def guarded(loop: Callable[[], Any]) -> None:
                    # A dropped socket ends the whole session quietly; the connection loop reconnects.
                    try:
                        await loop()
                    except ConnectionClosed as exc:
                        self._on_closed(exc, "coordinator")
                        nursery.cancel_scope.cancel()

                for loop in (self._receive_loop, self._sender, self._log_sender, self._heartbeat_loop,
                             self._link_check):
                    nursery.start_soon(guarded, loop)
        finally:
            self._ws = None

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            return
        async with self._send_lock:
            await ws.send_message(protocol.dumps(message))

    # ----------------------------------------------------------------------------------- session loops
    async def _receive_loop(self) -> None:
        # Dedicated reader (trio-websocket recipe): handlers never block, so pings keep being answered.
        ws = self._ws
        while True:
            text = await ws.get_message()
            try:
                message = protocol.loads(text)
            except ValueError as exc:
                logger.warning("ignoring unreadable message from the coordinator: %s", exc)
                continue
            kind = message["type"]
            if kind == protocol.ASSIGN:
                self._handle_assign(message)
            elif kind == protocol.CANCEL:
                self._handle_cancel(message)
            elif kind == protocol.ACK:
                self._handle_ack(message)
            elif kind == protocol.CONTROL:
                self._handle_control(message)
            elif kind == protocol.ERROR:
                self._handle_error(message, "coordinator")
                if (self._fatal is not None or self._next_url is not None) and self._session_scope:
                    self._session_scope.cancel()  # end the session; the connection loop acts on it
            elif kind != protocol.WELCOME:
                logger.debug("ignoring message of type %r", kind)

    async def _sender(self) -> None:
        # One loop sends both "started" and "results" so a task's started notice never trails its result.
        while True:
            await self._send_signal.wait()
            if self._started_items:
                await trio.sleep(STARTED_BATCH_DELAY)
            while self._started_items or self._to_send:
                if self._started_items:
                    items, self._started_items = self._started_items, []
                    await self._send({"type": protocol.STARTED, "items": items})
                if self._to_send:
                    keys = list(self._to_send)[:RESULTS_PER_MESSAGE]
                    batch = [self._to_send.pop(key) for key in keys]
                    await self._send({"type": protocol.RESULTS, "items": batch})

    async def _log_sender(self) -> None:
        while True:
            await self._log_signal.wait()
            for key, buffer in list(self._logs.items()):
                lines = [buffer.lines.popleft() for _ in range(min(len(buffer.lines), MAX_LOG_LINES_PER_MESSAGE))]
                if buffer.dropped:
                    lines.insert(0, f"[dtf: {buffer.dropped} log line(s) dropped while the link was slow]")
                    buffer.dropped = 0
                if lines:
                    await self._send({"type": protocol.LOG, "task_id": key[0], "attempt": key[1], "lines": lines})
                if buffer.finished and not buffer.lines:
                    self._logs.pop(key, None)
            if any(buffer.lines for buffer in self._logs.values()):
                self._log_signal.set()
            await trio.sleep(LOG_FLUSH_INTERVAL)  # at most one log message per task per interval

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self._heartbeat_interval)
            report_every = self.settings.health_report_interval or 0.0
            if time.monotonic() - self._health_sampled_at >= report_every:
                self._health_sampled_at = time.monotonic()
                try:
                    self._health_sample = await trio.to_thread.run_sync(self._sample_health)
                    self._health_alerts = self._evaluate_health(self._health_sample)
                except Exception as exc:  # a failing metric must not cost the worker its liveness
                    logger.warning("health sample failed: %s", exc)
                    self._health_sample, self._health_alerts = {}, []
            await self._send({
                "type": protocol.HEARTBEAT,
                "metrics": self._health_sample,
                "alerts": self._health_alerts,
                "free_slots": self._free_slots(),
                "running": self._running_list(),
            })

    async def _link_check(self) -> None:
        """Ping the coordinator every heartbeat; a link that stays silent past the link timeout is dead.

        Over a partitioned network nothing fails: writes are buffered and reads just wait, so without this
        a worker would stay with an unreachable (perhaps deposed) leader until the partition heals, instead
        of finding the one the majority elected."""
        ws = self._ws
        while True:
            await trio.sleep(self._heartbeat_interval)
            with trio.move_on_after(self._link_timeout) as scope:
                await ws.ping()
            if scope.cancelled_caught:
                self._close_reason = f"no answer from the coordinator within {self._link_timeout:g} s"
                logger.warning("coordinator link silent for %.1f s; reconnecting", self._link_timeout)
                if self._session_scope is not None:
                    self._session_scope.cancel()
                return

    def _evaluate_health(self, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        from dtf_app import health

        alerts = health.evaluate(metrics, *self._health_thresholds) if metrics else []
        before = {a["metric"]: a["severity"] for a in self._health_alerts}
        for alert in alerts:
            if before.get(alert["metric"]) != alert["severity"]:
                logger.log(logging.WARNING if alert["severity"] == "critical" else logging.INFO,
                           "health %s: %s", alert["severity"], alert["message"])
        return alerts

    # ----------------------------------------------------------------------------- message handlers
    def _handle_assign(self, message: dict[str, Any]) -> None:
        tasks = message.get("tasks")
        if not isinstance(tasks, list):
            logger.warning("ignoring assign without a 'tasks' list")
            return
        accepted = 0
        for task in tasks:
            key = _task_key(task) if isinstance(task, dict) else None
            if key is None:
                logger.warning("ignoring assignment without task_id/attempt: %.200r", task)
                continue
            if key in self._running:
                continue  # the coordinator re-sent an assignment we are running
            if key in self._unacked:
                # Already ran; its outcome may not have arrived: send it again instead of re-running.
                self._to_send[key] = self._unacked[key]
                self._send_signal.set()
                continue
            if self._task_nursery is None:
                return
            if self.exit_action is not None:
                # Stopping: the coordinator stopped sending work; one that crossed the stop is left to it
                # (it is re-queued once this worker is gone).
                logger.info("stopping: not starting task %s", key[0])
                continue
            record = _RunningTask(key)
            self._running[key] = record
            self._task_nursery.start_soon(self._run_task, task, record)
            accepted += 1
        if len(self._running) > self._max_slots:
            # The coordinator prefetches up to one extra task per slot so a slot never idles for a round trip.
            logger.debug("assigned %d tasks for %d slots; the extra ones wait", len(self._running), self._max_slots)
        if accepted:
            logger.info("assigned %d task(s); %d running or waiting", accepted, len(self._running))

    def _handle_cancel(self, message: dict[str, Any]) -> None:
        task_id, attempt = message.get("task_id"), message.get("attempt")
        for key, record in list(self._running.items()):
            if key[0] == task_id and (attempt is None or key[1] == attempt):
                logger.info("cancelling task %s attempt %d", key[0], key[1])
                record.cancel_requested = True
                record.scope.cancel()

    def _handle_control(self, message: dict[str, Any]) -> None:
        action, reason = message.get("action"), str(message.get("reason") or "")
        if action not in protocol.CONTROL_ACTIONS:
            logger.warning("ignoring control frame with unknown action %r", action)
            return
        if action in ("drain", "resume"):
            logger.warning("coordinator %s this worker%s", "drained" if action == "drain" else "resumed",
                           f" ({reason})" if reason else "")
            return
        if self.exit_action is not None:
            return
        self.exit_action = action
        logger.warning("coordinator asked this worker to %s: finishing %d task(s) first", action, len(self._running))
        if self._task_nursery is not None:
            self._task_nursery.start_soon(self._leave_when_idle)

    async def _leave_when_idle(self) -> None:
        """Stop/restart: wait for running tasks and their acks (the outbox keeps what is not acked), then end."""
        while self._running:
            await trio.sleep(0.1)
        with trio.move_on_after(STOP_ACK_WAIT_S):
            while self._unacked and self._ws is not None:
                await trio.sleep(0.1)
        logger.warning("worker %s: %s now", self.worker_id, "restarting" if self.exit_action == "restart" else "stopping")
        if self._service_scope is not None:
            self._service_scope.cancel()

    def _handle_ack(self, message: dict[str, Any]) -> None:
        items = message.get("items")
        if not isinstance(items, list):
            logger.warning("ignoring ack without an 'items' list")
            return
        for item in items:
            key = _task_key(item) if isinstance(item, dict) else None
            if key is None:
                continue
            self._unacked.pop(key, None)
            self._to_send.pop(key, None)
            # Acked before it reached the outbox: no need to write it at all. Removal stays queued in
            # case its insert is in flight right now (deleting a missing row is harmless).
            self._finished.pop(key, None)
            self._acked.append(key)
        self._outbox_signal.set()

    # --------------------------------------------------------------------------------------- tasks
    async def _run_task(self, task: dict[str, Any], record: _RunningTask) -> None:
        task_id, attempt = record.key
        start_time = time.time()
        work_dir = self._work_root / f"{re.sub(r'[^A-Za-z0-9._-]', '_', task_id)}-{attempt}"
        outcome: dict[str, Any] | None = None
        try:
            with record.scope:
                async with self._slots:  # guard: never more than max_concurrent_tasks at once
                    start_time = time.time()
                    self._started_items.append({"task_id": task_id, "attempt": attempt, "start_time": start_time})
                    self._send_signal.set()
                    try:
                        work_dir.mkdir(parents=True, exist_ok=True)
                        outcome = await self._execute(task, record.key, work_dir, start_time)
                    except Exception as exc:  # a full disk or a bug here fails the task, never the worker
                        logger.exception("task %s attempt %d: worker error", task_id, attempt)
                        outcome = self._outcome(
                            record.key, start_time, "failed", error=f"worker error: {type(exc).__name__}: {exc}",
                            error_class="worker_error")
            if outcome is None or record.cancel_requested:
                # Only a "cancel" message cancels record.scope; whatever the runner made of it, say so.
                outcome = self._outcome(record.key, start_time, "failed", error="cancelled", error_class="cancelled")
        finally:
            self._running.pop(record.key, None)
            buffer = self._logs.get(record.key)
            if buffer is not None:
                buffer.finished = True
                if self._ws is None or not buffer.lines:
                    self._logs.pop(record.key, None)  # logs are ephemeral: nothing (or nobody) to send
        if outcome["error"]:
            logger.warning("task %s attempt %d failed: %s", task_id, attempt, outcome["error"])
        else:
            logger.debug("task %s attempt %d completed in %.3f s", task_id, attempt, outcome["end_time"] - start_time)
        # Sent at once and persisted alongside: the outbox matters when the coordinator is unreachable,
        # and waiting for its commit would put a DuckDB transaction on every task's critical path. A
        # worker that dies before both is declared lost and its task runs again (at-least-once).
        self._finished[record.key] = outcome
        self._unacked[record.key] = outcome
        self._to_send[record.key] = outcome
        self._send_signal.set()
        self._outbox_signal.set()
        if outcome["outcome"] == "completed":
            self._spent_dirs.append(work_dir)
            self._janitor_signal.set()

    async def _execute(
        self, task: dict[str, Any], key: OutboxKey, work_dir: Path, start_time: float
    ) -> dict[str, Any]:
        task_type = task.get("type")
        if self._get_runner is None or self._run_context is None or self._task_error is None:
            default_get_runner, run_context, task_error = _default_runner_api()
            self._get_runner = self._get_runner or default_get_runner
            self._run_context = self._run_context or run_context
            self._task_error = self._task_error or task_error
        try:
            runner = self._get_runner(str(task_type))
        except self._task_error as exc:
            return self._outcome(key, start_time, "failed", error=str(exc),
                                 error_class=getattr(exc, "error_class", "unknown_runner"))
        except Exception as exc:
            return self._outcome(key, start_time, "failed", error=f"no runner for task type {task_type!r}: {exc}",
                                 error_class="unknown_runner")
        # A task without its own limit gets the worker's (execution.timeout), if one is set.
        timeout = task.get("timeout_seconds") or self.settings.task_timeout
        limit = float(timeout) if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0 else math.inf
        env = {"DTF_TASK_ID": key[0], "DTF_ATTEMPT": str(key[1]), "DTF_WORKER_ID": self.worker_id}
        pinned = device_env(task.get("devices"))
        if pinned:
            env.update(pinned)
            env["DTF_RESERVED_DEVICES"] = ",".join(str(d.get("index")) for d in task["devices"])
        context = self._run_context(
            task_id=key[0], attempt=key[1], work_dir=work_dir, log=self._log_callback(key),
            env=env, settings=self.settings, credential=self.credential,
        )
        result: Any = None
        error: str | None = None
        error_class = "crash"
        with trio.move_on_after(limit) as timeout_scope:
            try:
                result = await runner.run(task, context)
            except self._task_error as exc:
                error = str(exc) or type(exc).__name__
                error_class = getattr(exc, "error_class", "bad_config")
            except Exception as exc:  # a runner bug fails the task, never the worker
                logger.debug("runner for task %s raised", key[0], exc_info=True)
                error = f"{type(exc).__name__}: {exc}"
        if timeout_scope.cancelled_caught or (error is not None and timeout_scope.cancel_called):
            return self._outcome(key, start_time, "failed", error=f"timed out after {limit:g} s", error_class="timeout")
        if error is not None:
            return self._outcome(key, start_time, "failed", error=error, error_class=error_class)
        if not isinstance(result, dict):
            return self._outcome(
                key, start_time, "failed", error=f"runner returned {type(result).__name__}, not a result document",
                error_class="crash")
        return self._outcome(key, start_time, "completed", result=result)

    @staticmethod
    def _outcome(
        key: OutboxKey, start_time: float, outcome: str, *, error: str | None = None,
        result: dict[str, Any] | None = None, error_class: str | None = None,
    ) -> dict[str, Any]:
        return {
            "task_id": key[0], "attempt": key[1], "outcome": outcome, "start_time": start_time,
            "end_time": time.time(), "error": error, "result": result,
            "error_class": error_class if error is not None else None,
        }

    def _log_callback(self, key: OutboxKey) -> Callable[[str], None]:
        buffer = self._logs.setdefault(key, _LogBuffer())

        def append(line: str) -> None:
            text = str(line).rstrip("\n")
            if len(text) > MAX_LOG_LINE_CHARS:
                text = text[:MAX_LOG_LINE_CHARS] + protocol.LOG_TRUNCATED
            if len(buffer.lines) == buffer.lines.maxlen:
                buffer.dropped += 1
            buffer.lines.append(text)
            self._log_signal.set()

        def log(line: str) -> None:
            # Runners may log from a helper thread; trio objects are only touched on the trio thread.
            try:
                trio.lowlevel.current_task()
            except RuntimeError:
                if self._trio_token is not None:
                    self._trio_token.run_sync_soon(append, line)
                return
            append(line)

        return log

    async def _janitor(self) -> None:
        # Removing a directory costs a fraction of a millisecond of syscall on a busy disk: for thousands
        # of in-process tasks that adds up, so spent work dirs are removed in batches off the trio thread.
        try:
            while True:
                await self._janitor_signal.wait()
                spent, self._spent_dirs = self._spent_dirs, []
                await trio.to_thread.run_sync(_remove_dirs, spent)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                spent, self._spent_dirs = self._spent_dirs, []
                await trio.to_thread.run_sync(_remove_dirs, spent)

    def _free_slots(self) -> int:
        return max(0, self._max_slots - len(self._running))

    def _running_list(self) -> list[dict[str, Any]]:
        return [{"task_id": task_id, "attempt": attempt} for task_id, attempt in self._running]

    # --------------------------------------------------------------------------------------- outbox
    async def _outbox_writer(self) -> None:
        try:
            if not self.outbox.is_open:
                # A fresh or emptied outbox opens once registered: DuckDB's import stays off the path to the
                # first welcome, and no task (so no outcome to store) can arrive before it.
                await self._welcomed.wait()
                self._take_stored(await self.outbox.connect())  # normally nothing: the file was known empty
            while True:
                await self._outbox_signal.wait()
                if len(self._finished) < OUTBOX_BATCH:
                    await trio.sleep(OUTBOX_LINGER)
                await self._write_outbox()
        finally:
            # Shutdown: outcomes already produced and acks already received reach the file first.
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self._write_outbox()

    async def _write_outbox(self) -> None:
        # Everything that piled up since the last write (outcomes and acks) goes in one transaction, so
        # while one commit is in flight the next batch grows instead of queueing many tiny commits.
        while self._finished or self._acked:
            batch = list(self._finished.values())[:OUTBOX_BATCH]
            acked, self._acked = self._acked, []
            try:
                await self.outbox.apply(add=batch, remove=acked)
            except BaseException:
                # Cancelled (shutdown) or failed before the commit: keep the acks for the final write.
                self._acked = acked + self._acked
                raise
            for outcome in batch:
                self._finished.pop((outcome["task_id"], outcome["attempt"]), None)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first non-group exception inside a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _remove_dirs(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.rmdir()  # the common case (in-process tasks): an empty folder
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(path, ignore_errors=True)


def _default_runner_api() -> tuple[Callable[[str], Any], Callable[..., Any], type[BaseException]]:
    from dtf_app.worker.runners import RunContext, TaskError, get_runner

    return get_runner, RunContext, TaskError


async def run_worker(
    settings: Settings,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    get_runner: Callable[[str], Any] | None = None,
    detect_hardware: Callable[[str | None], dict[str, Any]] | None = None,
    sample_health: Callable[[], dict[str, Any]] | None = None,
) -> str | None:
    """Run a worker until cancelled or told to leave; ``task_status.started(worker_id)`` after the first welcome.

    Returns ``"stop"`` or ``"restart"`` when the coordinator said so (a ``control`` frame), else None.

    ``get_runner``, ``detect_hardware`` and ``sample_health`` default to :mod:`dtf_app.worker.runners`,
    :func:`dtf_app.hardware.detect` and :func:`dtf_app.health.sample`; tests and embedders may pass their own.
    Raises :class:`WorkerError` (with ``exit_code``) when the worker cannot go on.
    """
    if int(settings.max_concurrent_tasks) < 1:
        raise WorkerError(
            f"max_concurrent_tasks must be at least 1, got {settings.max_concurrent_tasks}", exit_code=2
        )
    if not float(settings.heartbeat_interval) > 0:
        raise WorkerError(f"heartbeat_interval must be > 0 seconds, got {settings.heartbeat_interval}", exit_code=2)
    for url in settings.coordinator:
        websocket_url(url)  # validate every URL up front: a typo is a config error, not "unreachable"

    if detect_hardware is None:
        from dtf_app.hardware import detect as detect_hardware
    if sample_health is None:
        from dtf_app.health import sample

        def sample_health() -> dict[str, Any]:
            return sample(settings.data_dir)

    if settings.simulate_hardware:
        from dtf_app.hardware import load_profile

        try:  # checked up front (cheap): a bad profile is exit 2 even when no coordinator answers
            load_profile(settings.simulate_hardware)
        except ValueError as exc:
            raise WorkerError(f"cannot use the hardware profile: {exc}", exit_code=2) from exc
    labels = {k: v for k, v in (("name", settings.worker_name), ("hardware_id", settings.hardware_id)) if v}
    probe = detect_hardware

    def capabilities() -> dict[str, Any]:
        found = probe(settings.simulate_hardware)
        # Labels travel in the capabilities document, so every view of the worker shows them.
        return {**found, "labels": labels} if labels else found

    worker_id, id_lock = claim_worker_id(settings)
    try:
        # Before the outbox is claimed, so a damaged credential file is a plain exit 2 with nothing to close.
        credential = load_credential(credential_path(settings, worker_id))
        try:
            outbox = Outbox.claim(settings.worker_db_path(worker_id))
        except OutboxError as exc:
            raise WorkerError(str(exc), exit_code=2) from exc
        agent = WorkerAgent(
            settings, worker_id, outbox, capabilities,
            get_runner=get_runner, sample_health=sample_health, credential=credential,
        )
        try:
            await agent.run(task_status)
            return agent.exit_action
        finally:
            with trio.CancelScope(shield=True):
                await outbox.aclose()
    finally:
        if id_lock is not None:
            id_lock.close()
