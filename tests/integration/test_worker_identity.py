"""A worker key enrols workers; it does not let one worker act as another (real processes on 127.0.0.1).

Every worker id is bound at its first contact to a per-worker credential (dtf_app/protocol.py, *Worker
identity*). These tests play the impostor with a second worker key, over HTTP and over /ws/worker, and
check that the victim's tasks, routing and connection are untouched; then restarts, `dtf workers forget`
and a race for one id.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.integration.harness import Cluster, wait_for

CRED = "X-Worker-Credential"
FORGED = {"status": "success", "metrics": {"forged": 1}, "output": "forged by the impostor"}


def gated_task(gate: Path) -> dict[str, Any]:
    """A task that runs until the test creates ``gate``, then prints which worker really ran it."""
    script = ("import os, sys, time\n"
              "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\n"
              "print('real result from', os.environ['DTF_WORKER_ID'])\n")
    return {"type": "custom", "max_retries": 0, "config": {"command": [sys.executable, "-c", script, str(gate)]}}


def ws_url(cluster: Cluster) -> str:
    return cluster.url.replace("http://", "ws://") + "/ws/worker"


async def hello(cluster: Cluster, key: str, worker_id: str, credential: str | None = None,
                capabilities: dict[str, Any] | None = None) -> tuple[dict[str, Any], int | None, str]:
    """One raw hello: (first reply, close code or None if still open, close reason)."""
    headers = [(b"X-API-Key", key.encode())]
    if credential is not None:
        headers.append((CRED.encode(), credential.encode()))
    async with open_websocket_url(ws_url(cluster), extra_headers=headers) as ws:
        await ws.send_message(json.dumps({"type": "hello", "worker_id": worker_id, "max_concurrent_tasks": 1,
                                          "capabilities": capabilities or {"hardware": ["cpu"]}}))
        reply = json.loads(await ws.get_message())
        if reply["type"] != "error":
            return reply, None, ""
        try:
            with trio.fail_after(20):
                await ws.get_message()
        except ConnectionClosed as exc:
            return reply, exc.reason.code, exc.reason.reason or ""
        raise AssertionError("the coordinator sent more after an error frame")


def results_of(cluster: Cluster, task_id: str) -> list[dict[str, Any]]:
    return cluster.api("GET", "/api/results", params={"task_id": task_id}).json()["results"]


def test_another_worker_cannot_complete_or_fail_a_task_over_http(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_coordinator()
    cluster.start_worker("victim", slots=1)
    cluster.wait_workers(1)
    gate = tmp_path / "gate"
    created = cluster.submit(gated_task(gate)).json()
    task_id = created["task_id"]
    running = cluster.wait_task(task_id, states=("running",))
    assert running["worker_id"] == "victim"

    def forge(key: str, headers: dict[str, str]) -> None:
        for outcome, body in (("complete", {"attempt": 1, "result": FORGED}),
                              ("fail", {"attempt": 1, "error": "forged failure", "retry": False})):
            response = cluster.api("POST", f"/api/tasks/{task_id}/{outcome}", key=key, json=body, headers=headers)
            assert response.status_code == 403, (outcome, headers, response.text)
            error = response.json()["error"]
            assert error["code"] == "credential_refused" and "victim" in error["message"], error

    other_key = cluster.create_key("worker", "other-workers")
    forge(other_key, {})                                 # another worker key, no credential
    forge(other_key, {CRED: "dtfw_" + "x" * 43})         # a guessed credential
    forge(cluster.worker_key, {})                        # the victim's own (shared) worker key
    forge(cluster.admin_key, {})                         # an admin key is not exempt
    # The impostor with its own enrolled id, and so a valid credential, of another worker.
    registered = cluster.api("POST", "/api/workers/register", key=other_key,
                             json={"worker_id": "impostor", "capabilities": {"hardware": ["cpu"]}})
    assert registered.status_code == 201, registered.text
    forge(other_key, {CRED: registered.json()["credential"]})
    still = cluster.task(task_id)
    assert still["status"] == "running" and still["attempts"] == 1 and still["result"] is None
    assert results_of(cluster, task_id) == []

    gate.touch()
    done = cluster.wait_task(task_id)
    assert done["status"] == "completed" and done["worker_id"] == "victim", done
    assert "real result from victim" in done["result"]["output"] and "forged" not in json.dumps(done["result"])
    rows = results_of(cluster, task_id)
    assert len(rows) == 1 and rows[0]["worker_id"] == "victim" and "forged" not in json.dumps(rows[0])

    # The holder itself may report over HTTP with its credential (a late duplicate is idempotent: 200,
    # nothing recorded twice).
    own = cluster.api("POST", f"/api/tasks/{task_id}/complete", key=cluster.worker_key,
                      json={"attempt": 1, "result": FORGED}, headers={CRED: cluster.credential("victim")})
    assert own.status_code == 200, own.text
    assert len(results_of(cluster, task_id)) == 1 and "forged" not in json.dumps(cluster.task(task_id)["result"])


def test_http_holder_with_its_credential_records_its_outcome(cluster: Cluster) -> None:
    """The HTTP form still works for the worker that holds the attempt, with its own credential."""
    cluster.start_coordinator()
    key = cluster.worker_key
    registered = cluster.api("POST", "/api/workers/register", key=key, json={"worker_id": "http-only"})
    assert registered.status_code == 201
    credential = registered.json()["credential"]
    again = cluster.api("POST", "/api/workers/register", key=key, json={"worker_id": "http-only"},
                        headers={CRED: credential})
    assert again.status_code == 201 and "credential" not in again.json()  # shown once only
    created = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    task_id = created["task_id"]
    never = cluster.api("POST", f"/api/tasks/{task_id}/complete", key=key, json={"result": {}},
                        headers={CRED: credential})
    assert never.status_code == 409 and never.json()["error"]["code"] == "not_assigned"

    hybrid = "dtfw_hybrid_" + "h" * 40
    reported: list[Any] = []

    async def take_and_report_over_http() -> None:
        headers = [(b"X-API-Key", key.encode()), (CRED.encode(), hybrid.encode())]
        async with open_websocket_url(ws_url(cluster), extra_headers=headers) as ws:
            await ws.send_message(json.dumps({"type": "hello", "worker_id": "hybrid", "max_concurrent_tasks": 1}))
            message = json.loads(await ws.get_message())
            while message["type"] != "assign":
                message = json.loads(await ws.get_message())
            attempt = message["tasks"][0]["attempt"]
            for credential_, result in ((credential, FORGED), (hybrid, {"status": "success", "output": "hybrid ran it"})):
                response = await trio.to_thread.run_sync(lambda c=credential_, r=result: cluster.api(
                    "POST", f"/api/tasks/{task_id}/complete", key=key, json={"attempt": attempt, "result": r},
                    headers={CRED: c}))
                reported.append((response.status_code, response.json()))

    trio.run(take_and_report_over_http)
    (wrong_status, wrong), (ok_status, ok) = reported
    assert wrong_status == 403 and "hybrid" in wrong["error"]["message"]
    assert ok_status == 200 and ok["status"] == "completed" and ok["worker_id"] == "hybrid"
    assert ok["result"]["output"] == "hybrid ran it"


def test_register_as_another_worker_is_refused_and_routing_is_unchanged(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("cpu1", simulate="cpu-only.json", slots=1)
    cluster.wait_workers(1)
    other_key = cluster.create_key("worker", "other-workers")
    forged = {"worker_id": "cpu1", "capabilities": {"hardware": ["cpu", "cuda"], "gpu_memory_gb": 80},
              "max_concurrent_tasks": 8}
    for headers in ({}, {CRED: "dtfw_" + "y" * 43}):
        response = cluster.api("POST", "/api/workers/register", key=other_key, json=forged, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "credential_refused"
    health = cluster.api("POST", "/api/health", key=other_key, json={"worker_id": "cpu1", "metrics": {"cpu": 1}})
    assert health.status_code == 403 and health.json()["error"]["code"] == "credential_refused"
    worker = cluster.api("GET", "/api/workers/cpu1").json()
    assert "cuda" not in worker["hardware"] and worker["max_concurrent_tasks"] == 1 and worker["status"] == "online"
    # No worker can run a CUDA task: it is refused, not routed to the CPU machine.
    cuda = cluster.submit({"type": "custom", "requirements": {"hardware": ["cuda"]}, "config": {"command": ["true"]}})
    assert cuda.status_code == 422, cuda.text
    # The real worker's own health report (with its credential) is accepted.
    own = cluster.api("POST", "/api/health", key=cluster.worker_key, json={"worker_id": "cpu1", "metrics": {}},
                      headers={CRED: cluster.credential("cpu1")})
    assert own.status_code == 200, own.text


def test_hello_as_a_connected_worker_is_refused_and_the_victim_keeps_its_task(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_coordinator()
    victim = cluster.start_worker("victim", slots=1)
    cluster.wait_workers(1)
    gate = tmp_path / "gate"
    task_id = cluster.submit(gated_task(gate)).json()["task_id"]
    assert cluster.wait_task(task_id, states=("running",))["worker_id"] == "victim"

    other_key = cluster.create_key("worker", "other-workers")
    for key, credential in ((other_key, None), (other_key, "dtfw_" + "z" * 43), (cluster.worker_key, None),
                            (cluster.admin_key, None)):
        reply, code, reason = trio.run(hello, cluster, key, "victim", credential)
        assert reply["type"] == "error" and reply["code"] == "credential_refused", reply
        assert code == 4403 and reason.startswith("credential_refused"), (code, reason)
    # Still connected (never kicked off), still running its task.
    worker = cluster.api("GET", "/api/workers/victim").json()
    assert worker["status"] in ("online", "busy") and worker["connected"] and worker["running"] == 1
    assert victim.proc.poll() is None
    assert cluster.task(task_id)["status"] == "running"

    gate.touch()
    done = cluster.wait_task(task_id)
    assert done["status"] == "completed" and done["worker_id"] == "victim"
    assert "real result from victim" in done["result"]["output"]


def test_restarted_worker_reconnects_with_its_credential_kept_0600(cluster: Cluster) -> None:
    cluster.start_coordinator()
    first = cluster.start_worker("w1", slots=1)
    cluster.wait_workers(1)
    path = cluster.worker_dir("w1") / "worker-w1.credential"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credential = cluster.credential("w1")
    first.stop()
    wait_for(lambda: cluster.api("GET", "/api/workers/w1").json()["status"] == "offline", what="w1 offline")
    again = cluster.start_worker("w1", slots=1)
    cluster.wait_workers(1)
    assert cluster.credential("w1") == credential and stat.S_IMODE(path.stat().st_mode) == 0o600
    task = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(task["task_id"])["worker_id"] == "w1"
    # The enrolment is durable: a restarted coordinator still knows the credential.
    cluster.coordinator.stop()
    cluster.start_coordinator()
    cluster.wait_workers(1, timeout=60)
    task = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(task["task_id"])["status"] == "completed"
    assert again.proc.poll() is None


def test_forget_lets_a_rebuilt_machine_enrol_under_its_id(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_coordinator()
    old = cluster.start_worker("w1", slots=1)
    cluster.wait_workers(1)
    rebuilt_dir = tmp_path / "rebuilt"

    # A rebuilt machine (fresh data dir) cannot take over the enrolled id: it exits 4, saying what to do.
    refused = cluster.start_worker("w1", slots=1, data_dir=rebuilt_dir)
    assert refused.wait(timeout=60) == 4
    assert "dtf workers forget w1" in refused.output()
    view = cluster.api("GET", "/api/workers/w1").json()
    assert old.proc.poll() is None and view["status"] == "online" and view["enrolled"] is True

    # Only an admin may forget.
    by_worker = cluster.cli("workers", "forget", "w1", "--coordinator", cluster.url,
                            env={"DTF_API_KEY": cluster.worker_key})
    assert by_worker.returncode == 4, by_worker.stderr
    forgot = cluster.cli("workers", "forget", "w1", "--coordinator", cluster.url,
                         env={"DTF_API_KEY": cluster.admin_key})
    assert forgot.returncode == 0, forgot.stderr
    assert "forgotten" in forgot.stdout
    # The worker connected under the id is told and exits (code 4) instead of reconnecting forever.
    assert old.wait(timeout=60) == 4
    assert "revoked" in old.output()
    view = cluster.api("GET", "/api/workers/w1").json()
    assert view["enrolled"] is False and view["status"] == "offline"

    rebuilt = cluster.start_worker("w1", slots=1, data_dir=rebuilt_dir)
    cluster.wait_workers(1, timeout=60)
    task = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(task["task_id"])["worker_id"] == "w1"
    assert rebuilt.proc.poll() is None
    assert stat.S_IMODE((rebuilt_dir / "worker-w1.credential").stat().st_mode) == 0o600
    # The old machine's credential no longer works; the rebuilt one's does.
    stale = cluster.api("POST", "/api/health", key=cluster.worker_key, json={"worker_id": "w1"},
                        headers={CRED: cluster.credential("w1")})
    assert stale.status_code == 403
    fresh = cluster.api("POST", "/api/health", key=cluster.worker_key, json={"worker_id": "w1"},
                        headers={CRED: cluster.credential("w1", rebuilt_dir)})
    assert fresh.status_code == 200, fresh.text

    unknown = cluster.cli("workers", "forget", "nobody", "--coordinator", cluster.url,
                          env={"DTF_API_KEY": cluster.admin_key})
    assert unknown.returncode == 2 and "not enrolled" in unknown.stderr and "Traceback" not in unknown.stderr


def test_two_workers_racing_for_a_new_id_exactly_one_enrols(cluster: Cluster) -> None:
    cluster.start_coordinator()
    key = cluster.worker_key
    outcomes: list[list[str]] = []

    async def race(worker_id: str) -> None:
        seen: list[str] = []

        async def one(credential: str) -> None:
            reply, _, _ = await hello(cluster, key, worker_id, credential)
            seen.append(reply.get("code") or reply["type"])

        async with trio.open_nursery() as nursery:
            for n in range(2):
                nursery.start_soon(one, f"dtfw_{worker_id}_{n}_" + "r" * 40)
        outcomes.append(sorted(seen))

    async def main() -> None:
        for i in range(5):
            await race(f"racer-{i}")

    trio.run(main)
    assert outcomes == [["credential_refused", "welcome"]] * 5, outcomes
