"""kill -9 of a worker or the coordinator loses nothing that was acknowledged."""

from __future__ import annotations

import signal
import time

from tests.integration.harness import Cluster, wait_for


def test_worker_killed_mid_task_task_completes_on_another_worker(cluster: Cluster) -> None:
    cluster.start_coordinator()
    victim = cluster.start_worker("victim", slots=1)
    cluster.wait_workers(1)
    created = cluster.submit({"type": "custom", "name": "slow", "max_retries": 3,
                              "config": {"command": ["sleep", "4"]}}).json()
    running = cluster.wait_task(created["task_id"], states=("running",), timeout=30)
    assert running["worker_id"] == "victim"
    victim.kill(signal.SIGKILL)
    cluster.start_worker("survivor", slots=1)
    task = cluster.wait_task(created["task_id"], timeout=60)
    assert task["status"] == "completed"
    assert task["worker_id"] == "survivor"
    assert task["attempts"] == 2
    lost = cluster.api("GET", "/api/workers/victim").json()
    assert lost["status"] == "offline"


def test_coordinator_killed_right_after_ack_keeps_the_task(cluster: Cluster) -> None:
    cluster.start_coordinator()
    response = cluster.submit([{"type": "custom", "name": f"durable-{i}", "config": {"command": ["true"]}}
                               for i in range(50)])
    assert response.status_code == 201
    ids = [t["task_id"] for t in response.json()]
    cluster.coordinator.kill(signal.SIGKILL)  # no worker yet: nothing ran, everything is only in the log
    cluster.coordinator.wait()
    cluster.start_coordinator()
    for task_id in ids:
        assert cluster.task(task_id)["status"] == "pending"
    cluster.start_worker("w1", slots=4)
    for task_id in ids:
        assert cluster.wait_task(task_id)["status"] == "completed"


def test_coordinator_restart_mid_run_results_are_resent_from_outbox(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1", slots=2)
    cluster.wait_workers(1)
    created = cluster.submit([{"type": "custom", "config": {"command": ["sleep", "4"]}} for _ in range(2)]).json()
    for task in created:
        cluster.wait_task(task["task_id"], states=("running",), timeout=30)
    cluster.coordinator.kill(signal.SIGKILL)
    cluster.coordinator.wait()
    time.sleep(4.5)  # the tasks finish while the coordinator is down; results wait in the outbox
    cluster.start_coordinator()
    for task in created:
        done = cluster.wait_task(task["task_id"], timeout=60)
        assert done["status"] == "completed"
        assert done["attempts"] == 1  # the outbox re-sent the result: no re-run
    wait_for(lambda: cluster.api("GET", "/api/workers/w1").json()["status"] == "online", what="worker back")


def test_worker_stopped_with_sigterm_mid_task_task_runs_again(cluster: Cluster) -> None:
    cluster.start_coordinator()
    first = cluster.start_worker("first", slots=1)
    cluster.wait_workers(1)
    created = cluster.submit({"type": "custom", "config": {"command": ["sleep", "5"]}}).json()
    cluster.wait_task(created["task_id"], states=("running",), timeout=30)
    first.stop()  # SIGTERM: the worker kills the process group and records the attempt as interrupted
    # The same worker comes back: its outbox re-sends "cancelled" for the interrupted attempt, which
    # must put the task back in the queue, not fail it.
    cluster.start_worker("first", slots=1)
    task = cluster.wait_task(created["task_id"], timeout=60)
    assert task["status"] == "completed" and task["attempts"] == 2


def test_kill_9_during_concurrent_submits_loses_no_acknowledged_task(cluster: Cluster) -> None:
    import threading

    cluster.start_coordinator()
    acked: list[str] = []
    stop = threading.Event()

    def submitter(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 400:
            try:
                response = cluster.submit([{"type": "custom", "task_id": f"s{n}-{i}-{j}", "config": {"command": ["true"]}}
                                           for j in range(5)])
            except Exception:  # noqa: BLE001 - the coordinator is being killed: errors are expected
                return
            if response.status_code == 201:
                acked.extend(t["task_id"] for t in response.json())
            i += 1

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acked) >= 200, timeout=30, what="some acknowledged submits")
    cluster.coordinator.kill(signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    cluster.coordinator.wait()
    cluster.start_coordinator()
    total = cluster.api("GET", "/api/tasks", params={"limit": 100_000}).json()
    known = {t["task_id"] for t in total["tasks"]}
    missing = [task_id for task_id in acked if task_id not in known]
    assert not missing, f"{len(missing)} acknowledged tasks lost, e.g. {missing[:5]}"
    assert len(acked) >= 200


def test_paused_worker_is_declared_lost_then_comes_back(cluster: Cluster) -> None:
    cluster.start_coordinator()
    frozen = cluster.start_worker("frozen", slots=1)
    cluster.wait_workers(1)
    created = cluster.submit({"type": "custom", "config": {"command": ["sleep", "6"]}}).json()
    cluster.wait_task(created["task_id"], states=("running",), timeout=30)
    frozen.kill(signal.SIGSTOP)  # a hung machine: the socket stays open, nothing is said
    try:
        cluster.start_worker("healthy", slots=1)
        task = cluster.wait_task(created["task_id"], timeout=60)
        assert task["status"] == "completed" and task["worker_id"] == "healthy"
        assert cluster.api("GET", "/api/workers/frozen").json()["status"] == "offline"
    finally:
        frozen.kill(signal.SIGCONT)
    # Resumed, it notices the coordinator dropped it, reconnects and takes work again.
    wait_for(lambda: cluster.api("GET", "/api/workers/frozen").json()["status"] == "online", timeout=30,
             what="the resumed worker to reconnect")
    cluster.workers[-1].stop()  # only the resumed worker is left to run the next task
    follow = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(follow["task_id"], timeout=60)["worker_id"] == "frozen"


def test_restart_after_snapshots_keeps_state_and_writes_rows_once(cluster: Cluster) -> None:
    import duckdb

    env = {"DTF_SNAPSHOT_EVERY": "7"}  # many snapshot + log restarts during this short run
    cluster.start_coordinator(env=env)
    cluster.start_worker("w1", slots=2)
    cluster.wait_workers(1)
    ids = []
    for i in range(12):
        ids += [t["task_id"] for t in cluster.submit([{"type": "custom", "name": f"r{i}-{j}",
                                                       "config": {"command": ["true"]}} for j in range(3)]).json()]
    for task_id in ids:
        assert cluster.wait_task(task_id)["status"] == "completed"
    assert list((cluster.data_dir / "raft").glob("snap-*.snap")), "no Raft snapshot was taken"
    cluster.coordinator.kill(signal.SIGKILL)
    cluster.coordinator.wait()
    cluster.start_coordinator(env=env)
    assert all(cluster.task(task_id)["status"] == "completed" for task_id in ids)
    more = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(more["task_id"])["status"] == "completed"
    cluster.stop()
    con = duckdb.connect(str(cluster.data_dir / "dtf.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM distributed_tasks").fetchone()[0] == len(ids) + 1
        # Replay after the crash re-applied entries the store already had: still one row per attempt.
        assert con.execute("SELECT count(*), count(DISTINCT result_id) FROM results").fetchone() == (
            len(ids) + 1, len(ids) + 1)
        assert con.execute("SELECT count(*) FROM task_execution_history").fetchone()[0] == len(ids) + 1
    finally:
        con.close()
