"""Bad input gets a clear 4xx with a JSON error, and authentication is enforced everywhere."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.harness import Cluster


@pytest.fixture
def running(cluster: Cluster) -> Cluster:
    cluster.start_coordinator()
    return cluster


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b'"a string"', 400, "task object or an array"),
    (b"[]", 400, "empty"),
    (b'{"type": "quantum", "config": {}}', 400, "type must be one of"),
    (b'{"type": "custom", "priority": "urgent", "config": {"command": ["true"]}}', 400, "priority"),
    (b'{"type": "custom", "priority": 1000, "config": {"command": ["true"]}}', 400, "priority"),
    (b'{"type": "custom", "config": {"command": ["true"]}, "requirements": {"gpu_count": 2}}', 400, "gpu_count"),
    (b'{"type": "custom", "config": {"command": 5}}', 400, "command must be an array"),
    (b'{"type": "test", "config": {"test_file": 3}}', 400, "test_file"),
    (b'{"type": "custom", "config": {"command": ["true"]}, "dependencies": ["nope"]}', 422, "unknown task"),
    (b'[{"type": "custom", "config": {"command": ["true"]}}, {"type": "custom"}]', 400, "tasks[1]"),
])
def test_bad_task_documents_get_400_with_message(running: Cluster, body: bytes, status: int, fragment: str) -> None:
    response = running.api("POST", "/api/tasks", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["code"]
    # Nothing from a refused batch was queued.
    assert running.api("GET", "/api/tasks").json()["total"] == 0


def test_unknown_routes_and_bad_params_are_json_4xx(running: Cluster) -> None:
    assert running.api("GET", "/api/nothing").status_code == 404
    assert running.api("GET", "/api/tasks/missing").status_code == 404
    assert running.api("GET", "/api/tasks", params={"limit": "ten"}).status_code == 400
    assert running.api("GET", "/api/tasks", params={"status": "sleepy"}).status_code == 400
    assert running.api("DELETE", "/api/tasks").status_code == 405
    bad_agg = running.api("GET", "/api/results/aggregate", params={"aggregation_level": "colour"})
    assert bad_agg.status_code == 400 and "aggregation_level" in bad_agg.text
    for response in (running.api("GET", "/api/nothing"), bad_agg):
        assert "error" in response.json()


def test_only_status_is_open_and_roles_are_enforced(running: Cluster) -> None:
    assert httpx.get(running.url + "/status").status_code == 200
    for path in ("/api/status", "/api/tasks", "/api/workers", "/api/results", "/metrics", "/api/keys"):
        assert httpx.get(running.url + path).status_code == 401, path
        assert running.api("GET", path, key="dtf_wrong").status_code == 401, path
    viewer = running.create_key("viewer")
    worker = running.create_key("worker")
    operator = running.create_key("operator")
    task = {"type": "custom", "config": {"command": ["true"]}}
    assert running.api("GET", "/api/tasks", key=viewer).status_code == 200
    assert running.api("POST", "/api/tasks", key=viewer, json=task).status_code == 403
    assert running.api("GET", "/api/tasks", key=worker).status_code == 403
    assert running.api("POST", "/api/tasks", key=operator, json=task).status_code == 201
    assert running.api("POST", "/api/keys", key=operator, json={"name": "x", "role": "admin"}).status_code == 403
    bearer = httpx.get(running.url + "/api/status", headers={"Authorization": f"Bearer {viewer}"})
    assert bearer.status_code == 200
    listed = running.api("GET", "/api/keys").json()["keys"]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert running.api("DELETE", f"/api/keys/{[k for k in listed if k['role'] == 'viewer'][0]['name']}").status_code == 200
    assert running.api("GET", "/api/tasks", key=viewer).status_code == 401


def test_metrics_and_status_shapes(running: Cluster) -> None:
    status = running.api("GET", "/api/status").json()
    for key in ("node_id", "role", "leader_id", "term", "tasks", "workers"):
        assert key in status
    assert {"pending", "running", "completed", "failed"} <= set(status["tasks"])
    metrics = running.api("GET", "/metrics").text
    assert "dtf_tasks{state=\"pending\"}" in metrics and "dtf_ws_updates_dropped 0.0" in metrics
    leader = running.api("GET", "/api/cluster/leader").json()
    assert leader["url"] == running.url


def test_http_worker_registration_and_cluster_views(running: Cluster) -> None:
    worker = running.create_key("worker")
    bad = running.api("POST", "/api/workers/register", key=worker, json={"hostname": "x"})
    assert bad.status_code == 400 and "worker_id" in bad.json()["error"]["message"]
    ok = running.api("POST", "/api/workers/register", key=worker, json={
        "worker_id": "http-w", "capabilities": {"hardware": ["cpu", "cuda"]}, "max_concurrent_tasks": 2})
    assert ok.status_code == 201 and ok.json()["worker_id"] == "http-w"
    assert "cuda" in running.api("GET", "/api/workers/http-w").json()["hardware"]
    # Now a cuda task is feasible (a registered worker can run it), so it is accepted as pending.
    accepted = running.submit({"type": "custom", "requirements": {"hardware": ["cuda"]}, "config": {"command": ["true"]}})
    assert accepted.status_code == 201 and accepted.json()["status"] == "pending"
    nodes = running.api("GET", "/api/cluster/nodes").json()["nodes"]
    assert nodes[0]["role"] == "leader"
    health = running.api("GET", "/api/cluster/health").json()["nodes"][0]
    assert {"cpu_percent", "memory_percent", "disk_percent"} <= set(health["metrics"])
    assert isinstance(health["alerts"], list)


def test_dependency_cycles_are_refused_and_batch_order_does_not_matter(running: Cluster) -> None:
    cycle = running.submit([
        {"type": "custom", "task_id": "a", "dependencies": ["b"], "config": {"command": ["true"]}},
        {"type": "custom", "task_id": "b", "dependencies": ["a"], "config": {"command": ["true"]}},
    ])
    assert cycle.status_code == 422 and "cycle" in cycle.json()["error"]["message"]
    ok = running.submit([
        {"type": "custom", "task_id": "child", "dependencies": ["parent"], "config": {"command": ["true"]}},
        {"type": "custom", "task_id": "parent", "config": {"command": ["true"]}},
    ])
    assert ok.status_code == 201
    assert [t["status"] for t in ok.json()] == ["blocked", "pending"]


def test_garbage_from_a_worker_cannot_break_the_coordinator(running: Cluster) -> None:
    """A buggy or hostile worker key sends malformed outcomes; the coordinator stays up and consistent."""
    import json as _json

    import trio
    from trio_websocket import open_websocket_url

    worker_key = running.create_key("worker")
    created = running.submit({"type": "custom", "config": {"command": ["true"]}}).json()

    async def rogue() -> None:
        url = running.url.replace("http://", "ws://") + "/ws/worker"
        async with open_websocket_url(url, extra_headers=[(b"X-API-Key", worker_key.encode())]) as ws:
            # A hello with wrong field types is refused with the reason (and a 4400 close).
            await ws.send_message(_json.dumps({"type": "hello", "worker_id": "rogue", "max_concurrent_tasks": "x",
                                               "capabilities": ["not", "a", "dict"]}))
            refused = _json.loads(await ws.get_message())
            assert refused["code"] == "bad_hello" and "must be" in refused["message"], refused
        async with open_websocket_url(url, extra_headers=[(b"X-API-Key", worker_key.encode())]) as ws:
            await ws.send_message(_json.dumps({"type": "hello", "worker_id": "rogue"}))
            assert _json.loads(await ws.get_message())["type"] == "welcome"
            assign = _json.loads(await ws.get_message())
            while assign["type"] != "assign":
                assign = _json.loads(await ws.get_message())
            task = assign["tasks"][0]
            for junk in ([1, 2], {"task_id": 5}, {"task_id": task["task_id"], "attempt": "one"},
                         {"task_id": task["task_id"], "attempt": task["attempt"], "outcome": "completed",
                          "start_time": "yesterday", "result": {"status": "great", "metrics": [1],
                                                                "tests": "many", "benchmarks": [{"batch_size": "x"}]}}):
                await ws.send_message(_json.dumps({"type": "results", "items": [junk]}))
            await ws.send_message("not json at all")
            ack = _json.loads(await ws.get_message())
            while ack["type"] != "ack":
                ack = _json.loads(await ws.get_message())

    trio.run(rogue)
    task = running.task(created["task_id"])
    assert task["status"] == "completed" and task["result"]["status"] == "partial"
    assert running.api("GET", "/api/status").status_code == 200
    assert running.api("GET", "/api/results").status_code == 200
    follow = running.submit({"type": "custom", "config": {"command": ["true"]}})
    assert follow.status_code == 201


def test_openapi_describes_every_http_route(running: Cluster) -> None:
    import re

    spec = running.api("GET", "/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    # Served by the /api/workers/<worker_id> rule (a worker may be named "register"), described for exactness.
    described.discard(("/api/workers/register", "GET"))
    from dtf_app.config import Settings
    from dtf_app.coordinator.api import create_app
    from dtf_app.coordinator.service import Coordinator

    app = create_app(Coordinator(Settings(data_dir=str(running.root / "unused"))))
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.websocket or rule.rule.startswith("/static"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        served |= {(path, m) for m in rule.methods if m not in ("HEAD", "OPTIONS")}
    assert served == described, served ^ described


def test_duplicate_task_id_is_409_and_bad_outcome_times_are_400(running: Cluster) -> None:
    first = running.submit({"type": "custom", "task_id": "dup", "config": {"command": ["true"]}})
    assert first.status_code == 201
    again = running.submit({"type": "custom", "task_id": "dup", "config": {"command": ["true"]}})
    assert again.status_code == 409 and again.json()["error"]["code"] == "exists"
    worker = running.create_key("worker")
    bad = running.api("POST", "/api/tasks/dup/complete", key=worker, json={"end_time": "yesterday"})
    assert bad.status_code == 400 and "end_time" in bad.json()["error"]["message"]
    assert running.task("dup")["status"] == "pending"
