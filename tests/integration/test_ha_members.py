"""Runtime cluster membership with real processes: add a 4th coordinator, remove one, lose another.

Three coordinators start from ``--peers``; a fourth is started with the current members plus itself and
added with ``dtf cluster add``; the leader is removed with ``dtf cluster remove`` (it hands over first);
then another original is SIGKILLed. The cluster left (one original + the new node of three voters) still
has a majority, accepts submits, and every acknowledged task completes exactly once. Nothing simulated.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import httpx

from tests.integration.harness import HACluster, _env, assert_replicas_agree, wait_for


def _dtf(ha: HACluster, *args: str, urls: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dtf_app", *args, "--coordinator", urls or ha.urls,
                           "--api-key", ha.key], capture_output=True, text=True, timeout=180, env=_env(ha.env()))


def _status(ha: HACluster, node_id: str) -> dict[str, Any] | None:
    try:
        return ha.status(node_id)
    except (httpx.HTTPError, ValueError):
        return None


def _tasks(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"type": "custom", "name": f"{prefix}-{i}", "config": {"command": ["sleep", "0.1"]}} for i in range(n)]


def _done(ha: HACluster, ids: list[str]) -> bool:
    return all((t := ha.task(i)) is not None and t["status"] == "completed" for i in ids)


def test_add_a_coordinator_remove_the_leader_and_lose_another_without_losing_work(ha: HACluster) -> None:
    originals = list(ha.ids)
    for node_id in originals:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    worker_key = ha.api("POST", leader, "/api/keys", json={"name": "ha-workers", "role": "worker"}).json()["key"]
    ha.start_worker("w1", worker_key)
    ha.start_worker("w2", worker_key)
    acked = [t["task_id"] for t in ha.submit_anywhere(_tasks("first", 15))]

    # A fourth coordinator: started with the current members plus itself, then added through the CLI.
    new = ha.new_node_id()
    new_url = ha.url(new)
    ha.start(new, peers=f"{ha.peers},{new}={new_url}")
    wait_for(lambda: (_status(ha, new) or {}).get("node_id") == new, 90, what="the new node to answer")
    added = _dtf(ha, "cluster", "add", new, new_url, "--wait", "60")
    assert added.returncode == 0, added.stdout + added.stderr
    # It printed what the new node needs: its id, the --peers value naming every member, the secret.
    assert f"--node-id {new}" in added.stdout and "DTF_CLUSTER_SECRET" in added.stdout, added.stdout
    assert all(f"{i}={ha.url(i)}" in added.stdout for i in [*originals, new]), added.stdout
    assert f"added {new}" in added.stdout
    # A second change while none is pending is fine; the same node again is a conflict, not a crash.
    again = _dtf(ha, "cluster", "add", new, new_url)
    assert again.returncode == 2 and "already a member" in again.stderr, again.stderr

    leader = ha.wait_leader()
    commit = ha.status(leader)["commit_index"]
    wait_for(lambda: (_status(ha, new) or {}).get("applied_index", 0) >= commit, 90,
             what="the new node to catch up")
    # Every node, the new one included, knows every member's URL from the replicated state.
    for node_id in [*originals, new]:
        nodes = ha.api("GET", node_id, "/api/cluster/nodes").json()["nodes"]
        assert {n["node_id"]: n["url"] for n in nodes} == {i: ha.url(i) for i in [*originals, new]}, node_id
    assert ha.status(new)["voters"] == sorted([*originals, new])
    acked += [t["task_id"] for t in ha.submit_anywhere(_tasks("second", 15))]

    # Remove the leader itself: it hands leadership over first, the new leader makes the change.
    removed = leader
    gone = _dtf(ha, "cluster", "remove", removed)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    members = [i for i in [*originals, new] if i != removed]
    wait_for(lambda: all((_status(ha, i) or {}).get("voters") == sorted(members) for i in members), 90,
             what="every member to drop the removed node")
    wait_for(lambda: "was removed from the cluster" in ha.nodes[removed].output(), 90,
             what="the removed node to say it was removed")
    assert (_status(ha, removed) or {}).get("removed") is True
    assert ha.nodes[removed].proc.poll() is None, "the removed node keeps running (an operator stops it)"
    acked += [t["task_id"] for t in ha.submit_anywhere(_tasks("third", 15))]

    # Lose another original: the new node and the last original are a majority of the three voters.
    victim = next(i for i in originals if i != removed)
    survivor = next(i for i in originals if i not in (removed, victim))
    ha.nodes[victim].kill(signal.SIGKILL)
    ha.nodes[victim].wait()
    ha.wait_leader([survivor, new], timeout=90)
    acked += [t["task_id"] for t in ha.submit_anywhere(_tasks("fourth", 15))]
    wait_for(lambda: _done(ha, acked), 180, interval=0.5, what="every acknowledged task to complete")
    # The removed node stayed out of the way: a follower that never pushed a term past the cluster's.
    leader = ha.wait_leader([survivor, new])
    out = ha.status(removed)
    assert out["role"] == "follower" and out["term"] <= ha.status(leader)["term"]
    # (Asked of the leader: the removed node, which never applied its removal, still shows its old view.)
    listed = json.loads(_dtf(ha, "cluster", "nodes", "--json", urls=ha.url(leader)).stdout)["nodes"]
    assert {n["node_id"] for n in listed} == set(members)
    ha.stop()

    assert_replicas_agree([ha.root / node_id / "dtf.duckdb" for node_id in (survivor, new)], acked)
