"""Hostile input at every edge of a real coordinator: strict JSON, the id alphabet, escaped logs, and a
store writer that survives a row it cannot write (quarantine, not a dead node).

Each case was found by an outside probe through the public API; the coordinator and the workers are
real processes on 127.0.0.1 (harness.Cluster) and the DuckDB store a real file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from dtf_app.coordinator import scheduler
from dtf_app.coordinator.cmdlog import CommandLog
from dtf_app.jsonsafe import MAX_JSON_DEPTH
from dtf_app.protocol import BATCH_SIZE_RANGE
from dtf_app.store.writer import EVENT_KINDS
from tests.integration.harness import Cluster, wait_for

CUSTOM = {"type": "custom", "config": {"command": ["true"]}}


@pytest.fixture
def running(cluster: Cluster) -> Cluster:
    cluster.start_coordinator()
    return cluster


def _post(cluster: Cluster, path: str, body: bytes, key: str | None = None) -> httpx.Response:
    return cluster.api("POST", path, key=key, content=body, headers={"Content-Type": "application/json"})


def _alive(cluster: Cluster) -> None:
    """The coordinator still serves, nothing was queued from refused bodies, and it did not crash."""
    assert cluster.coordinator is not None and cluster.coordinator.proc.poll() is None, cluster.coordinator.output()
    assert httpx.get(cluster.url + "/status", timeout=10).status_code == 200
    # Every answer is strict JSON: a parser refusing NaN/Infinity reads it.
    text = cluster.api("GET", "/api/tasks").text
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name} in {text[:200]}"))
    assert "Traceback" not in cluster.coordinator.output()


# ------------------------------------------------------------------------------------------ HTTP bodies
@pytest.mark.parametrize(("body", "path"), [
    (b'{"type": "custom", "name": "\\ud800", "config": {"command": ["true"]}}', "name"),
    (b'[{"type": "custom", "config": {"command": ["true"]}}, {"type": "custom", "config": {"command": ["true"]}},'
     b' {"type": "custom", "config": {"command": ["true"]}},'
     b' {"type": "custom", "config": {"command": ["echo", "\\udfff"]}}]', "tasks[3].config.command[1]"),
    (b'{"tasks": [{"type": "custom", "metadata": {"\\udc80": 1}, "config": {"command": ["true"]}}]}',
     'tasks[0].metadata["\\udc80"]'),
    (b'{"type": "custom", "requirements": {"min_memory_gb": NaN}, "config": {"command": ["true"]}}',
     "requirements.min_memory_gb"),
    (b'{"type": "custom", "metadata": {"x": [1, Infinity]}, "config": {"command": ["true"]}}', "metadata.x[1]"),
    (b'{"type": "custom", "config": {"command": ["true"], "kwargs": {"big": -1e999}}}', "config.kwargs.big"),
])
def test_invalid_unicode_and_non_finite_numbers_are_400_naming_the_field(running: Cluster, body: bytes,
                                                                         path: str) -> None:
    response = _post(running, "/api/tasks", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith(path + ":"), error
    assert running.api("GET", "/api/tasks").json()["total"] == 0
    _alive(running)


def test_worker_registration_refuses_bad_unicode_and_ids_outside_the_alphabet(running: Cluster) -> None:
    key = running.worker_key
    surrogate = _post(running, "/api/workers/register", b'{"worker_id": "w\\ud800"}', key=key)
    assert surrogate.status_code == 400 and surrogate.json()["error"]["message"].startswith("worker_id:")
    for bad in ("w\nFAKE LINE", "w 1", "w/../x", "", "x" * 129, 7):
        response = running.api("POST", "/api/workers/register", key=key, json={"worker_id": bad})
        assert response.status_code == 400, (bad, response.text)
        message = response.json()["error"]["message"]
        assert "worker_id must be 1-128 characters of letters A-Z a-z, digits 0-9 and . _ : @ -" in message
    good = running.api("POST", "/api/workers/register", key=key, json={"worker_id": "host-1.lab:gpu@2_x"})
    assert good.status_code == 201, good.text
    # Task ids given by a client and key names use the same alphabet.
    task = running.submit({**CUSTOM, "task_id": "a\nb"})
    assert task.status_code == 400 and "task_id must be 1-128 characters of letters" in task.text
    name = running.api("POST", "/api/keys", json={"name": "k\r\nx", "role": "viewer"})
    assert name.status_code == 400 and "name must be 1-128 characters of letters" in name.text
    assert running.api("POST", "/api/keys", json={"name": "ci@lab:1", "role": "viewer"}).status_code == 201
    assert [w["worker_id"] for w in running.api("GET", "/api/workers").json()["workers"]] == ["host-1.lab:gpu@2_x"]
    _alive(running)


def test_deep_nesting_is_a_400_with_the_limit_not_a_500(running: Cluster) -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    for path in ("/api/tasks", "/api/keys"):
        response = _post(running, path, deep)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "too_deep"
        assert f"the limit is {MAX_JSON_DEPTH}" in response.json()["error"]["message"]
    unclosed = _post(running, "/api/tasks", b'{"a":' * 10_000)
    assert unclosed.status_code == 400
    # At the limit is fine for the parser (the task document itself is then checked as usual).
    nested = {**CUSTOM, "metadata": {}}
    inner = nested["metadata"]
    for _ in range(MAX_JSON_DEPTH - 2):  # task object + metadata object + these = the limit
        inner["x"] = {}
        inner = inner["x"]
    assert running.submit(nested).status_code == 201
    inner["x"] = {}
    over = running.submit(nested)
    assert over.status_code == 400 and over.json()["error"]["code"] == "too_deep"
    _alive(running)


def test_query_strings_and_path_segments_with_bad_utf8_are_answered(running: Cluster) -> None:
    """An encoded surrogate (invalid UTF-8) in a query or a path reaches DuckDB and the views safely."""
    for query in ("task_id=%ED%A0%80", "worker_id=%FF", "status=%ED%B2%80"):
        response = running.api("GET", f"/api/results?{query}")
        assert response.status_code == 200 and response.json() == {"results": []}, response.text
    assert running.api("GET", "/api/tasks/%ED%A0%80").status_code == 404
    assert running.api("GET", "/api/tasks?worker_id=%ED%A0%80").json()["total"] == 0
    _alive(running)


# ------------------------------------------------------------------------------------------ websockets
def _ws_url(cluster: Cluster, path: str) -> str:
    return cluster.url.replace("http://", "ws://") + path


def test_worker_socket_refuses_bad_hellos_with_4400_and_survives_bad_frames(running: Cluster) -> None:
    url = _ws_url(running, "/ws/worker")
    headers = [(b"X-API-Key", running.worker_key.encode())]

    async def hello_refused(frame: str) -> tuple[dict, int | None]:
        async with open_websocket_url(url, extra_headers=headers) as ws:
            await ws.send_message(frame)
            reply = json.loads(await ws.get_message())
            with pytest.raises(ConnectionClosed) as closed:
                with trio.fail_after(30):
                    await ws.get_message()
            return reply, closed.value.reason.code

    async def main() -> None:
        for frame, fragment in [
            ('{"type": "hello", "worker_id": "w\\nFAKE"}', "worker_id must be 1-128 characters"),
            ('{"type": "hello", "worker_id": "\\ud800"}', "worker_id: the string has a lone UTF-16 surrogate"),
            ('{"type": "hello", "worker_id": "w", "max_concurrent_tasks": NaN}', "max_concurrent_tasks"),
            ("[" * 10_000 + "]" * 10_000, "nested more than"),
        ]:
            reply, code = await hello_refused(frame)
            assert reply["type"] == "error" and fragment in reply["message"], reply
            assert code == 4400
        # A good hello, then bad frames: each answered with an error frame, the connection stays up.
        async with open_websocket_url(url, extra_headers=headers) as ws:
            await ws.send_message(json.dumps({"type": "hello", "worker_id": "ws-probe", "max_concurrent_tasks": 1}))
            assert json.loads(await ws.get_message())["type"] == "welcome"
            for frame in ("[" * 10_000 + "]" * 10_000, '{"type": "heartbeat", "metrics": {"cpu": NaN}}',
                          '{"type": "log", "task_id": "\\udead", "lines": []}'):
                await ws.send_message(frame)
                with trio.fail_after(30):
                    while (reply := json.loads(await ws.get_message()))["type"] != "error":
                        pass
                assert reply["message"].startswith("frame ignored"), reply
            await ws.send_message(json.dumps({"type": "heartbeat", "metrics": {}, "running": []}))
        wait_for(lambda: running.api("GET", "/api/workers/ws-probe").status_code == 200, what="ws-probe known")

    trio.run(main)
    _alive(running)


def test_client_socket_answers_bad_frames_with_an_error_frame(running: Cluster) -> None:
    async def main() -> None:
        async with open_websocket_url(_ws_url(running, "/ws"), extra_headers=[(b"X-API-Key", running.admin_key.encode())]) as ws:
            for frame, code in (("[" * 10_000 + "]" * 10_000, "too_deep"),
                                ('{"type": "subscribe", "channel": "\\ud800"}', "invalid_json"),
                                ('{"type": "subscribe", "channel": "task_updates", "filter": {"x": NaN}}',
                                 "invalid_json")):
                await ws.send_message(frame)
                with trio.fail_after(30):
                    reply = json.loads(await ws.get_message())
                assert reply["type"] == "error" and reply["error"]["code"] == code, reply
            await ws.send_message(json.dumps({"type": "get_status", "request_id": 1}))
            with trio.fail_after(30):
                assert json.loads(await ws.get_message())["type"] == "cluster_status_response"

    trio.run(main)
    _alive(running)


# ------------------------------------------------------------------------------------------ logs
def test_logged_values_cannot_forge_log_lines(running: Cluster) -> None:
    """A task name with a newline that reaches the log appears escaped, on its own line."""
    worker = running.start_worker("logw", slots=1)
    running.wait_workers(1)
    # A task that fails for good is logged by the coordinator with its name, and by the worker with its error.
    created = running.submit({"type": "custom", "name": "evil\nFAKE LINE 00:00:00 ERROR dtf.api: forged",
                              "max_retries": 0, "config": {"command": ["no-such-program-dtf\nFAKE LINE 2"]}})
    assert created.status_code == 201, created.text
    assert running.wait_task(created.json()["task_id"])["status"] == "failed"
    wait_for(lambda: "(evil\\nFAKE LINE 00:00:00 ERROR dtf.api: forged) failed" in running.coordinator.output(),
             what="the escaped task name in the coordinator's log")
    for output in (worker.output(), running.coordinator.output()):
        assert not [line for line in output.splitlines() if line.startswith("FAKE LINE")], output


# ------------------------------------------------------------------------------------------ store quarantine
def test_a_row_the_store_cannot_write_is_quarantined_and_the_node_keeps_serving(cluster: Cluster) -> None:
    """Defence in depth: a command log that (somehow) holds a lone surrogate must not kill the node."""
    cluster.start_coordinator()
    cluster.coordinator.stop()
    docs = [scheduler.validate_task({**CUSTOM, "task_id": f"good-{i}", "name": f"good {i}"}) for i in range(2)]
    bad = scheduler.validate_task({**CUSTOM, "task_id": "bad-0", "name": "x"})
    bad["name"] = "lone \ud800 surrogate"  # what no API accepts any more; written straight into the log
    log = CommandLog(cluster.data_dir / "log")
    log.open()
    index = log.append([{"op": "SubmitTasks", "time": time.time(),
                         "tasks": [dict(d, batch_id="b1") for d in (docs[0], bad, docs[1])]}])
    log.sync()
    log.close()

    # The first start quarantines the bad task's rows; a restart finds the entry recorded and serves too.
    for expected in ("positive", "zero"):
        cluster.start_coordinator()
        tasks = cluster.api("GET", "/api/tasks").json()["tasks"]  # strict JSON even with that name in the state
        assert {t["task_id"] for t in tasks} >= {"good-0", "good-1", "bad-0"}
        assert cluster.api("GET", "/api/results").status_code == 200  # waits for the store to catch up
        quarantined = _quarantined(cluster)
        assert (quarantined > 0) if expected == "positive" else (quarantined == 0), quarantined
        assert cluster.api("POST", "/api/tasks", json=CUSTOM).status_code == 201  # still takes work
        assert cluster.coordinator.proc.poll() is None
        cluster.coordinator.stop()
    records = [json.loads(line) for line in (cluster.data_dir / "store-quarantine.jsonl").read_text().splitlines()]
    assert records and {r["log_index"] for r in records} == {index}
    assert {r["event"][EVENT_KINDS[r["event"]["kind"]]]["task_id"] for r in records} == {"bad-0"}
    assert "store: quarantined a task event of log entry" in (cluster.root / "coordinator.log").read_text()
    con = duckdb.connect(str(_db_path(cluster.data_dir)), read_only=True)
    try:
        ids = {r[0] for r in con.execute("SELECT task_id FROM distributed_tasks").fetchall()}
    finally:
        con.close()
    assert {"good-0", "good-1"} <= ids and "bad-0" not in ids and len(ids) == 4  # + the two posted above


def _quarantined(cluster: Cluster) -> float:
    metrics = cluster.api("GET", "/metrics").text
    line = next(m for m in metrics.splitlines() if m.startswith("dtf_store_quarantined_events_total"))
    return float(line.split()[-1])


def _db_path(data_dir: Path) -> Path:
    found = sorted(data_dir.glob("*.duckdb"))
    assert found, list(data_dir.iterdir())
    return found[0]


# ------------------------------------------------------------------------------------------ limits
def test_batch_size_limit_is_the_same_at_submit_and_in_the_runner(running: Cluster) -> None:
    from dtf_plugins.runners.benchmark import parse_config

    top = BATCH_SIZE_RANGE[1]
    at_limit = {"type": "benchmark", "config": {"model": "bert", "batch_sizes": [1, top]}}
    assert running.submit(at_limit, allow_unschedulable="true").status_code == 201
    assert parse_config(at_limit["config"])["batch_sizes"] == [1, top]  # the runner takes what submit took
    over = running.submit({"type": "benchmark", "config": {"model": "bert", "batch_sizes": [top + 1]}})
    assert over.status_code == 400 and f"integers from 1 to {top}" in over.json()["error"]["message"]
    spec = running.api("GET", "/openapi.json").json()
    assert f'"maximum": {top}' in json.dumps(spec)
