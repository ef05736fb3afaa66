"""Worker side of ``dtf pytest``: long-lived pytest sessions that run chunks (``test`` tasks).

A session is ``TEST_PYTHON -m pytest -p dtf_pytest_remote ARGS`` started in the suite's directory (the
unpacked bundle, or the worker's cwd for ``--pyargs``). It collects once, then runs each chunk it is
fed over stdin (see :mod:`dtf_app.pytest_dist.remote`); an idle session is kept for the next chunk of
the same suite, keyed by (suite directory, Python, arguments), so the second run of a suite imports and
collects nothing. At most one chunk runs in a session at a time; a worker with several slots starts
several sessions of the same suite. A chunk that is cancelled or times out kills its session (its state
is unknown); idle sessions are closed after ``SESSION_IDLE_SECONDS`` or when more than ``MAX_SESSIONS``
are open.

Which Python: the worker's ``test_python`` setting (``DTF_TEST_PYTHON``), the interpreter that has the
suite's dependencies; by default the worker's own interpreter (a frozen worker: ``DTF_PYTHON`` or
``python3``, see :func:`dtf_app.worker.runners.python_executable`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from dtf_app.pytest_dist import bundle as bundlemod
from dtf_app.pytest_dist.chunks import ChunkError, compact_reports, summarize, validate_chunk
from dtf_app.worker.runners import OutputTail, RunContext, TaskError, environment_info, python_executable

logger = logging.getLogger("dtf.pytest")

SESSION_IDLE_SECONDS = 900.0
MAX_SESSIONS = 8
START_TIMEOUT = 1800.0
"""Collection of a big suite on a slow machine can take minutes; the task's own timeout still applies."""
PLUGIN_NAME = "dtf_pytest_remote"
_MAX_PROTOCOL_LINE = 256 * 1024 * 1024


@dataclass
class Session:
    key: tuple[str, str, tuple[str, ...]]
    proc: trio.Process
    lines: Any  # async iterator of protocol lines
    ready: dict[str, Any]
    idle_since: float = field(default_factory=time.monotonic)
    log: Any = None
    tail: OutputTail = field(default_factory=OutputTail)
    chunks_run: int = 0

    def alive(self) -> bool:
        return self.proc.returncode is None


class SessionPool:
    """The worker process's pytest sessions (one pool per worker process)."""

    def __init__(self) -> None:
        self._idle: list[Session] = []
        self._busy = 0

    async def acquire(self, key: tuple[str, str, tuple[str, ...]], cwd: Path, env: dict[str, str],
                      log: Any) -> tuple[Session, bool]:
        """An idle session for ``key`` (reused=True) or a new one."""
        await self._expire()
        for session in list(self._idle):
            if session.key == key and session.alive():
                self._idle.remove(session)
                session.log = log
                return session, True
        return await self._start(key, cwd, env, log), False

    def release(self, session: Session) -> None:
        session.log = None
        session.idle_since = time.monotonic()
        if session.alive():
            self._idle.append(session)

    async def _expire(self) -> None:
        now = time.monotonic()
        keep: list[Session] = []
        for session in self._idle:
            if not session.alive() or now - session.idle_since > SESSION_IDLE_SECONDS:
                await close_session(session)
            else:
                keep.append(session)
        # Oldest idle first out when there are too many.
        keep.sort(key=lambda s: s.idle_since)
        while len(keep) >= MAX_SESSIONS:
            await close_session(keep.pop(0))
        self._idle = keep

    async def _start(self, key: tuple[str, str, tuple[str, ...]], cwd: Path, env: dict[str, str],
                     log: Any) -> Session:
        python, args = key[1], list(key[2])
        argv = [python, "-m", "pytest", "-p", PLUGIN_NAME, *args]
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(cwd),
                env=env, start_new_session=True)
        except OSError as exc:
            raise TaskError(f"cannot start pytest with {python!r}: {exc}") from None
        session = Session(key=key, proc=proc, lines=_lines(proc.stdout), ready={}, log=log)
        trio.lowlevel.spawn_system_task(_pump_stderr, session)
        try:
            with trio.fail_after(START_TIMEOUT):
                first = await _next_message(session)
                early: list[dict[str, Any]] = []
                while first is not None and first.get("ev") == "warning":
                    early.append(first)  # configuration/collection warnings come before "ready"
                    first = await _next_message(session)
        except trio.TooSlowError:
            await close_session(session)
            raise TaskError(f"pytest did not finish collecting within {START_TIMEOUT:g} s") from None
        if first is None or first.get("ev") != "ready":
            await close_session(session)
            tail = session.tail.text()
            if "No module named pytest" in tail:
                raise TaskError(f"the worker's test Python {python} has no pytest installed; install pytest "
                                "(and the suite's dependencies) there, or point the worker's test_python "
                                f"setting (DTF_TEST_PYTHON) at an interpreter that has them. Output:\n{tail}")
            raise TaskError(f"pytest exited before collecting (exit code {session.proc.returncode}): the suite "
                            f"or its arguments cannot be used on this worker. Output tail:\n{tail}")
        session.ready = dict(first, early_warnings=early)
        return session


async def close_session(session: Session) -> None:
    """Ask a session to exit, then kill its process group."""
    with trio.CancelScope(shield=True):
        if session.alive():
            try:
                assert session.proc.stdin is not None
                await session.proc.stdin.send_all(b'{"cmd":"exit"}\n')
                await session.proc.stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            with trio.move_on_after(2):
                await session.proc.wait()
        if session.alive():
            try:
                os.killpg(session.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            await session.proc.wait()


async def _lines(stream: Any) -> Any:
    buffer = b""
    while True:
        chunk = await stream.receive_some(1 << 20)
        if not chunk:
            if buffer:
                yield buffer
            return
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line
        if len(buffer) > _MAX_PROTOCOL_LINE:
            raise TaskError("the pytest session sent a protocol line over 256 MiB")


async def _next_message(session: Session) -> dict[str, Any] | None:
    try:
        raw = await session.lines.__anext__()
    except StopAsyncIteration:
        await session.proc.wait()
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise TaskError(f"unreadable message from the pytest session: {raw[:200]!r}") from None


async def _pump_stderr(session: Session) -> None:
    stream = session.proc.stderr
    buffer = b""
    try:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                session.tail.add(line)
                if session.log is not None:
                    session.log(line)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass


_POOL = SessionPool()

PROGRESS_INTERVAL = 0.25
"""How often a running chunk posts its newly finished tests (and learns of a steal request)."""
PROGRESS_BATCH = 2000


class _Progress:
    """A running chunk's side channel to the coordinator (:mod:`dtf_app.coordinator.pytest_stream`):
    posts finished tests as they come, passes steal requests to the session, submits what it gave up.

    Best effort for the reports (the chunk's result carries them all); not for a stolen tail: the
    tests a session gave up run either in the chunk the coordinator submitted for them or, when that
    submission failed, in this chunk after all (:attr:`local`)."""

    def __init__(self, chunk: dict[str, Any], ctx: RunContext, settings: Any) -> None:
        self.run_id = chunk["run_id"]
        self.task_id, self.attempt = ctx.task_id, ctx.attempt
        self.worker_id = ctx.env.get("DTF_WORKER_ID", "")
        self.urls = [u.rstrip("/") for u in (getattr(settings, "coordinator", None) or [])]
        self.api_key = getattr(settings, "api_key", None)
        self.credential = getattr(ctx, "credential", None)
        self.enabled = bool(self.urls) and bool(self.worker_id)
        self.events: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.local: list[str] = []
        self.given: list[dict[str, Any]] = []
        self.session: Session | None = None
        self.running = False
        self.steal_sent = False
        self.answered = False
        self.exclude = True
        self._seq = 0
        self._lock = trio.Lock()
        self._stdin_lock = trio.Lock()
        self._http: Any = None
        self._warned = False

    def add(self, event: dict[str, Any]) -> None:
        if self.enabled:
            self.events.append(event)

    def answer(self, nodeids: list[str]) -> None:
        self.answered = True
        self.answers.append({"nodeids": nodeids, "seq": self._seq, "exclude": self.exclude})
        self._seq += 1

    async def start_command(self, command: dict[str, Any]) -> None:
        assert self.session is not None and self.session.proc.stdin is not None
        async with self._stdin_lock:
            await self.session.proc.stdin.send_all(json.dumps(command).encode() + b"\n")
        self.running, self.steal_sent, self.answered = True, False, False

    async def _post(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """One post, trying each coordinator; the answer, or None (unreachable, refused, stale)."""
        import httpx

        if self._http is None:
            from dtf_app import protocol

            headers = {"X-API-Key": self.api_key} if self.api_key else {}
            if self.credential:
                # The coordinator takes a chunk's reports only from the worker enrolled under its id.
                headers[protocol.WORKER_CREDENTIAL_HEADER] = self.credential
            self._http = httpx.AsyncClient(timeout=10, headers=headers)
        for base in list(self.urls):
            try:
                response = await self._http.post(f"{base}/api/pytest/runs/{self.run_id}/progress",
                                                  content=json.dumps(body, default=str))
            except httpx.HTTPError as exc:
                logger.warning("cannot post chunk progress to %s: %s", base, exc)
                continue
            if response.status_code == 200:
                if self.urls[0] != base:
                    self.urls.remove(base)
                    self.urls.insert(0, base)  # stick with the one that answers
                return response.json()
            if response.status_code in (403, 404, 405, 409):
                # 409: this attempt is no longer the chunk's; 404/405: a coordinator without the run
                # stream (older), or one that does not know the task; 403: our credential is refused.
                # Stop posting; the result has it all.
                logger.info("chunk progress not taken by %s (HTTP %d): %s", base, response.status_code,
                            response.text[:300])
                self.enabled = False
                return None
            if response.status_code in (307, 503):
                continue  # a follower (or no leader yet): the next coordinator may be the leader
            if not self._warned:
                self._warned = True
                logger.warning("chunk progress refused by %s: HTTP %d %s", base, response.status_code,
                               response.text[:300])
        return None

    async def flush(self) -> None:
        """Post what is buffered (reports, answers); act on a steal request in the reply."""
        async with self._lock:
            while self.enabled and (self.events or self.answers or self._first):
                batch, self.events = self.events[:PROGRESS_BATCH], self.events[PROGRESS_BATCH:]
                # The events go as one JSON string: the coordinator only stores and forwards them, so it
                # checks that string (C-speed parse) instead of walking every report field.
                body: dict[str, Any] = {"task_id": self.task_id, "attempt": self.attempt,
                                        "worker_id": self.worker_id,
                                        "events_json": json.dumps(batch, separators=(",", ":"), default=str)}
                answer = self.answers.pop(0) if self.answers else None
                if answer is not None:
                    body["stolen"] = answer
                reply = None
                for _ in range(3 if answer and answer["nodeids"] else 1):
                    reply = await self._post(body)
                    if reply is not None or not self.enabled:
                        break
                self._first = False
                if answer is not None and answer["nodeids"]:
                    if reply is not None and reply.get("stolen_task"):
                        self.given.append({"nodeids": answer["nodeids"], "task_id": reply["stolen_task"]})
                    else:
                        self.local.extend(answer["nodeids"])
                if reply is None:
                    self.events = []  # reports are best effort; the result has them all
                    continue
                request = reply.get("steal")
                if request and self.running and not self.steal_sent and self.session is not None:
                    self.exclude = request.get("for_worker") not in (None, self.worker_id)
                    self.steal_sent = True
                    assert self.session.proc.stdin is not None
                    async with self._stdin_lock:
                        await self.session.proc.stdin.send_all(json.dumps(
                            {"cmd": "steal", "group": request.get("group") or "file"}).encode() + b"\n")
                if not batch and answer is None:
                    break

    _first = True  # the first post goes out even when empty: it tells the client the chunk started

    async def flush_answers(self) -> None:
        if self.answers:
            await self.flush()
        for answer in self.answers:  # posting disabled meanwhile: nothing was submitted for them
            self.local.extend(answer["nodeids"])
        self.answers = []

    async def loop(self) -> None:
        try:
            while self.enabled:
                await self.flush()
                await trio.sleep(PROGRESS_INTERVAL)
        finally:
            if self._http is not None:
                with trio.CancelScope(shield=True):
                    await self._http.aclose()

    async def taken_before(self) -> list[str]:
        """The tests earlier attempts of this chunk gave up to stolen-tail chunks (a retry skips them)."""
        if not self.enabled:
            return []
        reply = await self._post({"task_id": self.task_id, "attempt": self.attempt, "worker_id": self.worker_id,
                                  "events_json": "[]", "taken": True})
        return list((reply or {}).get("taken") or [])


def _plugin_dir(data_dir: Path) -> Path:
    """A directory holding only the remote plugin, for the session's PYTHONPATH."""
    target = data_dir / "pytest" / "plugin"
    source = Path(__file__).with_name("remote.py")
    dest = target / f"{PLUGIN_NAME}.py"
    try:
        text = source.read_text(encoding="utf-8")
    except OSError:
        # A frozen build keeps compiled modules only: the plugin's source must be bundled as data
        # (PyInstaller: --add-data dtf_app/pytest_dist/remote.py:dtf_app/pytest_dist).
        raise TaskError(f"this worker build has no {source.name} to hand to the test Python ({source}); "
                        "bundle dtf_app/pytest_dist/remote.py as data") from None
    if not dest.exists() or dest.read_text(encoding="utf-8") != text:
        target.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)
    return target


async def _fetch_bundle(digest: str, settings: Any, cache: Path) -> Path:
    target = cache / digest
    if target.is_dir():
        return target
    import httpx

    headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
    errors = []
    for base in settings.coordinator:
        url = f"{base.rstrip('/')}/api/bundles/{digest}"
        try:
            async with httpx.AsyncClient(timeout=120, headers=headers) as client:
                response = await client.get(url)
        except httpx.HTTPError as exc:
            errors.append(f"{base}: {exc}")
            continue
        if response.status_code == 200:
            data = response.content
            return await trio.to_thread.run_sync(bundlemod.unpack, data, digest, cache)
        errors.append(f"{base}: HTTP {response.status_code} {response.text[:200]}")
    raise TaskError(f"cannot fetch bundle {digest[:12]} from the coordinator: {'; '.join(errors)}")


async def run_chunk(task: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Run one chunk in a (reused) pytest session; the result document of the ``test`` task."""
    config = task.get("config") or {}
    try:
        chunk = validate_chunk(config.get("pytest_dist"), "config.pytest_dist")
    except ChunkError as exc:
        raise TaskError(str(exc)) from None
    settings = ctx.settings
    data_dir = Path(settings.data_dir if settings is not None else ctx.work_dir.parent.parent).resolve()
    python = python_executable(getattr(settings, "test_python", None) or config.get("python"),
                               "the worker's test_python setting")
    if chunk.get("bundle"):
        if settings is None:
            raise TaskError("this worker cannot fetch bundles (no coordinator settings in its run context)")
        root = await _fetch_bundle(chunk["bundle"], settings, data_dir / "pytest" / "bundles")
        cwd = (root / chunk.get("workdir", "")).resolve()
        if not cwd.is_dir() or not cwd.is_relative_to(root.resolve()):
            raise TaskError(f"the bundle has no directory {chunk.get('workdir')!r} to run pytest in")
    else:
        cwd = Path.cwd()
    cache_dir = data_dir / "pytest" / "cache" / chunk["suite"]
    args = list(chunk.get("args", []))
    if not any(a in ("no:cacheprovider", "-pno:cacheprovider") for a in args):
        args += ["-o", f"cache_dir={cache_dir}"]  # not inside the (shared, read-mostly) bundle
    env = dict(os.environ)
    env.update(ctx.env)
    env["PYTHONPATH"] = str(_plugin_dir(data_dir)) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["DTF_RUN_ID"] = chunk["run_id"]
    env.setdefault("PYTHONUNBUFFERED", "1")
    key = (str(cwd), python, tuple(args))
    started = time.perf_counter()
    progress = _Progress(chunk, ctx, settings)
    nodeids = chunk.get("nodeids")
    if ctx.attempt > 1 and nodeids is not None:
        # A retry: tests an earlier attempt gave up to another chunk run there, not here too.
        taken = set(await progress.taken_before())
        nodeids = [n for n in nodeids if n not in taken]
    session, reused = await _POOL.acquire(key, cwd, env, ctx.log)
    ready = session.ready
    tests: list[dict[str, Any]] = []
    pending_warnings: list[dict[str, Any]] = []
    stray: list[dict[str, Any]] = [] if reused else list(ready.get("early_warnings") or [])
    done: dict[str, Any] | None = None
    ok = False
    progress.session = session
    progress.add({"kind": "ready", "collect_errors": ready.get("errors") or [], "collected": ready.get("collected"),
                  "deselected": ready.get("deselected"), "warnings": stray[:100], "working_dir": str(cwd)})
    try:
        async with trio.open_nursery() as nursery:
            if progress.enabled:
                nursery.start_soon(progress.loop)
            command: dict[str, Any] | None = {
                "cmd": "run", "id": f"{chunk['run_id']}/{chunk.get('chunk', 0)}", "nodeids": nodeids,
                "shard": chunk.get("shard"), "digest": chunk.get("digest"), "verbose": chunk.get("verbose", 0)}
            while command is not None:
                await progress.start_command(command)
                while True:
                    message = await _next_message(session)
                    if message is None:
                        raise TaskError(f"the pytest session exited during the chunk (exit code "
                                        f"{session.proc.returncode}); output tail:\n{session.tail.text()}")
                    kind = message.get("ev")
                    if kind == "test":
                        nodeid = str(message.get("nodeid"))
                        reports = message.get("reports") or []
                        row = summarize(nodeid, reports)
                        row["report"] = {"i": len(tests), "r": compact_reports(reports)}
                        if message.get("group"):
                            row["report"]["g"] = str(message["group"])
                        mine = [w for w in pending_warnings if w.get("nodeid") == nodeid]
                        if mine:
                            row["report"]["w"] = mine
                            pending_warnings = [w for w in pending_warnings if w.get("nodeid") != nodeid]
                        tests.append(row)
                        progress.add({"kind": "test", "row": row})
                    elif kind == "warning":
                        pending_warnings.append(message)
                    elif kind == "stolen":
                        progress.answer(list(message.get("nodeids") or []))
                    elif kind == "done":
                        if done is not None:  # a local run of a stolen tail: the first answer's facts stay
                            message = dict(done, missing=[*done.get("missing", []), *message.get("missing", [])],
                                           stopped=message.get("stopped"))
                        done = message
                        break
                progress.running = False
                if progress.steal_sent and not progress.answered:
                    progress.answer([])  # the steal came after the last test: nothing given up
                await progress.flush_answers()
                command = None
                if progress.local and not done.get("stopped"):
                    # A post whose answer was lost may still have submitted its tail: what the
                    # coordinator holds runs there, the rest here (each test once, in one place).
                    taken = set(await progress.taken_before())
                    local, progress.local = [n for n in progress.local if n not in taken], []
                    if local:
                        # The coordinator could not take the stolen tail: it runs here after all.
                        command = {"cmd": "run", "id": f"{chunk['run_id']}/{chunk.get('chunk', 0)}/local",
                                   "nodeids": local, "shard": None, "digest": None,
                                   "verbose": chunk.get("verbose", 0)}
            await progress.flush()
            nursery.cancel_scope.cancel()
        ok = not done.get("stopped")
        stray.extend(pending_warnings)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise TaskError(f"lost the pytest session: {exc}; output tail:\n{session.tail.text()}") from None
    finally:
        if ok:
            session.chunks_run += 1
            _POOL.release(session)
        else:
            await close_session(session)  # cancelled, timed out or broken: its state is unknown
    elapsed = time.perf_counter() - started
    counts = {name: sum(1 for t in tests if t["outcome"] == name)
              for name in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")}
    failed = counts["failed"] + counts["error"] > 0 or bool(ready.get("errors"))
    raw = {"suite": chunk["suite"], "run_id": chunk["run_id"], "chunk": chunk.get("chunk", 0),
           "digest": ready.get("digest"), "collected": ready.get("collected"),
           "deselected": ready.get("deselected"), "collect_errors": ready.get("errors") or [],
           "collect_seconds": ready.get("collect_seconds"), "session_reused": reused,
           "session_pid": ready.get("pid"), "missing": done.get("missing") or [],
           "warnings": stray[:100], "python": python, "pytest": ready.get("pytest"),
           "stolen": progress.given}
    if done.get("nodeids") is not None:
        raw["nodeids"] = done["nodeids"]
    return {
        "status": "failure" if failed else "success",
        "metrics": {"tests_total": len(tests), "passed": counts["passed"], "failed": counts["failed"],
                    "errors": counts["error"], "skipped": counts["skipped"], "xfailed": counts["xfailed"],
                    "xpassed": counts["xpassed"], "duration": elapsed},
        "execution_time": elapsed,
        "environment": dict(environment_info(), test_python=python, test_python_version=ready.get("python")),
        "raw_data": {"pytest_dist": raw, "command": [python, "-m", "pytest", "-p", PLUGIN_NAME, *args],
                     "working_dir": str(cwd)},
        "output": session.tail.text()[-4000:],
        "tests": tests,
    }

