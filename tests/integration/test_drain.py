"""Draining a worker: it gets no new tasks (running ones finish), survives its reconnects, and enabling
it gives it work again. Real coordinator and worker processes."""

from __future__ import annotations

from tests.integration.harness import Cluster


def test_a_drained_worker_gets_no_new_tasks_until_enabled(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1", slots=2)
    cluster.wait_workers(1)
    drained = cluster.api("POST", "/api/workers/w1/drain")
    assert drained.status_code == 200 and drained.json()["drained"] is True
    other = cluster.start_worker("w2", slots=2)
    cluster.wait_workers(2)
    created = cluster.submit([{"type": "custom", "config": {"command": ["true"]}} for _ in range(6)]).json()
    done = [cluster.wait_task(t["task_id"]) for t in created]
    assert {t["status"] for t in done} == {"completed"}
    assert {t["worker_id"] for t in done} == {"w2"}  # never the drained one
    enabled = cluster.api("POST", "/api/workers/w1/enable")
    assert enabled.status_code == 200 and enabled.json()["drained"] is False
    other.stop()
    follow = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(follow["task_id"])["worker_id"] == "w1"
    missing = cluster.api("POST", "/api/workers/nobody/drain")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    viewer = cluster.create_key("viewer")
    forbidden = cluster.api("POST", "/api/workers/w1/drain", key=viewer)
    assert forbidden.status_code == 403
