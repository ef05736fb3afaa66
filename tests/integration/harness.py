"""Real processes on 127.0.0.1 for integration tests: a coordinator, workers, and an API client.

Nothing here is simulated: each node is ``python -m dtf_app --mode ...`` in its own process, bound to
an ephemeral port; the tests talk to it over HTTP with real API keys and kill it with real signals.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DTF_API_KEY", None)
    env.pop("DTF_COORDINATOR", None)
    env.update(extra or {})
    return env


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; return its value or fail with what was awaited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Node:
    """A dtf process with its log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 python_args: tuple[str, ...] = ()) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, *python_args, "-m", "dtf_app", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=_env(env), start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class Cluster:
    """A coordinator and its workers in real processes, torn down at the end of a test."""

    def __init__(self, root: Path, *, worker_timeout: float = 3.0, heartbeat_interval: float = 1.0) -> None:
        self.root = root
        self.data_dir = root / "coord"
        self.worker_timeout = worker_timeout
        self.heartbeat_interval = heartbeat_interval
        self.coordinator: Node | None = None
        self.workers: list[Node] = []
        self.url = ""
        self.port = 0
        self.admin_key = ""
        self._worker_key = ""

    # -------------------------------------------------------------- coordinator
    def start_coordinator(self, python_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
        """Start (or restart, on the same port so workers find it again) the coordinator."""
        node_file = self.data_dir / "node.json"
        if node_file.exists():
            node_file.unlink()
        self.coordinator = self.node(["--mode", "coordinator", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir",
                                 str(self.data_dir), "--worker-timeout", str(self.worker_timeout),
                                 "--heartbeat-interval", str(self.heartbeat_interval)],
                          self.root / "coordinator.log", env=env, python_args=python_args)
        pid = self.coordinator.proc.pid

        def ready() -> str | None:
            if self.coordinator.proc.poll() is not None:
                raise AssertionError(f"coordinator exited early:\n{self.coordinator.output()}")
            info = json.loads(node_file.read_text())
            if info.get("pid") != pid:
                return None
            # /status answers 503 "starting" until recovery, the bootstrap key and the loops are done.
            status = httpx.get(info["url"] + "/status", timeout=2)
            status.raise_for_status()
            return info["url"] if status.json().get("ready") is True else None

        self.url = wait_for(ready, what="coordinator to serve")
        self.port = int(self.url.rsplit(":", 1)[1])
        self.admin_key = (self.data_dir / "admin.key").read_text().strip()
        return self.url

    def node(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
             python_args: tuple[str, ...] = ()) -> Node:
        """A dtf process whose local-coordinator registry is private to this test."""
        return Node(args, log_path, env={"DTF_STATE_DIR": str(self.root / "state"), **(env or {})},
                    python_args=python_args)

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a `dtf` CLI command to completion (same private registry as the nodes)."""
        return subprocess.run([sys.executable, "-m", "dtf_app", *args], capture_output=True, text=True,
                              timeout=timeout, env=_env({"DTF_STATE_DIR": str(self.root / "state"), **(env or {})}))

    # -------------------------------------------------------------- api
    def api(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        headers.setdefault("X-API-Key", key if key is not None else self.admin_key)
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def create_key(self, role: str, name: str | None = None) -> str:
        response = self.api("POST", "/api/keys", json={"name": name or f"{role}-{time.monotonic_ns()}", "role": role})
        assert response.status_code == 201, response.text
        return response.json()["key"]

    @property
    def worker_key(self) -> str:
        if not self._worker_key:
            self._worker_key = self.create_key("worker", "integration-workers")
        return self._worker_key

    # -------------------------------------------------------------- workers
    def start_worker(self, name: str, *, slots: int = 2, simulate: str | None = None,
                     tags: str | None = None, python_args: tuple[str, ...] = (),
                     data_dir: Path | None = None, api_key: str | None = None,
                     env: dict[str, str] | None = None) -> Node:
        """A worker process; its data dir (default ``workers/<name>``) keeps its credential across restarts."""
        args = ["--mode", "worker", "--coordinator", self.url, "--worker-id", name, "--data-dir",
                str(data_dir or self.worker_dir(name)), "--max-concurrent-tasks", str(slots),
                "--heartbeat-interval", str(self.heartbeat_interval)]
        if simulate:
            args += ["--simulate-hardware", str(ASSETS / "hardware" / simulate)]
        if tags:
            args += ["--tags", tags]
        node = self.node(args, self.root / f"worker-{name}.log", env={"DTF_API_KEY": api_key or self.worker_key,
                                                                    **(env or {})},
                         python_args=python_args)
        self.workers.append(node)
        return node

    def worker_dir(self, name: str) -> Path:
        return self.root / "workers" / name

    def credential(self, name: str, data_dir: Path | None = None) -> str:
        """The credential a worker process keeps in its data dir (what binds it to its id)."""
        return (Path(data_dir or self.worker_dir(name)) / f"worker-{name}.credential").read_text().strip()

    def wait_workers(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        def online() -> list[dict[str, Any]] | None:
            # Connected, whatever its status says (online, busy, or error when its health is critical).
            workers = [w for w in self.api("GET", "/api/workers").json()["workers"]
                       if w.get("connected", w["status"] == "online")]
            return workers if len(workers) >= count else None

        return wait_for(online, timeout, what=f"{count} workers online")

    # -------------------------------------------------------------- tasks
    def submit(self, tasks: Any, **params: Any) -> httpx.Response:
        return self.api("POST", "/api/tasks", json=tasks, params=params)

    def task(self, task_id: str) -> dict[str, Any]:
        return self.api("GET", f"/api/tasks/{task_id}").json()

    def wait_task(self, task_id: str, states: tuple[str, ...] = ("completed", "failed", "cancelled"),
                  timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(lambda: (t := self.task(task_id))["status"] in states and t, timeout,
                        what=f"task {task_id} to reach {states}")

    def stop(self) -> None:
        for node in self.workers:
            node.stop()
        if self.coordinator is not None:
            self.coordinator.stop()


# --------------------------------------------------------------------- a cluster of coordinators
SECRET = "integration-cluster-secret-0123456789"


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class HACluster:
    """Coordinators with ``--peers`` (and the cluster secret) on 127.0.0.1, workers given every URL."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.ids = [f"c{i + 1}" for i in range(size)]
        self.ports = dict(zip(self.ids, _free_ports(size), strict=True))
        self.peers = ",".join(f"{i}=http://127.0.0.1:{p}" for i, p in self.ports.items())
        self.nodes: dict[str, Node] = {}
        self.workers: list[Node] = []
        self.key = ""

    def url(self, node_id: str) -> str:
        return f"http://127.0.0.1:{self.ports[node_id]}"

    @property
    def urls(self) -> str:
        return ",".join(self.url(i) for i in self.ids)

    def env(self) -> dict[str, str]:
        return {"DTF_CLUSTER_SECRET": SECRET, "DTF_STATE_DIR": str(self.root / "state")}

    def peers_for(self, node_id: str) -> str:
        """The ``--peers`` value node ``node_id`` starts with (a fault-injecting mesh gives each its own)."""
        return self.peers

    def start(self, node_id: str, extra: list[str] | None = None, *, peers: str | None = None) -> Node:
        node = Node(["--mode", "coordinator", "--node-id", node_id, "--peers", peers or self.peers_for(node_id),
                     "--host", "127.0.0.1",
                     "--port", str(self.ports[node_id]), "--data-dir", str(self.root / node_id),
                     "--worker-timeout", "4", "--heartbeat-interval", "1", *(extra or [])],
                    self.root / f"{node_id}.log", env=self.env())
        self.nodes[node_id] = node
        return node

    def new_node_id(self) -> str:
        """A further coordinator id with a free port (to add at runtime); not in ``peers``."""
        node_id = f"c{len(self.ids) + 1}"
        self.ids.append(node_id)
        self.ports[node_id] = _free_ports(1)[0]
        return node_id

    def status(self, node_id: str) -> dict[str, Any]:
        return httpx.get(self.url(node_id) + "/status", timeout=2).json()

    def alive(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n.proc.poll() is None]

    def leader(self, among: list[str] | None = None) -> str | None:
        leaders = set()
        for node_id in among or self.alive():
            try:
                info = self.status(node_id)
            except (httpx.HTTPError, ValueError):
                continue
            if info.get("role") == "leader":
                leaders.add(node_id)
        return leaders.pop() if len(leaders) == 1 else None

    def wait_leader(self, among: list[str] | None = None, timeout: float = 60) -> str:
        return wait_for(lambda: self.leader(among), timeout, what="one leader")

    def load_key(self) -> str:
        def find() -> str | None:
            for node_id in self.ids:
                path = self.root / node_id / "admin.key"
                if path.exists():
                    return path.read_text().strip()
            return None

        self.key = wait_for(find, 60, what="the bootstrap admin key")
        return self.key

    def api(self, method: str, node_id: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        headers.setdefault("X-API-Key", self.key)
        return httpx.request(method, self.url(node_id) + path, headers=headers, timeout=30, **kwargs)

    def submit_anywhere(self, tasks: Any) -> list[dict[str, Any]]:
        """Submit through whichever node answers, following a 307 to the leader (as clients do)."""
        def attempt() -> list[dict[str, Any]] | None:
            for node_id in self.alive():
                try:
                    response = self.api("POST", node_id, "/api/tasks", json=tasks)
                    if response.status_code == 307:
                        response = httpx.post(response.headers["Location"], json=tasks,
                                              headers={"X-API-Key": self.key}, timeout=30)
                except httpx.HTTPError:
                    continue
                if response.status_code == 201:
                    body = response.json()
                    return body if isinstance(body, list) else [body]
            return None

        return wait_for(attempt, 60, interval=0.2, what="a submit to be accepted")

    def start_worker(self, name: str, worker_key: str, slots: int = 2, heartbeat: float = 1.0,
                     urls: str | None = None, simulate: str | None = None) -> Node:
        node = Node(["--mode", "worker", "--coordinator", urls or self.urls, "--worker-id", name, "--data-dir",
                     str(self.root / "workers" / name), "--max-concurrent-tasks", str(slots),
                     "--heartbeat-interval", str(heartbeat),
                     "--reconnect-attempts", "100",
                     *(["--simulate-hardware", str(ASSETS / "hardware" / simulate)] if simulate else [])],
                    self.root / f"worker-{name}.log", env={**self.env(), "DTF_API_KEY": worker_key})
        self.workers.append(node)
        return node

    def task(self, task_id: str) -> dict[str, Any] | None:
        leader = self.leader()
        if leader is None:
            return None
        response = self.api("GET", leader, f"/api/tasks/{task_id}")
        return response.json() if response.status_code == 200 else None

    def stop(self) -> None:
        for node in [*self.workers, *self.nodes.values()]:
            node.stop()


def print_logs_if_failed(request: Any, root: Path, tail: int = 6000) -> None:
    """After a test: print the tail of every process log under ``root`` if the test's call failed
    (pytest shows it with the failure; the conftest's makereport hook records ``rep_call``)."""
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for log in sorted(root.glob("*.log")):
            print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-tail:]}")


def store_rows(path: Path) -> dict[str, Any]:
    """What the replicas must agree on: completed tasks and their result rows (one per task)."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        return {
            "completed": con.execute("SELECT task_id, attempts, worker_id FROM distributed_tasks "
                                     "WHERE status = 'completed' ORDER BY task_id").fetchall(),
            "results": con.execute("SELECT result_id, task_id, worker_id, status, execution_time, "
                                   "CAST(metrics AS VARCHAR), CAST(raw_data AS VARCHAR) FROM results "
                                   "ORDER BY result_id").fetchall(),
        }
    finally:
        con.close()


def assert_replicas_agree(paths: list[Path], acknowledged: list[str]) -> None:
    """Every replica's DuckDB file holds the same completed tasks and results, each acknowledged task
    completed, and no task with two results (exactly-once completion)."""
    rows = [store_rows(path) for path in paths]
    for path, got in zip(paths, rows, strict=True):
        assert {r[0] for r in got["completed"]} >= set(acknowledged), f"{path}: an acknowledged task is missing"
        per_task: dict[str, int] = {}
        for result in got["results"]:
            per_task[result[1]] = per_task.get(result[1], 0) + 1
        assert all(count == 1 for count in per_task.values()), f"{path}: a task has more than one result"
    assert all(got == rows[0] for got in rows), "the replicas' DuckDB files disagree"
