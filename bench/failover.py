"""Failover: SIGKILL the leader of a 3-member cluster, time until a write is accepted again.

Side by side in one run, with the same polling client loop (httpx, one attempt per survivor every
``--poll-ms``), the same Raft timings (heartbeat 50 ms, election timeout 300 ms) and PreVote on both:

* DTF: three ``dtf --mode coordinator`` processes with ``--peers``; the write is ``POST /api/tasks``;
  a stream of submits runs throughout, and at the end every acknowledged task must exist exactly once
  and, with two workers attached, complete exactly once (lost / duplicated counts are reported).
* etcd (Debian's ``etcd-server``: ``apt-get install etcd-server etcd-client``): three members on loopback;
  the write is a put through the v3 JSON gateway (``POST /v3/kv/put``).

Each trial: find the leader, SIGKILL it, poll the survivors until a write succeeds (the figure), restart
the killed member, wait until the cluster is whole again. Prints p50/p95/max per system.

    python bench/failover.py --trials 50            # both
    python bench/failover.py --trials 10 --only etcd
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
HEARTBEAT_MS = 50
ELECTION_MS = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``pred`` until truthy; SystemExit naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = pred()
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def poll_until_write(urls: list[str], write: Callable[[httpx.Client, str], bool], poll_s: float,
                     timeout: float = 30.0) -> float:
    """The shared client loop: try each survivor in turn until one accepts a write; seconds taken."""
    start = time.perf_counter()
    with httpx.Client(timeout=1.0) as client:
        while time.perf_counter() - start < timeout:
            for url in urls:
                try:
                    if write(client, url):
                        return time.perf_counter() - start
                except httpx.HTTPError:
                    pass
            time.sleep(poll_s)
    return float("inf")


# --- etcd --------------------------------------------------------------------------------------------------


class Etcd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.names = ["e1", "e2", "e3"]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cluster = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.client[name]}"

    def start(self, name: str, state: str = "new") -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([
            "etcd", "--name", name, "--data-dir", str(self.root / name),
            "--listen-client-urls", self.url(name), "--advertise-client-urls", self.url(name),
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer[name]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[name]}",
            "--initial-cluster", self.cluster, "--initial-cluster-state", state,
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS), "--pre-vote",
        ], stdout=log, stderr=subprocess.STDOUT)

    def leader(self) -> str | None:
        ids = {}
        leader_id = None
        for name in self.names:
            if self.procs.get(name) is None or self.procs[name].poll() is not None:
                continue
            status = httpx.post(self.url(name) + "/v3/maintenance/status", json={}, timeout=1).json()
            ids[status["header"]["member_id"]] = name
            leader_id = status.get("leader")
        return ids.get(leader_id) if leader_id else None

    @staticmethod
    def write(client: httpx.Client, url: str) -> bool:
        key = base64.b64encode(b"bench").decode()
        value = base64.b64encode(str(time.time()).encode()).decode()
        return client.post(url + "/v3/kv/put", json={"key": key, "value": value}).status_code == 200

    def healthy(self) -> bool:
        return all(httpx.get(self.url(n) + "/health", timeout=1).json().get("health") == "true" for n in self.names)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def trial_etcd(trials: int, poll_s: float) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="etcd-failover-"))
    cluster = Etcd(root)
    times: list[float] = []
    try:
        for name in cluster.names:
            cluster.start(name)
        wait(cluster.healthy, 60, "etcd to be healthy")
        for _ in range(trials):
            leader = wait(cluster.leader, 30, "an etcd leader")
            cluster.procs[leader].send_signal(signal.SIGKILL)
            cluster.procs[leader].wait()
            survivors = [cluster.url(n) for n in cluster.names if n != leader]
            times.append(poll_until_write(survivors, Etcd.write, poll_s))
            cluster.start(leader, state="existing")
            wait(cluster.healthy, 60, "etcd to be whole again")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return times


# --- DTF ---------------------------------------------------------------------------------------------------


class Dtf:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.names = ["c1", "c2", "c3"]
        self.port = {n: free_port() for n in self.names}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.peers = ",".join(f"{n}=http://127.0.0.1:{self.port[n]}" for n in self.names)
        self.env = dict(os.environ, PYTHONPATH=str(REPO), DTF_CLUSTER_SECRET="failover-bench-secret",
                        DTF_STATE_DIR=str(root / "state"))
        self.key = ""
        self.acked: list[str] = []
        self._names = 0
        self._lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port[name]}"

    def start_workers(self, count: int = 2) -> None:
        leader = wait(self.leader, 60, "a DTF leader")
        key = httpx.post(self.url(leader) + "/api/keys", json={"name": "bench-workers", "role": "worker"},
                         headers={"X-API-Key": self.key}, timeout=30).json()["key"]
        urls = ",".join(self.url(n) for n in self.names)
        for i in range(count):
            log = open(self.root / f"worker-{i}.log", "ab")
            self.workers.append(subprocess.Popen([
                sys.executable, "-m", "dtf_app", "--mode", "worker", "--coordinator", urls, "--worker-id",
                f"w{i}", "--data-dir", str(self.root / f"w{i}"), "--reconnect-attempts", "1000"],
                stdout=log, stderr=subprocess.STDOUT, env={**self.env, "DTF_API_KEY": key}))

    def stream(self, stop: threading.Event) -> None:
        """Submit a task every 50 ms through any node that takes it, for the whole run."""
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                for name in self.names:
                    try:
                        if self.write(client, self.url(name)):
                            break
                    except httpx.HTTPError:
                        continue
                stop.wait(0.05)

    def check(self, timeout: float = 180.0) -> dict[str, int]:
        """Every acknowledged task exists once and completes once (exactly one result)."""
        def settled() -> dict[str, Any] | None:
            leader = self.leader()
            if leader is None:
                return None
            headers = {"X-API-Key": self.key}
            tasks = httpx.get(self.url(leader) + "/api/tasks", params={"limit": 100_000}, headers=headers,
                              timeout=30).json()["tasks"]
            by_id = {t["task_id"]: t for t in tasks}
            if not all(by_id.get(i, {}).get("status") == "completed" for i in self.acked):
                return None
            return {"tasks": tasks, "results": httpx.get(self.url(leader) + "/api/results",
                                                         params={"limit": 100_000}, headers=headers,
                                                         timeout=30).json()["results"]}

        try:
            data = wait(settled, timeout, "every acknowledged task to complete", interval=0.5)
        except SystemExit:
            data = None
        if data is None:
            return {"lost": -1, "duplicated": -1, "acknowledged": len(self.acked)}
        ids = {t["task_id"] for t in data["tasks"]}
        names: dict[str, int] = {}
        for t in data["tasks"]:
            names[t.get("name") or ""] = names.get(t.get("name") or "", 0) + 1
        per_task: dict[str, int] = {}
        for r in data["results"]:
            per_task[r["task_id"]] = per_task.get(r["task_id"], 0) + 1
        lost = sum(1 for i in self.acked if i not in ids)
        duplicated = sum(1 for n, c in names.items() if n and c > 1) + sum(1 for c in per_task.values() if c > 1)
        return {"lost": lost, "duplicated": duplicated, "acknowledged": len(self.acked)}

    def start(self, name: str) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([
            sys.executable, "-m", "dtf_app", "--mode", "coordinator", "--node-id", name, "--peers", self.peers,
            "--host", "127.0.0.1", "--port", str(self.port[name]), "--data-dir", str(self.root / name),
            "--heartbeat-ms", str(HEARTBEAT_MS), "--election-timeout-ms", str(ELECTION_MS),
        ], stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def leader(self) -> str | None:
        for name in self.names:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            info = httpx.get(self.url(name) + "/status", timeout=1).json()
            if info.get("role") == "leader" and info.get("ready"):
                return name
        return None

    def load_key(self) -> str:
        for name in self.names:
            path = self.root / name / "admin.key"
            if path.exists():
                self.key = path.read_text().strip()
                return self.key
        return ""

    def write(self, client: httpx.Client, url: str) -> bool:
        with self._lock:
            self._names += 1
            name = f"probe-{self._names}"
        task = {"type": "custom", "config": {"command": ["true"]}, "name": name}
        response = client.post(url + "/api/tasks", json=task, headers={"X-API-Key": self.key},
                               follow_redirects=False)
        if response.status_code != 201:
            return False
        with self._lock:
            self.acked.append(response.json()["task_id"])
        return True

    def replicas_agree(self, timeout: float = 120.0) -> dict[str, Any]:
        """Every replica's DuckDB file holds the same completed tasks and results: wait until each node
        has applied the leader's commit index, stop the workers and then the coordinators gracefully
        (their stores flush), and compare the files."""
        import duckdb

        leader = wait(self.leader, 60, "a DTF leader")
        commit = httpx.get(self.url(leader) + "/status", timeout=5).json()["commit_index"]
        wait(lambda: all(httpx.get(self.url(n) + "/status", timeout=2).json().get("applied_index", 0) >= commit
                         for n in self.names), timeout, "every replica to apply the leader's commit index")
        for proc in [*self.workers, *self.procs.values()]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        views = {}
        for name in self.names:
            con = duckdb.connect(str(self.root / name / "dtf.duckdb"), read_only=True)
            try:
                completed = con.execute("SELECT task_id FROM distributed_tasks WHERE status = 'completed' "
                                        "ORDER BY task_id").fetchall()
                results = con.execute("SELECT task_id, count(*) FROM results GROUP BY task_id "
                                      "ORDER BY task_id").fetchall()
            finally:
                con.close()
            views[name] = (completed, results)
        first = views[self.names[0]]
        return {"replicas_agree": all(v == first for v in views.values()),
                "completed_rows": {n: len(v[0]) for n, v in views.items()}}

    def stop(self) -> None:
        for proc in [*self.procs.values(), *self.workers]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def trial_dtf(trials: int, poll_s: float) -> tuple[list[float], dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="dtf-failover-"))
    cluster = Dtf(root)
    times: list[float] = []
    try:
        for name in cluster.names:
            cluster.start(name)
        wait(cluster.leader, 60, "a DTF leader")
        wait(cluster.load_key, 30, "the bootstrap admin key")
        cluster.start_workers(2)
        stop = threading.Event()
        streamer = threading.Thread(target=cluster.stream, args=(stop,), daemon=True)
        streamer.start()
        for _ in range(trials):
            leader = wait(cluster.leader, 60, "a DTF leader")
            cluster.procs[leader].send_signal(signal.SIGKILL)
            cluster.procs[leader].wait()
            survivors = [cluster.url(n) for n in cluster.names if n != leader]
            times.append(poll_until_write(survivors, cluster.write, poll_s))
            cluster.start(leader)
            wait(lambda node=leader: httpx.get(cluster.url(node) + "/status", timeout=1).json().get("ready"), 60,
                 "the restarted coordinator to be ready")
        stop.set()
        streamer.join(timeout=30)
        counts: dict[str, Any] = dict(cluster.check())
        counts.update(cluster.replicas_agree())
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return times, counts


def summary(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    if not ms:
        return f"{name}: no trials"
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return (f"{name:5s} trials={len(ms):3d}  p50={statistics.median(ms):7.0f} ms  p95={p95:7.0f} ms  "
            f"max={ms[-1]:7.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--only", choices=("dtf", "etcd"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    poll_s = args.poll_ms / 1000
    out: dict[str, Any] = {}
    if args.only in (None, "dtf"):
        times, counts = trial_dtf(args.trials, poll_s)
        out["dtf"] = {"times_s": times, **counts}
        print(summary("dtf", times), f"acknowledged={counts['acknowledged']} lost={counts['lost']} "
              f"duplicated={counts['duplicated']} (-1: not settled in time) replicas_agree={counts['replicas_agree']} "
              f"completed_rows={counts['completed_rows']}", flush=True)
    if args.only in (None, "etcd"):
        if shutil.which("etcd") is None:
            print("etcd: not installed (apt-get install etcd-server etcd-client)")
        else:
            times = trial_etcd(args.trials, poll_s)
            out["etcd"] = {"times_s": times}
            print(summary("etcd", times), flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
