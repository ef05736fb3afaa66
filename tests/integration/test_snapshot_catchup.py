"""A follower that was down while the log was compacted catches up by snapshot, and its DuckDB file
holds the same completed tasks and results as the others' (real processes, tiny snapshot thresholds)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import HACluster, print_logs_if_failed, store_rows, wait_for
from tests.integration.test_partition import completed


@pytest.fixture
def small_snapshots(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    cluster = HACluster(tmp_path)
    base = cluster.env
    # Snapshot every 20 entries and keep none behind it: a follower that misses 20 entries needs a snapshot.
    cluster.env = lambda: {**base(), "DTF_SNAPSHOT_EVERY": "20", "DTF_SNAPSHOT_KEEP": "0"}  # type: ignore[method-assign]
    yield cluster
    cluster.stop()
    print_logs_if_failed(request, tmp_path)


def test_a_follower_caught_up_by_snapshot_has_every_result_row(small_snapshots: HACluster) -> None:
    ha = small_snapshots
    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    worker_key = ha.api("POST", leader, "/api/keys", json={"name": "snap-workers", "role": "worker"}).json()["key"]
    ha.start_worker("w1", worker_key)
    first = [t["task_id"] for t in ha.submit_anywhere(
        [{"type": "custom", "name": f"first-{i}", "config": {"command": ["echo", f"first {i}"]}} for i in range(5)])]
    wait_for(lambda: completed(ha, ha.wait_leader(), first), 120, interval=0.5, what="the first tasks")

    down = next(i for i in ha.ids if i != ha.wait_leader())
    ha.nodes[down].kill(signal.SIGKILL)
    ha.nodes[down].wait()
    # Many entries while it is down: one submit per task, each its own log entry, so there are more than
    # the 20 a snapshot needs however the leader batches assignments, starts and completions (a loaded
    # machine batches more: one submit of all 30 was once fewer than 20 entries, and no snapshot came).
    missed = [t["task_id"] for i in range(30) for t in ha.submit_anywhere(
        {"type": "custom", "name": f"missed-{i}", "config": {"command": ["echo", f"missed {i}"]}})]
    wait_for(lambda: completed(ha, ha.wait_leader(), missed), 180, interval=0.5, what="the tasks it missed")

    ha.start(down)
    wait_for(lambda: "installed a snapshot" in ha.nodes[down].output(), 120,
             what="the restarted follower to install the leader's snapshot")
    last = [t["task_id"] for t in ha.submit_anywhere(
        [{"type": "custom", "name": f"last-{i}", "config": {"command": ["echo", f"last {i}"]}} for i in range(3)])]
    wait_for(lambda: completed(ha, ha.wait_leader(), last), 120, interval=0.5, what="tasks after the catch-up")
    target = ha.status(ha.wait_leader())["commit_index"]
    for node_id in ha.ids:
        wait_for(lambda n=node_id: ha.status(n)["applied_index"] >= target, 90, what=f"{node_id} to apply everything")
    ha.stop()

    rows = {node_id: store_rows(ha.root / node_id / "dtf.duckdb") for node_id in ha.ids}
    everything = set(first + missed + last)
    for node_id, got in rows.items():
        assert {r[0] for r in got["completed"]} == everything, node_id
        assert sorted(r[1] for r in got["results"]) == sorted(everything), f"{node_id}: one result per task"
    reference = rows[ha.ids[0]]
    assert all(got == reference for got in rows.values()), "the replicas' DuckDB files disagree"
    # The result rows rebuilt from the snapshot carry the runs' output like the others.
    assert any('"missed 7' in r[6] for r in rows[down]["results"])
