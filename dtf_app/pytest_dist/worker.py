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
    session, reused = await _POOL.acquire(key, cwd, env, ctx.log)
    ready = session.ready
    tests: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    stray: list[dict[str, Any]] = [] if reused else list(ready.get("early_warnings") or [])
    done: dict[str, Any] | None = None
    ok = False
    try:
        command = {"cmd": "run", "id": f"{chunk['run_id']}/{chunk.get('chunk', 0)}",
                   "nodeids": chunk.get("nodeids"), "shard": chunk.get("shard"), "digest": chunk.get("digest"),
                   "verbose": chunk.get("verbose", 0)}
        assert session.proc.stdin is not None
        await session.proc.stdin.send_all(json.dumps(command).encode() + b"\n")
        while True:
            message = await _next_message(session)
            if message is None:
                raise TaskError(f"the pytest session exited during the chunk (exit code {session.proc.returncode}); "
                                f"output tail:\n{session.tail.text()}")
            kind = message.get("ev")
            if kind == "test":
                nodeid = str(message.get("nodeid"))
                reports = message.get("reports") or []
                row = summarize(nodeid, reports)
                row["report"] = {"i": len(tests), "r": compact_reports(reports)}
                if message.get("group"):
                    row["report"]["g"] = str(message["group"])
                tests.append(row)
            elif kind == "warning":
                warnings.append(message)
            elif kind == "done":
                done = message
                break
        ok = not done.get("stopped")
        by_test = {row["nodeid"]: row for row in tests}
        for warning in warnings:
            row = by_test.get(warning.get("nodeid"))
            if row is not None:
                row["report"].setdefault("w", []).append(warning)
            else:
                stray.append(warning)
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
           "warnings": stray[:100], "python": python, "pytest": ready.get("pytest")}
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

