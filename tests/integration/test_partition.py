"""Network partitions between real coordinators: a fault-injecting TCP proxy on every peer link.

Each coordinator reaches each other one through its own proxy (``tests/integration/faultproxy.py``), so
a partition cuts peer traffic while clients and workers can still reach every node directly on its own
port. The proxies black-hole traffic (nothing is closed), as a real partition does: the isolated leader
learns it only from the silence of its peers (CheckQuorum), and steps down.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.faultproxy import ProxyMesh
from tests.integration.harness import HACluster, store_rows, wait_for


@pytest.fixture
def mesh_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    cluster = HACluster(tmp_path)
    mesh = ProxyMesh(cluster.ports)
    cluster.peers_for = mesh.peers_for  # type: ignore[method-assign]
    yield cluster, mesh
    mesh.heal()
    cluster.stop()
    mesh.close()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-6000:]}")


def connected_workers(cluster: HACluster, node_id: str) -> set[str]:
    workers = cluster.api("GET", node_id, "/api/workers").json()["workers"]
    return {w["worker_id"] for w in workers if w.get("connected")}


def completed(cluster: HACluster, node_id: str, ids: list[str]) -> bool:
    for task_id in ids:
        response = cluster.api("GET", node_id, f"/api/tasks/{task_id}")
        if response.status_code != 200 or response.json()["status"] != "completed":
            return False
    return True


def submit(cluster: HACluster, node_id: str, name: str, n: int, command: list[str]) -> list[str]:
    response = cluster.api("POST", node_id, "/api/tasks",
                           json=[{"type": "custom", "name": f"{name}-{i}", "config": {"command": command}}
                                 for i in range(n)])
    assert response.status_code == 201, response.text
    return [t["task_id"] for t in response.json()]


def _submit_or_none(cluster: HACluster, node_id: str, name: str, n: int) -> list[dict[str, Any]] | None:
    response = cluster.api("POST", node_id, "/api/tasks",
                           json=[{"type": "custom", "name": f"{name}-{i}", "config": {"command": ["true"]}}
                                 for i in range(n)])
    return response.json() if response.status_code == 201 else None


def test_an_isolated_leader_steps_down_and_the_majority_carries_on(mesh_cluster: Any) -> None:
    ha, mesh = mesh_cluster
    for node_id in ha.ids:
        ha.start(node_id)
    old = ha.wait_leader()
    ha.load_key()
    others = [i for i in ha.ids if i != old]
    worker_key = ha.api("POST", old, "/api/keys", json={"name": "part-workers", "role": "worker"}).json()["key"]
    # "direct" reaches the leader on its own port; "relayed" asks a follower first and follows its
    # leader_url, which is the follower's peer link to the leader (a proxy that the partition cuts).
    ha.start_worker("direct", worker_key, urls=",".join(ha.url(i) for i in [old, *others]))
    ha.start_worker("relayed", worker_key, urls=",".join(ha.url(i) for i in [*others, old]))

    def both_on_the_leader() -> str | None:
        # On a loaded machine leadership may move before the workers settle: whichever node leads once
        # both workers are connected to it is the leader the partition cuts off.
        leader = ha.leader()
        return leader if leader is not None and connected_workers(ha, leader) == {"direct", "relayed"} else None

    old = wait_for(both_on_the_leader, 180, what="both workers on the leader")
    others = [i for i in ha.ids if i != old]
    before = submit(ha, old, "before", 10, ["sleep", "0.3"])

    mesh.isolate(old)
    # A write the isolated leader takes now can never commit: it must not be acknowledged.
    late: dict[str, Any] = {}

    def write_to_isolated() -> None:
        try:
            late["response"] = httpx.post(ha.url(old) + "/api/tasks", headers={"X-API-Key": ha.key}, timeout=120,
                                          json={"type": "custom", "name": "isolated", "config": {"command": ["true"]}})
        except httpx.HTTPError as exc:
            late["error"] = exc

    writer = threading.Thread(target=write_to_isolated)
    writer.start()

    new = ha.wait_leader(others, timeout=90)
    assert new != old
    # The old leader stops acting as one: its own /status says so, and writes are refused.
    wait_for(lambda: ha.status(old)["role"] in ("follower", "candidate", "pre_candidate"), 60,
             what="the isolated leader to step down")
    refused = ha.api("POST", old, "/api/tasks", json={"type": "custom", "config": {"command": ["true"]}})
    assert refused.status_code in (307, 503), refused.text
    assert ha.status(old)["role"] != "leader"

    # The majority carries on: it accepts writes, and both workers find its leader (the relayed one's
    # link is black-holed, so it must notice the silence itself). On a loaded machine the majority may
    # elect again meanwhile: always ask whoever leads it now.
    def majority_leader() -> str:
        return ha.wait_leader(others, timeout=60)

    during = [t["task_id"] for t in wait_for(
        lambda: _submit_or_none(ha, majority_leader(), "during", 10), 90, what="the majority to accept a submit")]
    wait_for(lambda: connected_workers(ha, majority_leader()) == {"direct", "relayed"}, 120,
             what="both workers to move to the new leader")
    wait_for(lambda: completed(ha, majority_leader(), before + during), 120, interval=0.5,
             what="every acknowledged task to complete on the majority")
    assert ha.status(old)["role"] != "leader"

    mesh.heal()
    writer.join(150)
    assert not writer.is_alive()
    if "response" in late:
        assert late["response"].status_code in (307, 503), late["response"].text
    new = ha.wait_leader(timeout=90)
    wait_for(lambda: (s := ha.status(old))["role"] == "follower" and s["leader_id"] is not None, 90,
             what="the old leader to follow the new one")
    after = [t["task_id"] for t in ha.submit_anywhere(
        [{"type": "custom", "name": f"after-{i}", "config": {"command": ["true"]}} for i in range(5)])]
    wait_for(lambda: completed(ha, ha.wait_leader(), after), 120, interval=0.5, what="tasks after the heal")
    new = ha.wait_leader()
    target = ha.status(new)["commit_index"]
    for node_id in ha.ids:
        wait_for(lambda n=node_id: ha.status(n)["applied_index"] >= target, 90, what=f"{node_id} to apply everything")
    # The write the isolated leader took was never acknowledged and never happened.
    names = {t["name"] for t in ha.api("GET", new, "/api/tasks", params={"limit": 1000}).json()["tasks"]}
    assert "isolated" not in names
    assert len(names) == len(before + during + after)
    ha.stop()

    rows = [store_rows(ha.root / node_id / "dtf.duckdb") for node_id in ha.ids]
    assert {r[0] for r in rows[0]["completed"]} == set(before + during + after)
    assert len(rows[0]["results"]) == len(before + during + after)
    assert rows[0] == rows[1] == rows[2], "the replicas' DuckDB files disagree"


def _cut_off_a_follower(ha: HACluster, mesh: ProxyMesh) -> tuple[str, str]:
    """Start the cluster and isolate a follower in good standing: (leader, follower). It first knows the
    leader and has applied what it committed (the admin key among it); cut off sooner, it would not know
    the key, and its answers would be 401s."""
    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    follower = next(i for i in ha.ids if i != leader)
    commit = ha.status(leader)["commit_index"]
    wait_for(lambda: (s := ha.status(follower))["leader_id"] == leader and s["applied_index"] >= commit, 60,
             what="the follower to catch up before it is cut off")
    mesh.isolate(follower)
    return leader, follower


def test_a_partitioned_minority_node_accepts_no_writes_and_catches_up(mesh_cluster: Any) -> None:
    ha, mesh = mesh_cluster
    leader, minority = _cut_off_a_follower(ha, mesh)
    # Cut off, the follower campaigns (PreVote keeps its term from disrupting the majority later) and
    # never leads; every write sent to it is redirected or refused, never taken.
    for _ in range(5):
        response = ha.api("POST", minority, "/api/tasks", json={"type": "custom", "config": {"command": ["true"]}},
                          params={"allow_unschedulable": "true"})
        assert response.status_code in (307, 503), response.text
    wait_for(lambda: ha.status(minority)["leader_id"] is None, 60, what="the minority to lose its leader")
    accepted = ha.api("POST", leader, "/api/tasks", params={"allow_unschedulable": "true"},
                      json=[{"type": "custom", "name": f"m-{i}", "config": {"command": ["true"]}} for i in range(5)])
    assert accepted.status_code == 201, accepted.text
    assert ha.status(minority)["role"] != "leader"
    assert ha.api("GET", minority, "/api/tasks", params={"stale": "true"}).json()["total"] == 0
    mesh.heal()
    wait_for(lambda: ha.api("GET", minority, "/api/tasks", params={"stale": "true"}).json()["total"] == 5, 90,
             what="the healed node to catch up")


def test_a_lagging_follower_sends_a_worker_with_a_new_key_to_the_leader(mesh_cluster: Any) -> None:
    """A worker key the leader created and acknowledged is not yet on a follower cut off from it. A
    worker (or dashboard) dialling that follower is sent to the leader, never refused with 4401: a
    4401 stops a worker for good, and the key is valid."""
    import json

    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    ha, mesh = mesh_cluster
    leader, follower = _cut_off_a_follower(ha, mesh)
    created = ha.api("POST", leader, "/api/keys", json={"name": "new-workers", "role": "worker"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]

    async def dial(path: str) -> tuple[dict[str, Any], int]:
        url = ha.url(follower).replace("http://", "ws://") + path
        async with open_websocket_url(url, extra_headers=[(b"X-API-Key", key.encode())]) as ws:
            first = json.loads(await ws.get_message())
            with pytest.raises(ConnectionClosed) as info:
                with trio.fail_after(30):
                    await ws.get_message()
            return first, info.value.reason.code

    for path in ("/ws/worker", "/ws"):
        first, code = trio.run(dial, path)
        assert first["type"] == "error" and first["code"] in ("not_leader", "no_leader"), (path, first)
        assert code == 4307, (path, first, code)
    mesh.heal()
