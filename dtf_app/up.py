"""``dtf up``: a local cluster of real processes — one coordinator and N workers — for demos and CI.

The coordinator starts first (port 0 by default: its real URL is read back from ``<data_dir>/node.json``),
its bootstrap ``admin.key`` creates (once) a worker-role key kept in ``<data_dir>/worker.key`` (0600), and
the workers get that key through ``DTF_API_KEY`` in their environment, never on a command line where ``ps``
would show it. Child output goes to ``<data_dir>/logs/*.log``.

With ``--run-file`` the tasks are submitted, waited for and summarised, then everything stops and the exit
code says whether every task completed with a success result. Otherwise the cluster runs until Ctrl-C or
SIGTERM. Either way children get SIGTERM, ten seconds, then SIGKILL; on Linux they also get SIGTERM from
the kernel if ``dtf up`` itself dies without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtf_app import fsutil
from dtf_app.client import ClientError

STOP_GRACE_SECONDS = 10.0
START_TIMEOUT_SECONDS = 60.0
WORKER_KEY_NAME = "dtf-up-workers"


class UpError(Exception):
    """``dtf up`` cannot go on; ``exit_code`` follows the CLI's convention."""

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Stop(BaseException):
    """Raised from the SIGTERM/SIGHUP handler so the ``finally`` that stops the children runs."""


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when ``dtf up`` dies (even by SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux / no prctl: the signal handlers in dtf up still stop children on a clean exit


def dtf_command() -> list[str]:
    """How to start another ``dtf``: the frozen executable itself, or this interpreter with ``-m dtf_app``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "dtf_app"]


class Child:
    """One ``python -m dtf_app`` child process with its log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        self._log = os.fdopen(fsutil.open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")
        self.proc = subprocess.Popen(
            [*dtf_command(), *argv], stdout=self._log, stderr=subprocess.STDOUT, env=env,
            stdin=subprocess.DEVNULL, start_new_session=False,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def close(self) -> None:
        self._log.close()


def stop_children(children: list[Child], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every child (workers before the coordinator), wait up to ``grace`` seconds, then SIGKILL."""
    for child in reversed(children):
        child.terminate()
    deadline = time.monotonic() + grace
    for child in reversed(children):
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"dtf up: {child.name} did not stop within {grace:.0f} s; killing it", file=sys.stderr)
            child.proc.kill()
            child.proc.wait(timeout=5)
        child.close()


def _child_env(api_key: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The user's client settings must not leak into the children: they get exactly what dtf up decides.
    for name in ("DTF_API_KEY", "DTF_COORDINATOR", "DTF_MODE", "DTF_CONFIG", "DTF_PORT", "DTF_DATA_DIR",
                 "DTF_WORKER_ID", "DTF_DB_PATH", "CONFIG_FILE", "COORDINATOR_URL", "WORKER_ID", "COORDINATOR_ID",
                 "ENABLE_HIGH_AVAILABILITY", "HIGH_AVAILABILITY_PEERS"):
        env.pop(name, None)
    # Children import dtf_app the same way this process did (source checkout or installed package). A frozen
    # child is the executable itself: a PYTHONPATH into its bundle would only leak into the Python
    # interpreters its tasks start (their pytest would load the bundle's packages).
    package_root = str(Path(__file__).resolve().parents[1])
    if not getattr(sys, "frozen", False) and package_root not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if api_key:
        env["DTF_API_KEY"] = api_key
    return env


def _wait_until(what: str, check: Callable[[], Any], watched: list[Child], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in watched:
            if not child.alive():
                code = child.proc.returncode
                raise UpError(f"{child.name} exited with code {code} while waiting for {what}; "
                              f"the end of {child.log_path}:\n{child.log_tail()}", 2 if code == 2 else 3)
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise UpError(f"timed out after {timeout:.0f} s waiting for {what} (logs in "
                  f"{', '.join(str(c.log_path) for c in watched)})")


def _read_node_file(path: Path, pid: int) -> str | None:
    try:
        node = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(node, dict) and node.get("pid") == pid and isinstance(node.get("url"), str):
        return node["url"]
    return None


def _check_not_running(data_dir: Path) -> None:
    node_file = data_dir / "node.json"
    try:
        node = json.loads(node_file.read_text())
        pid = int(node["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise UpError(f"a coordinator (pid {pid}, {node.get('url')}) already runs from {data_dir}; stop it or "
                  "use another --data-dir", 2)


def _worker_key(client: Any, data_dir: Path) -> str:
    key_file = data_dir / "worker.key"
    if key_file.exists():
        key = key_file.read_text().strip()
        names = {k["name"] for k in client.keys()}
        if key and WORKER_KEY_NAME in names:
            return key
    try:
        created = client.create_key(WORKER_KEY_NAME, "worker")
    except ClientError as exc:
        if exc.status != 409:
            raise
        # The key exists in the cluster but its file was lost: the secret cannot be read back, so replace it.
        client.delete_key(WORKER_KEY_NAME)
        created = client.create_key(WORKER_KEY_NAME, "worker")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(created["key"] + "\n")
    return created["key"]


def run_up(args: argparse.Namespace) -> int:
    """Run ``dtf up``; returns the exit code. Raises UpError/ClientError/TaskFileError for the CLI to report."""
    from dtf_app.client import Client, load_task_file
    from dtf_app.config import default_data_dir

    workers = args.workers
    if not 0 <= workers <= 64:
        raise UpError(f"--workers must be between 0 and 64, got {workers}", 2)
    port = getattr(args, "port", None) or 0
    if not 0 <= port <= 65535:
        raise UpError(f"--port must be between 0 and 65535, got {port}", 2)
    slots = getattr(args, "max_concurrent_tasks", None)
    if slots is not None and slots < 1:
        raise UpError(f"--max-concurrent-tasks must be at least 1, got {slots}", 2)
    profile = getattr(args, "simulate_hardware", None)
    if profile and not Path(profile).is_file():
        raise UpError(f"--simulate-hardware: {profile} does not exist (examples in assets/hardware/*.json)", 2)
    # Read the task file before starting anything: a typo should not cost a cluster start-up.
    tasks = load_task_file(args.run_file) if args.run_file else None

    data_dir = Path(getattr(args, "data_dir", None) or default_data_dir()).resolve()
    logs = data_dir / "logs"
    fsutil.private_dir(data_dir)  # the coordinator's data dir and what dtf up keeps in it: owner only
    fsutil.private_dir(logs)
    _check_not_running(data_dir)

    children: list[Child] = []
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and `kill -INT` should still stop us.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def on_signal(signum: int, frame: Any) -> None:
        raise _Stop(signum)

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        coordinator = Child("coordinator", ["--mode", "coordinator", "--port", str(port), "--host", "127.0.0.1",
                                            "--data-dir", str(data_dir)],
                            logs / "coordinator.log", _child_env())
        children.append(coordinator)
        url = _wait_until("the coordinator to start", lambda: _read_node_file(data_dir / "node.json",
                                                                                coordinator.proc.pid),
                          [coordinator], START_TIMEOUT_SECONDS)
        key_path = data_dir / "admin.key"
        admin_key = _wait_until(f"{key_path}", lambda: key_path.exists() and key_path.read_text().strip(),
                                [coordinator], START_TIMEOUT_SECONDS)
        with Client(url, admin_key) as client:
            _wait_until("the coordinator's /status to say ready", lambda: _status_ok(client), [coordinator],
                        START_TIMEOUT_SECONDS)
            worker_key = _worker_key(client, data_dir)
            for i in range(1, workers + 1):
                # A stable id per slot number: a restarted `dtf up` finds its workers' outboxes again.
                argv = ["--mode", "worker", "--coordinator", url, "--worker-id", f"w{i}",
                        "--data-dir", str(data_dir / "workers" / f"w{i}")]
                if slots is not None:
                    argv += ["--max-concurrent-tasks", str(slots)]
                if profile:
                    argv += ["--simulate-hardware", str(Path(profile).resolve())]
                children.append(Child(f"worker w{i}", argv, logs / f"worker-w{i}.log", _child_env(worker_key)))
            if workers:
                _wait_until(f"{workers} worker(s) to come online", lambda: _online(client) >= workers,
                            children, START_TIMEOUT_SECONDS)
            _print_where(url, data_dir, workers, key_path)
            if tasks is not None:
                return _run_file(client, tasks, args, data_dir)
            if not args.headless:
                print("dtf up: the dashboard comes in a later release; running headless (Ctrl-C stops the "
                      "cluster)", file=sys.stderr)
            return _serve(client, children)
    except (_Stop, KeyboardInterrupt):
        print("\ndtf up: stopping the cluster", file=sys.stderr)
        # Interrupting a --run-file run means its tasks did not all finish: not a success.
        return 130 if tasks is not None else 0
    finally:
        # A second Ctrl-C must not abandon children half-stopped; stop_children is bounded (grace + kill).
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            stop_children(children)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _status_ok(client: Any) -> bool:
    """True once GET /status says ready (it answers 503 "starting" until the coordinator has started)."""
    try:
        status = client.open_status()
        return status.get("status") == "ok" and status.get("ready", True) is True
    except ClientError:
        return False


def _online(client: Any) -> int:
    # busy and error workers are connected too (only "offline" is not).
    return sum(1 for w in client.workers() if w.get("connected", w.get("status") == "online"))


def _print_where(url: str, data_dir: Path, workers: int, key_path: Path) -> None:
    print(f"dtf up: coordinator {url} with {workers} worker(s)", file=sys.stderr)
    print(f"  admin key:  {key_path} (use: dtf --data-dir {data_dir} ... or --api-key)", file=sys.stderr)
    print(f"  DuckDB:     {data_dir / 'dtf.duckdb'}", file=sys.stderr)
    print(f"  logs:       {data_dir / 'logs'}/*.log", file=sys.stderr)


def _print_result_details(client: Any, final: list[dict]) -> None:
    """Below the task table: benchmark configurations and test counts, read back from DuckDB."""
    from dtf_app import output

    bench_rows: list[dict] = []
    for task in final:
        if task.get("status") != "completed" or task.get("type") == "custom":
            continue
        detail = client.result(f"{task['task_id']}-{task.get('attempts')}")
        bench_rows.extend(detail.get("benchmarks") or [])
        if task.get("type") == "test":
            outcomes: dict[str, int] = {}
            for row in detail.get("tests") or []:
                outcomes[row.get("outcome")] = outcomes.get(row.get("outcome"), 0) + 1
            summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
            print(f"\ntests of {task.get('name') or task['task_id']}: {summary or 'none collected'}")
    if bench_rows:
        print("\nbenchmarks:")
        print(output.benchmarks_table(bench_rows))


def _run_file(client: Any, tasks: list[dict], args: argparse.Namespace, data_dir: Path) -> int:
    from dtf_app import output
    from dtf_app.client import wait_for_tasks

    created = client.submit(tasks)
    created = created if isinstance(created, list) else [created]
    print(f"dtf up: submitted {len(created)} task(s) from {args.run_file}", file=sys.stderr)
    progress = output.Progress()
    try:
        final = wait_for_tasks(client, created, on_counts=progress.update)
    finally:
        progress.close()
    if getattr(args, "json", False):
        output.print_json(final)
    else:
        print(output.tasks_table(final))
        _print_result_details(client, final)
    print(f"dtf up: results are in {data_dir / 'dtf.duckdb'}", file=sys.stderr)
    ok = all(t.get("status") == "completed" and output.result_status(t) == "success" for t in final)
    return 0 if ok else 1


def _serve(client: Any, children: list[Child], every: float = 5.0) -> int:
    from dtf_app import output

    last = ""
    while True:
        for child in children:
            if not child.alive():
                raise UpError(f"{child.name} exited unexpectedly with code {child.proc.returncode}; the end of "
                              f"{child.log_path}:\n{child.log_tail()}")
        try:
            status = client.status()
            tasks, workers = status.get("tasks") or {}, status.get("workers") or {}
            line = (f"workers {workers.get('online', 0)}/{workers.get('total', 0)} online | tasks "
                    + output.counts_line(tasks, int(tasks.get("total") or 0)))
        except ClientError as exc:
            line = f"status unavailable: {exc.message}"
        if line != last or not sys.stderr.isatty():
            print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr)
            last = line
        time.sleep(every)
