"""Task runners: the interface the worker agent calls, plugin lookup, and the shared subprocess machinery.

A runner is a ``dtf.runners`` plugin (built-ins: test, benchmark, custom) with
``async def run(self, task, ctx) -> ResultDocument``. The agent owns timeouts and cancellation (trio
cancel scopes); a runner that starts a subprocess does so through :func:`run_process`, which puts it in
its own session/process group and, when cancelled, kills the whole group (SIGTERM, then SIGKILL after a
short grace) before re-raising. A task owns its process group: leftovers still alive when the main process
exits are terminated too, so nothing a task started outlives it.

``TaskError`` means "the task could not run" (bad config at run time, missing test file, command not
found): the agent reports outcome ``failed`` with ``str(exc)`` and the error's ``error_class``
(protocol.ERROR_CLASSES: ``bad_config``, ``missing_file`` and ``unknown_runner`` are never retried;
``crash`` is, like timeouts; ``worker_error`` is retried and counts towards the worker's quarantine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import trio

from dtf_app.fsutil import task_umask
from dtf_app.plugins import RUNNERS_GROUP, load_plugin
from dtf_app.protocol import DEVICE_ENV_VARS

TAIL_LINES = 200
TAIL_BYTES = 8 * 1024
KILL_GRACE_SECONDS = 2.0
_MAX_LINE_BYTES = 1024 * 1024  # longer lines are cut; result lines (benchmark JSON) stay whole
_WINDOWS = sys.platform == "win32"
# Own session/process group, so one killpg reaches every child the task spawns (on Windows: a new
# process group, and the tree is ended with taskkill /T).
_NEW_GROUP: dict = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if _WINDOWS  # type: ignore[attr-defined]
                    else {"start_new_session": True})


class TaskError(Exception):
    """The task could not run; the message says what was wrong and what would be accepted.

    ``error_class`` says whether running it again could help (protocol.ERROR_CLASSES); the default,
    ``bad_config``, is for a task whose own document is wrong, which no retry can fix.
    """

    def __init__(self, message: str, *, error_class: str = "bad_config") -> None:
        super().__init__(message)
        self.error_class = error_class


@dataclass
class RunContext:
    """What the agent hands a runner besides the task itself."""

    task_id: str
    attempt: int
    work_dir: Path
    """A per-task scratch directory created (and later removed) by the agent."""
    log: Callable[[str], None] = lambda line: None
    """Called once per output line; cheap and non-blocking (the agent batches lines to the coordinator)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for subprocesses, applied over the worker's own and under the task's ``env``."""
    settings: Any = None
    """The worker's Settings (coordinator URLs, API key, data dir, test_python), for runners that need them."""
    credential: str | None = None
    """The worker's enrolment credential, for a runner's own calls that act as this worker (the pytest
    chunk's progress posts). Deliberately not in ``env``: the task's code has no business with it."""


@runtime_checkable
class Runner(Protocol):
    """A task runner plugin."""

    async def run(self, task: dict, ctx: RunContext) -> dict:
        """Run ``task`` (a TaskAssignment) and return its ResultDocument (see dtf_app.protocol)."""
        ...


_runner_cache: dict[str, Runner] = {}


def get_runner(task_type: str) -> Runner:
    """The runner for ``task_type`` from the ``dtf.runners`` plugins, instantiated once per process.

    Raises TaskError naming the available runners when none is registered or it fails to load.
    """
    runner = _runner_cache.get(task_type)
    if runner is not None:
        return runner
    try:
        factory = load_plugin(RUNNERS_GROUP, task_type)
    except LookupError as exc:
        raise TaskError(f"this worker cannot run {task_type!r} tasks: {exc}", error_class="unknown_runner") from None
    except ImportError as exc:
        raise TaskError(f"the {task_type!r} runner is broken on this worker: {exc}", error_class="unknown_runner") from None
    runner = factory() if isinstance(factory, type) else factory
    if not isinstance(runner, Runner):
        raise TaskError(f"the {task_type!r} runner plugin ({factory!r}) has no async run(task, ctx) method")
    _runner_cache[task_type] = runner
    return runner


# -- environment -------------------------------------------------------------------------------------------

REPORTED_PACKAGES = ("dtf", "pytest", "numpy", "torch", "trio", "duckdb", "psutil", "openvino")


@cache
def environment_info() -> dict:
    """Python, platform, selected package versions and GPU drivers; computed once per process."""
    import platform
    from importlib import metadata

    packages = {}
    for name in REPORTED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env = {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "packages": packages,
    }
    # Kernel driver versions are plain files: cheap, and no NVML/ROCm import on the task path.
    drivers = {}
    nvidia = _read_first_line(Path("/proc/driver/nvidia/version"))
    if nvidia:
        drivers["nvidia"] = nvidia
    amdgpu = _read_first_line(Path("/sys/module/amdgpu/version"))
    if amdgpu:
        drivers["amdgpu"] = amdgpu
    if drivers:
        env["gpu_drivers"] = drivers
    return env


def _read_first_line(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").splitlines()[0].strip() or None
    except (OSError, IndexError):
        return None


# -- subprocesses ------------------------------------------------------------------------------------------


class OutputTail:
    """The last lines of a process's output (at most TAIL_LINES lines and TAIL_BYTES characters)."""

    def __init__(self, max_lines: int = TAIL_LINES, max_chars: int = TAIL_BYTES) -> None:
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._max_chars = max_chars

    def add(self, line: str) -> None:
        self._lines.append(line)

    def text(self) -> str:
        joined = "\n".join(self._lines)
        return joined[-self._max_chars:]


@dataclass
class ProcessResult:
    """How a subprocess ended."""

    returncode: int
    output: str
    """Tail of the combined stdout/stderr."""


def unfrozen_environ() -> dict[str, str]:
    """This process's environment as a task's programs should see it.

    A frozen worker (PyInstaller) runs with the bootloader's changes: ``LD_LIBRARY_PATH`` pointing into
    the bundle (the original kept in ``LD_LIBRARY_PATH_ORIG``) and ``_PYI_*`` markers. A task's Python or
    a ``dtf`` it starts must get the machine's libraries and start as an independent program.
    """
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if original is not None:
            env["LD_LIBRARY_PATH"] = original
        else:
            env.pop("LD_LIBRARY_PATH", None)
        env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"
    return env


def build_env(ctx: RunContext, task_env: object, where: str = "config.env") -> dict[str, str]:
    """The subprocess environment: the worker's, then ``ctx.env``, then the task's ``env`` (validated).

    The device variables of a reservation (protocol.DEVICE_ENV_VARS, set in ``ctx.env`` by the agent)
    win over the task's own ``env``: a task runs on exactly the devices it reserved.
    """
    if task_env is None:
        task_env = {}
    if not isinstance(task_env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in task_env.items()
    ):
        raise TaskError(f"{where} must be an object of NAME: string values, got {task_env!r}")
    env = unfrozen_environ()
    env.update(ctx.env)
    env.update({k: str(v) for k, v in task_env.items()})
    for names in DEVICE_ENV_VARS.values():
        for name in names:
            if name in ctx.env:
                env[name] = ctx.env[name]
    # Children are often Python; unbuffered output makes log lines arrive as they happen.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def python_executable(value: object = None, where: str = "config.python") -> str:
    """The Python interpreter for a task's subprocess: ``value`` if given, else the worker's own.

    A frozen worker (PyInstaller) has no interpreter of its own: it uses ``DTF_PYTHON`` or ``python3``
    from PATH.
    """
    import shutil

    if value is None:
        if not getattr(sys, "frozen", False):
            return sys.executable
        value = os.environ.get("DTF_PYTHON") or shutil.which("python3") or shutil.which("python")
        if not value:
            raise TaskError("this frozen worker needs a Python interpreter for this task: set DTF_PYTHON "
                            "or put python3 on PATH")
        return str(value)
    if not isinstance(value, str) or not value:
        raise TaskError(f"{where} must be the path or name of a Python interpreter, got {value!r}")
    found = shutil.which(value)
    if found is None:
        raise TaskError(f"{where} {value!r} is not an executable on this worker")
    return found


def resolve_working_dir(value: object, where: str = "config.working_dir") -> Path:
    """The directory a subprocess runs in: ``value`` (must exist) or the worker's cwd."""
    if value is None:
        return Path.cwd()
    if not isinstance(value, str) or not value:
        raise TaskError(f"{where} must be a directory path string, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise TaskError(f"{where} {value!r} is not an existing directory on worker (cwd {Path.cwd()})")
    return path.resolve()


async def run_process(
    argv: Sequence[str],
    ctx: RunContext,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin_data: bytes | None = None,
    on_line: Callable[[str], bool] | None = None,
    kill_grace: float = KILL_GRACE_SECONDS,
) -> ProcessResult:
    """Run ``argv`` in a new process group, streaming each output line to ``ctx.log``.

    stderr is merged into stdout. ``on_line`` sees every line first; when it returns True the line is
    consumed (neither logged nor kept in the tail), which is how the benchmark worker hands back its
    result. Cancellation kills the whole process group and re-raises. A missing or non-executable
    command raises TaskError.
    """
    try:
        proc = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(cwd) if cwd else None,
            env=dict(env) if env is not None else None,
            **_NEW_GROUP,
            # The node runs under umask 077 (its state is private); a task gets the umask it was started with.
            **({} if _WINDOWS else {"umask": task_umask()}),
        )
    except FileNotFoundError:
        raise TaskError(f"command not found: {argv[0]!r} (not on PATH of the worker, or a wrong path)",
                        error_class="missing_file") from None
    except PermissionError:
        raise TaskError(f"command {argv[0]!r} is not executable (permission denied)") from None
    except OSError as exc:
        # The worker could not start a process at all (no memory, no file descriptors, no space):
        # the machine's fault, counted towards quarantine.
        raise TaskError(f"command {argv[0]!r} could not be started: {exc}", error_class="worker_error") from None

    tail = OutputTail()

    def emit(raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if on_line is not None and on_line(line):
            return
        tail.add(line)
        ctx.log(line)

    async def pump(done: trio.Event) -> None:
        buffer = b""
        try:
            assert proc.stdout is not None
            while True:
                chunk = await proc.stdout.receive_some(65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    emit(raw)
                if len(buffer) > _MAX_LINE_BYTES:  # a newline-free flood: hand it over in pieces
                    emit(buffer)
                    buffer = b""
            if buffer:
                emit(buffer)
        finally:
            done.set()

    async def feed() -> None:
        assert proc.stdin is not None and stdin_data is not None
        try:
            await proc.stdin.send_all(stdin_data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the child exited without reading its input; its exit code tells the story
        finally:
            await proc.stdin.aclose()

    try:
        async with trio.open_nursery() as nursery:
            pump_done = trio.Event()
            nursery.start_soon(pump, pump_done)
            if stdin_data is not None:
                nursery.start_soon(feed)
            returncode = await proc.wait()
            # Leftovers of the group (a backgrounded child) may hold the pipe open; they end with the task.
            await _terminate_group(proc, kill_grace)
            with trio.move_on_after(kill_grace):
                await pump_done.wait()
            nursery.cancel_scope.cancel()
    except BaseException:
        # Cancelled (timeout, cancel from the coordinator) or an error in this code: never leave orphans.
        with trio.CancelScope(shield=True):
            await _terminate_group(proc, kill_grace)
        raise
    finally:
        with trio.CancelScope(shield=True):
            # Our ends of the pipes; the process itself has been reaped above.
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    await stream.aclose()
    return ProcessResult(returncode=returncode, output=tail.text())


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member changed credentials (setuid); nothing more this worker may do about it.
        return True


def _group_alive(pgid: int) -> bool:
    """Whether a process group still has a live (non-zombie) member."""
    if not _killpg(pgid, 0):
        return False
    # Killed members reparented to an init that reaps lazily (containers) linger as zombies and still
    # count for killpg; they are dead for our purposes.
    import psutil

    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


async def _terminate_group(proc: trio.Process, grace: float) -> None:
    """SIGTERM the process group, wait up to ``grace`` for it to empty, then SIGKILL what is left."""
    if _WINDOWS:
        if proc.returncode is None:
            await trio.run_process(["taskkill", "/T", "/F", "/PID", str(proc.pid)], check=False,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await proc.wait()
        return
    pgid = proc.pid
    if not _killpg(pgid, signal.SIGTERM):
        if proc.returncode is None:
            await proc.wait()
        return
    with trio.move_on_after(grace):
        if proc.returncode is None:
            await proc.wait()
        # Members other than the leader are not our children: poll until the group is empty.
        while _group_alive(pgid):
            await trio.sleep(0.02)
        return
    _killpg(pgid, signal.SIGKILL)
    if proc.returncode is None:
        await proc.wait()
