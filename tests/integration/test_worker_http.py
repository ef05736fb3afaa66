"""The sources' worker HTTP API end to end: a plain httpx "worker" (no websocket, no dtf agent) registers,
long-polls ``GET /api/tasks`` for its assignments, really runs them, reports over HTTP, and the
coordinator records each completion exactly once; cancellation reaches it through the poll, silence
makes it lost (its task is taken back), and in a cluster a follower sends it to the leader.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import Cluster, HACluster, wait_for

CRED = "X-Worker-Credential"


class HttpWorker:
    """What a worker that cannot hold a websocket does, with nothing but httpx."""

    def __init__(self, url: str, api_key: str, worker_id: str) -> None:
        self.url, self.worker_id = url, worker_id
        self.http = httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=90)
        self.credential = ""

    def register(self, **extra: Any) -> httpx.Response:
        response = self.http.post("/api/register", json={"worker_id": self.worker_id, "hostname": "plain-http",
                                                         "capabilities": {"hardware": ["cpu"]},
                                                         "max_concurrent_tasks": 1, **extra})
        if response.status_code == 201:
            self.credential = response.json()["credential"]
        return response

    def poll(self, wait: float = 20) -> httpx.Response:
        return self.http.get("/api/tasks", params={"wait": wait}, headers={CRED: self.credential})

    def health(self, running: list[dict[str, Any]] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"worker_id": self.worker_id, "metrics": {"cpu_percent": 5.0}}
        if running is not None:
            body["running"] = running
        return self.http.post("/api/health", json=body, headers={CRED: self.credential})

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        """Really run a custom command task; the outcome body for /complete."""
        started = time.time()
        proc = subprocess.run(task["config"]["command"], capture_output=True, text=True, timeout=60)
        return {"attempt": task["attempt"], "start_time": started, "end_time": time.time(),
                "result": {"status": "success" if proc.returncode == 0 else "failure",
                           "output": proc.stdout, "metrics": {"returncode": proc.returncode},
                           "execution_time": time.time() - started}}

    def complete(self, task_id: str, outcome: dict[str, Any]) -> httpx.Response:
        return self.http.post(f"/api/tasks/{task_id}/complete", json=outcome, headers={CRED: self.credential})


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    cluster = Cluster(tmp_path, worker_timeout=6.0, heartbeat_interval=1.0)
    yield cluster
    cluster.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        log = tmp_path / "coordinator.log"
        if log.exists():
            print(f"----- coordinator.log -----\n{log.read_text(errors='replace')[-6000:]}")


def _poll_until(worker: HttpWorker, predicate: Any, what: str) -> dict[str, Any]:
    def once() -> dict[str, Any] | None:
        response = worker.poll(wait=2)
        assert response.status_code == 200, response.text
        body = response.json()
        return body if predicate(body) else None

    return wait_for(once, 60, interval=0, what=what)


def test_plain_http_worker_registers_polls_runs_and_reports_exactly_once(cluster: Cluster) -> None:
    cluster.start_coordinator()
    worker = HttpWorker(cluster.url, cluster.worker_key, "http-w1")
    registered = worker.register()
    assert registered.status_code == 201, registered.text
    assert worker.credential and registered.json()["worker_id"] == "http-w1"

    # Who may poll: the right API key role and this worker's own credential.
    assert httpx.get(cluster.url + "/api/tasks", headers={CRED: worker.credential}).status_code == 401
    viewer = cluster.create_key("viewer", "http-viewer")
    assert httpx.get(cluster.url + "/api/tasks", headers={"X-API-Key": viewer, CRED: worker.credential}
                     ).status_code == 403
    wrong = worker.http.get("/api/tasks", params={"wait": 0}, headers={CRED: "dtfw_" + "x" * 43})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "credential_refused"
    as_other = worker.http.get("/api/tasks", params={"wait": 0, "worker_id": "someone-else"},
                               headers={CRED: worker.credential})
    assert as_other.status_code == 403 and as_other.json()["error"]["code"] == "credential_refused"
    assert worker.http.get("/api/tasks", params={"wait": 0, "status": "pending"},
                           headers={CRED: worker.credential}).status_code == 400
    assert worker.http.get("/api/tasks", params={"wait": "soon"}, headers={CRED: worker.credential}).status_code == 400

    # The first poll opens its session: it is a connected worker, with the profile it registered.
    first = worker.poll(wait=0)
    assert first.status_code == 200, first.text
    assert first.json()["tasks"] == [] and first.json()["poll_wait_max"] == pytest.approx(3.0)
    cluster.wait_workers(1)
    profile = worker.http.get("/api/capabilities", headers={CRED: worker.credential}).json()
    assert profile["worker_id"] == "http-w1" and profile["hardware"] == ["cpu"] and profile["connected"] is True
    summary = cluster.api("GET", "/api/capabilities").json()
    assert summary["hardware"]["cpu"]["connected"] == 1 and summary["workers"][0]["worker_id"] == "http-w1"

    # A long poll that is waiting when the task is submitted answers with it.
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(worker.poll(wait=30)))
    waiting.start()
    time.sleep(0.5)
    task = cluster.submit({"type": "custom", "name": "plain-http", "config": {"command": ["echo", "ran over http"]}}).json()
    waiting.join(60)
    assert answers and answers[0].status_code == 200, answers
    body = answers[0].json()
    if task["task_id"] not in body["new"]:  # the poll timed out just before the assignment: ask again
        body = _poll_until(worker, lambda b: task["task_id"] in b["new"], "the assignment")
    (assigned,) = body["tasks"]
    assert assigned["task_id"] == task["task_id"] and assigned["attempt"] == 1
    assert assigned["parameters"] == assigned["config"] == {"command": ["echo", "ran over http"]}
    # Asked again, the same attempt is listed (nothing is lost with an answer) but is no longer new.
    again = worker.poll(wait=0).json()
    assert [t["task_id"] for t in again["tasks"]] == [task["task_id"]] and again["new"] == []

    assert worker.health([{"task_id": task["task_id"], "attempt": 1}]).status_code == 200
    wait_for(lambda: cluster.task(task["task_id"])["status"] == "running", 30, what="the task to show running")
    outcome = worker.run(assigned)
    done = worker.complete(task["task_id"], outcome)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed" and done.json()["recorded"] is True
    # The answer was lost, say, and the worker reports again: harmless, nothing recorded twice.
    repeat = worker.complete(task["task_id"], outcome)
    assert repeat.status_code == 200 and repeat.json()["recorded"] is False
    final = cluster.task(task["task_id"])
    assert final["worker_id"] == "http-w1" and final["attempts"] == 1
    assert final["result"]["output"] == "ran over http\n"
    results = cluster.api("GET", "/api/results", params={"task_id": task["task_id"]}).json()["results"]
    assert len(results) == 1 and results[0]["worker_id"] == "http-w1"
    assert worker.poll(wait=0).json()["tasks"] == []


def test_cancel_reaches_a_polling_worker_and_silence_makes_it_lost(cluster: Cluster) -> None:
    cluster.start_coordinator()
    worker = HttpWorker(cluster.url, cluster.worker_key, "http-w2")
    assert worker.register().status_code == 201
    assert worker.poll(wait=0).status_code == 200
    cluster.wait_workers(1)

    doomed = cluster.submit({"type": "custom", "config": {"command": ["sleep", "30"]}}).json()
    _poll_until(worker, lambda b: [t["task_id"] for t in b["tasks"]] == [doomed["task_id"]], "the assignment")
    assert cluster.api("POST", f"/api/tasks/{doomed['task_id']}/cancel").status_code == 200
    told = _poll_until(worker, lambda b: b["cancel"], "the cancellation")
    assert told["cancel"] == [{"task_id": doomed["task_id"], "attempt": 1}] and told["tasks"] == []

    # It takes a task, then stops polling: after worker_timeout it is lost and the task goes back.
    kept = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    _poll_until(worker, lambda b: [t["task_id"] for t in b["tasks"]] == [kept["task_id"]], "the second assignment")
    wait_for(lambda: cluster.api("GET", "/api/workers/http-w2").json()["status"] == "offline", 60,
             what="the silent worker to be lost")
    back = cluster.task(kept["task_id"])
    assert back["status"] == "pending" and back["worker_id"] is None, back
    # Polling again reopens its session and the task comes back to it as a new attempt.
    body = _poll_until(worker, lambda b: b["tasks"], "the task to be assigned again")
    assert body["tasks"][0]["task_id"] == kept["task_id"] and body["tasks"][0]["attempt"] >= 1
    assert worker.complete(kept["task_id"], worker.run(body["tasks"][0])).json()["recorded"] is True
    assert cluster.task(kept["task_id"])["status"] == "completed"



def test_followers_send_an_http_worker_to_the_leader_and_it_follows_a_failover(ha: HACluster) -> None:
    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    worker_key = ha.api("POST", leader, "/api/keys", json={"name": "http-workers", "role": "worker"}).json()["key"]
    follower = next(i for i in ha.ids if i != leader)
    on_follower = HttpWorker(ha.url(follower), worker_key, "http-ha")
    redirect = on_follower.register()
    assert redirect.status_code == 307, redirect.text
    assert redirect.json()["error"]["code"] == "not_leader" and redirect.json()["error"]["leader_id"] == leader
    assert redirect.headers["Location"] == ha.url(leader) + "/api/register"
    worker = HttpWorker(ha.url(leader), worker_key, "http-ha")
    assert worker.register().status_code == 201
    on_follower.credential = worker.credential
    for stale in ({}, {"stale": "true"}):
        poll = on_follower.http.get("/api/tasks", params={"wait": 0, **stale}, headers={CRED: worker.credential})
        assert poll.status_code == 307 and poll.json()["error"]["code"] == "not_leader", poll.text
        assert poll.headers["Location"].startswith(ha.url(leader) + "/api/tasks")
    assert worker.poll(wait=0).status_code == 200

    # The leader dies; the worker follows the new one (every URL, 307s followed) and its work is recorded once.
    ha.nodes[leader].kill(signal.SIGKILL)
    ha.nodes[leader].wait()
    survivors = [i for i in ha.ids if i != leader]
    new_leader = ha.wait_leader(survivors)
    worker = HttpWorker(ha.url(new_leader), worker_key, "http-ha")
    worker.credential = on_follower.credential
    (task,) = ha.submit_anywhere({"type": "custom", "config": {"command": ["echo", "after failover"]}})
    body = _poll_until(worker, lambda b: b["tasks"], "the assignment from the new leader")
    assert worker.complete(task["task_id"], worker.run(body["tasks"][0])).json()["recorded"] is True
    done = ha.task(task["task_id"])
    assert done is not None and done["status"] == "completed" and done["worker_id"] == "http-ha"


def test_a_polling_worker_is_told_its_reserved_devices(cluster: Cluster) -> None:
    # The HTTP poll describes an assignment as the websocket frame does, reservation included, so a
    # worker without a websocket can pin each task to the devices apply chose for it.
    cluster.start_coordinator()
    worker = HttpWorker(cluster.url, cluster.worker_key, "http-gpu")
    gpus = [{"index": i, "type": "cuda", "name": "sim", "memory_gb": 16} for i in range(2)]
    assert worker.register(capabilities={"hardware": ["cpu", "cuda"], "gpu": {"count": 2, "devices": gpus},
                                         "memory": {"total_gb": 32}, "cpu": {"cores": 4}},
                           max_concurrent_tasks=2).status_code == 201
    assert worker.poll(wait=0).status_code == 200
    cluster.wait_workers(1)
    task = {"type": "custom", "config": {"command": ["true"]}, "requirements": {"hardware": ["cuda"]},
            "resources": {"gpus": 1}}
    created = cluster.submit([task, task])
    assert created.status_code == 201, created.text
    body = _poll_until(worker, lambda b: len(b["tasks"]) == 2, "both assignments")
    assert sorted(t["devices"][0]["index"] for t in body["tasks"]) == [0, 1]
    assert all(t["devices"] == [{"index": t["devices"][0]["index"], "type": "cuda"}] and
               t["resources"] == {"gpus": 1} for t in body["tasks"])
