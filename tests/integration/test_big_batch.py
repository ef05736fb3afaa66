"""The biggest accepted batch does not stall the coordinator into dropping healthy workers; one more is a 413.

Real processes: a coordinator and two workers with a short worker_timeout. Latency is measured by
bench/status_latency.py, never asserted here; what is asserted is the consequence a stall used to have
(workers declared lost) and the limit.
"""

from __future__ import annotations

import json

import httpx

from dtf_app.coordinator.api import MAX_BODY_BYTES, MAX_TASKS_PER_REQUEST
from tests.integration.harness import Cluster, wait_for

TASK = {"type": "custom", "config": {"command": ["true"]}}


def _post(cluster: Cluster, count: int) -> httpx.Response:
    body = json.dumps([TASK] * count).encode()
    assert len(body) < MAX_BODY_BYTES  # the task limit, not the body limit, is what is tested
    return httpx.post(cluster.url + "/api/tasks", content=body, timeout=600,
                      headers={"Content-Type": "application/json", "X-API-Key": cluster.admin_key})


def test_biggest_batch_keeps_workers_online_and_one_more_is_refused(cluster: Cluster) -> None:
    assert cluster.worker_timeout <= 4.0  # short: a stall of a few seconds would drop the workers
    cluster.start_coordinator()
    cluster.start_worker("big-w1", slots=2)
    cluster.start_worker("big-w2", slots=2)
    cluster.wait_workers(2)

    over = _post(cluster, MAX_TASKS_PER_REQUEST + 1)
    assert over.status_code == 413, over.text
    error = over.json()["error"]
    assert error["code"] == "too_many_tasks" and str(MAX_TASKS_PER_REQUEST) in error["message"]
    assert cluster.api("GET", "/api/tasks/summary").json()["total"] == 0  # nothing was queued

    created = _post(cluster, MAX_TASKS_PER_REQUEST)
    assert created.status_code == 201, created.text[:500]
    views = created.json()
    assert len(views) == MAX_TASKS_PER_REQUEST and len({v["task_id"] for v in views}) == MAX_TASKS_PER_REQUEST
    assert cluster.api("GET", "/api/tasks/summary").json()["total"] == MAX_TASKS_PER_REQUEST

    assert cluster.coordinator is not None
    log = cluster.coordinator.output()
    assert "workers lost" not in log and "disconnected" not in log, log[-3000:]
    # Connected (online, or busy with every slot taken), never declared lost.
    workers = {w["worker_id"]: (w["connected"], w["status"]) for w in cluster.api("GET", "/api/workers").json()["workers"]}
    assert {w: c for w, (c, _) in workers.items()} == {"big-w1": True, "big-w2": True}, workers
    assert all(status in ("online", "busy") for _, status in workers.values()), workers
    # And they work through the batch.
    wait_for(lambda: cluster.api("GET", "/api/tasks/summary").json()["counts"]["completed"] >= 10, 120,
             what="tasks of the big batch to complete")
    assert cluster.api("GET", "/api/tasks/summary").json()["counts"]["failed"] == 0
