"""Submit -> complete for each task type, through real coordinator and worker processes."""

from __future__ import annotations

import duckdb

from tests.integration.harness import ASSETS, Cluster


def test_each_task_type_runs_to_completion_and_lands_in_duckdb(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.wait_workers(2)
    tasks = [
        {"type": "test", "name": "sample-suite",
         "config": {"test_file": [str(ASSETS / "sample_suite" / "test_math.py")]}},
        {"type": "benchmark", "name": "bert-bench",
         "config": {"model": "bert", "batch_sizes": [1, 2], "precision": ["fp32"], "iterations": 3, "warmup": 1}},
        {"type": "custom", "name": "echo", "config": {"command": ["python3", "-c", "print('hello from dtf')"]}},
        {"type": "custom", "name": "noop", "config": {"callable": "dtf_plugins.runners.builtin_tasks:noop"}},
    ]
    response = cluster.submit(tasks)
    assert response.status_code == 201, response.text
    created = response.json()
    assert [t["status"] for t in created] == ["pending"] * 4
    done = {t["name"]: cluster.wait_task(t["task_id"], timeout=120) for t in created}
    for name, task in done.items():
        assert task["status"] == "completed", (name, task)
        assert task["result"]["status"] == "success", (name, task["result"])
        assert task["worker_id"] in ("w1", "w2")
    assert done["sample-suite"]["result"]["metrics"]["passed"] >= 1
    assert done["sample-suite"]["result"]["metrics"]["failed"] == 0
    assert "hello from dtf" in done["echo"]["result"]["output"]

    results = cluster.api("GET", "/api/results").json()["results"]
    assert {r["task_id"] for r in results} >= {t["task_id"] for t in created}

    cluster.stop()  # SIGTERM: the writer flushes before exit
    con = duckdb.connect(str(cluster.data_dir / "dtf.duckdb"), read_only=True)
    try:
        for table in ("worker_nodes", "distributed_tasks", "task_execution_history", "results"):
            (count,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert count > 0, table
        (tests,) = con.execute("SELECT count(*) FROM test_results").fetchone()
        assert tests >= 1
        rows = con.execute("SELECT batch_size, precision, throughput FROM benchmark_results ORDER BY batch_size").fetchall()
        assert [r[0] for r in rows] == [1, 2] and all(r[2] > 0 for r in rows)
        statuses = dict(con.execute("SELECT status, count(*) FROM distributed_tasks GROUP BY status").fetchall())
        assert statuses == {"completed": 4}
    finally:
        con.close()


def test_failing_test_suite_is_completed_with_failure_result(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1")
    cluster.wait_workers(1)
    created = cluster.submit({"type": "test", "config": {
        "test_file": str(ASSETS / "sample_suite" / "test_with_failure.py")}}).json()
    task = cluster.wait_task(created["task_id"], timeout=60)
    assert task["status"] == "completed"
    assert task["result"]["status"] == "failure"
    assert task["result"]["metrics"]["failed"] >= 1


def test_cancel_running_task_kills_it(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1")
    cluster.wait_workers(1)
    created = cluster.submit({"type": "custom", "config": {"command": ["sleep", "60"]}}).json()
    cluster.wait_task(created["task_id"], states=("running",), timeout=30)
    response = cluster.api("POST", f"/api/tasks/{created['task_id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = cluster.api("POST", f"/api/tasks/{created['task_id']}/cancel")
    assert again.status_code == 409
    # The worker frees the slot: the next task runs on the same single worker.
    follow = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(follow["task_id"], timeout=30)["status"] == "completed"


def test_timeout_fails_task_after_retries(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1")
    cluster.wait_workers(1)
    created = cluster.submit({"type": "custom", "timeout_seconds": 1, "max_retries": 1,
                              "config": {"command": ["sleep", "30"]}}).json()
    task = cluster.wait_task(created["task_id"], timeout=60)
    assert task["status"] == "failed"
    assert task["attempts"] == 2
    assert "timed out" in task["error"]


def test_dependencies_run_in_order(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1", slots=4)
    cluster.wait_workers(1)
    first = cluster.submit({"type": "custom", "task_id": "first", "config": {"command": ["sleep", "1"]}}).json()
    second = cluster.submit({"type": "custom", "task_id": "second", "dependencies": ["first"],
                             "config": {"command": ["true"]}}).json()
    assert second["status"] == "blocked"
    done_second = cluster.wait_task("second", timeout=60)
    done_first = cluster.task(first["task_id"])
    assert done_second["status"] == "completed"
    assert done_second["start_time"] >= done_first["end_time"]
