"""High availability with real processes: 3 coordinators on 127.0.0.1, workers, SIGKILL of the leader.

Each coordinator is ``python -m dtf_app --mode coordinator --peers ...`` with the cluster secret in its
environment; workers get all three URLs and follow the leader. Nothing is simulated.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx

from tests.integration.harness import (
    SECRET,
    HACluster,
    Node,
    _env,
    _free_ports,
    assert_replicas_agree,
    wait_for,
)


def _done(cluster: HACluster, ids: list[str]) -> bool:
    return all((t := cluster.task(i)) is not None and t["status"] == "completed" for i in ids)


def test_three_coordinators_fail_over_without_losing_or_duplicating_work(ha: HACluster) -> None:
    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    # Followers answer writes with the leader's address; every node answers its own cluster views.
    follower = next(i for i in ha.ids if i != leader)
    redirect = ha.api("POST", follower, "/api/tasks", json={"type": "custom", "config": {"command": ["true"]}})
    assert redirect.status_code == 307, redirect.text
    assert redirect.json()["error"]["leader_id"] == leader
    assert redirect.headers["Location"].startswith(ha.url(leader))
    nodes = ha.api("GET", follower, "/api/cluster/nodes").json()["nodes"]
    assert {n["node_id"] for n in nodes} == set(ha.ids)
    worker_key = ha.api("POST", leader, "/api/keys", json={"name": "ha-workers", "role": "worker"}).json()["key"]
    ha.start_worker("w1", worker_key)
    ha.start_worker("w2", worker_key)
    wait_for(lambda: len([w for w in ha.api("GET", ha.leader() or leader, "/api/workers").json()["workers"]
                          if w["status"] == "online"]) == 2, 60, what="2 workers online")

    before = [t["task_id"] for t in ha.submit_anywhere(
        [{"type": "custom", "name": f"before-{i}", "config": {"command": ["sleep", "0.2"]}} for i in range(20)])]
    ha.nodes[leader].kill(signal.SIGKILL)
    ha.nodes[leader].wait()
    survivors = [i for i in ha.ids if i != leader]
    new_leader = ha.wait_leader(survivors)
    assert new_leader != leader
    after = [t["task_id"] for t in ha.submit_anywhere(
        [{"type": "custom", "name": f"after-{i}", "config": {"command": ["true"]}} for i in range(20)])]
    wait_for(lambda: _done(ha, before + after), 120, interval=0.5, what="every acknowledged task to complete")

    # The killed node restarts and catches up.
    ha.start(leader)
    wait_for(lambda: ha.status(leader).get("applied_index", 0) >= ha.status(new_leader)["applied_index"] - 5, 60,
             what="the restarted node to catch up")
    history = ha.api("GET", new_leader, "/api/cluster/leader").json()["history"]
    assert [h["leader_id"] for h in history][-2:] == [leader, new_leader]
    page = ha.api("GET", new_leader, "/api/cluster/visualize")
    assert page.status_code == 200 and "<svg" in page.text and new_leader in page.text
    ha.stop()

    assert_replicas_agree([ha.root / node_id / "dtf.duckdb" for node_id in ha.ids], before + after)


def test_a_partitioned_minority_accepts_no_writes(ha: HACluster) -> None:
    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    # Stop both followers: the leader alone is a minority; it steps down and accepts nothing.
    for node_id in ha.ids:
        if node_id != leader:
            ha.nodes[node_id].kill(signal.SIGSTOP)
    try:
        wait_for(lambda: ha.status(leader).get("role") != "leader", 30, what="the isolated leader to step down")
        response = ha.api("POST", leader, "/api/tasks", json={"type": "custom", "config": {"command": ["true"]}})
        assert response.status_code in (307, 503), response.text
        assert ha.api("GET", leader, "/api/tasks", params={"stale": "true"}).json()["total"] == 0
    finally:
        for node_id in ha.ids:
            if node_id != leader:
                ha.nodes[node_id].kill(signal.SIGCONT)
    ha.wait_leader()


def test_cluster_misconfiguration_is_one_clear_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dtf_app", "--mode", "coordinator", "--data-dir",
                               str(tmp_path / "d"), *args], capture_output=True, text=True, timeout=90,
                              env=_env(env))

    no_secret = run("--port", "0", "--node-id", "a", "--peers", "a=http://127.0.0.1:1,b=http://127.0.0.1:2")
    assert no_secret.returncode == 2 and "DTF_CLUSTER_SECRET" in no_secret.stderr
    # The StatefulSet form lists every pod: a node that is not among them is misconfigured.
    not_listed = run("--port", "0", env={"DTF_CLUSTER_SECRET": SECRET, "ENABLE_HIGH_AVAILABILITY": "true",
                                         "HIGH_AVAILABILITY_PEERS": "127.0.0.1:1,127.0.0.1:2",
                                         "COORDINATOR_ID": "pod-9"})
    assert not_listed.returncode == 2 and "is not in the list" in not_listed.stderr, not_listed.stderr
    contradiction = run("--port", "0", env={"ENABLE_HIGH_AVAILABILITY": "false",
                                            "HIGH_AVAILABILITY_PEERS": "127.0.0.1:1,127.0.0.1:2"})
    assert contradiction.returncode == 2 and "ENABLE_HIGH_AVAILABILITY is false" in contradiction.stderr
    for result in (no_secret, not_listed, contradiction):
        assert "Traceback" not in result.stderr


def test_coordinators_given_different_peers_both_stop_with_one_clear_line(tmp_path: Path) -> None:
    pa, pb, pc, pd = _free_ports(4)
    env = {"DTF_CLUSTER_SECRET": SECRET, "DTF_STATE_DIR": str(tmp_path / "state")}
    a = Node(["--mode", "coordinator", "--node-id", "a", "--port", str(pa), "--data-dir", str(tmp_path / "a"),
              "--peers", f"a=http://127.0.0.1:{pa},b=http://127.0.0.1:{pb},c=http://127.0.0.1:{pc}"],
             tmp_path / "a.log", env=env)
    b = Node(["--mode", "coordinator", "--node-id", "b", "--port", str(pb), "--data-dir", str(tmp_path / "b"),
              "--peers", f"a=http://127.0.0.1:{pa},b=http://127.0.0.1:{pb},d=http://127.0.0.1:{pd}"],
             tmp_path / "b.log", env=env)
    try:
        assert a.wait(90) == 2
        assert b.wait(90) == 2
    finally:
        a.stop()
        b.stop()
    for node in (a, b):
        text = node.output()
        assert "misconfigured cluster" in text, text[-2000:]
        assert "Traceback" not in text


def test_statefulset_environment_starts_a_cluster_one_pod_at_a_time(tmp_path: Path) -> None:
    (port,) = _free_ports(1)
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    peers = ",".join(f"{h}:{port}" for h in hosts)
    nodes = []
    try:
        for i, host in enumerate(hosts):
            env = {"DTF_CLUSTER_SECRET": SECRET, "DTF_STATE_DIR": str(tmp_path / "state"),
                   "ENABLE_HIGH_AVAILABILITY": "true", "HIGH_AVAILABILITY_PEERS": peers,
                   "COORDINATOR_ID": f"dtf-ha-coordinator-{i}"}
            nodes.append(Node(["--mode", "coordinator", "--host", host, "--port", str(port), "--data-dir",
                               str(tmp_path / f"pod-{i}")], tmp_path / f"pod-{i}.log", env=env))
            if i == 0:
                # Alone it is a minority: it serves /status, says it waits, and elects nobody.
                wait_for(lambda: "no leader yet" in nodes[0].output(), 60, what="the waiting line")
                assert httpx.get(f"http://{hosts[0]}:{port}/status", timeout=5).json()["role"] != "leader"

        def leader() -> str | None:
            roles = {}
            for host in hosts:
                try:
                    roles[host] = httpx.get(f"http://{host}:{port}/status", timeout=2).json()["role"]
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
            leaders = [h for h, r in roles.items() if r == "leader"]
            return leaders[0] if len(leaders) == 1 else None

        host = wait_for(leader, 90, what="a leader among the pods")
        key = wait_for(lambda: next((p.read_text().strip() for p in tmp_path.glob("pod-*/admin.key")), None), 60,
                       what="the admin key")
        created = httpx.post(f"http://{host}:{port}/api/tasks", json={"type": "custom", "name": "k8s",
                             "config": {"command": ["true"]}}, params={"allow_unschedulable": "true"},
                             headers={"X-API-Key": key}, timeout=30)
        assert created.status_code == 201, created.text
        nodes_view = httpx.get(f"http://{host}:{port}/api/cluster/nodes", headers={"X-API-Key": key},
                               timeout=10).json()["nodes"]
        assert sorted(n["node_id"] for n in nodes_view) == sorted(f"{h}:{port}" for h in hosts)
    finally:
        for node in nodes:
            node.stop()


def test_forged_peer_traffic_is_refused_and_counted(ha: HACluster) -> None:
    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    target = next(i for i in ha.ids if i != leader)
    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    from dtf_app.raft import codec

    async def forge() -> None:
        async with open_websocket_url(f"ws://127.0.0.1:{ha.ports[target]}/raft") as ws:
            challenge, _ = codec.parse_challenge(await ws.get_message())
            await ws.send_message(codec.hello_frame(b"wrong-secret", challenge, leader, target))
            with trio.move_on_after(5):
                try:
                    await ws.get_message()
                except ConnectionClosed as closed:
                    refusals.append(closed.reason.code if closed.reason else None)

    refusals: list[int | None] = []

    trio.run(forge)

    def refused() -> bool:
        text = ha.api("GET", target, "/metrics").text
        line = next((ln for ln in text.splitlines() if ln.startswith('dtf_raft_peer_frames_refused_total{reason="forged"}')), "")
        return bool(line) and float(line.split()[-1]) >= 1

    wait_for(refused, 30, what="the forged hello to be counted")
    assert refusals == [4403], refusals  # the forger is disconnected with a 4403
    assert json.loads(json.dumps(ha.status(target)))["role"] in ("follower", "leader")
    assert time.time() > 0


def test_cli_cluster_views_and_disable_hand_leadership_over(ha: HACluster) -> None:
    import subprocess
    import sys

    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()

    def dtf(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dtf_app", *args, "--coordinator", ha.urls, "--api-key", ha.key],
                              capture_output=True, text=True, timeout=120, env=_env(ha.env()))

    status = dtf("cluster", "status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["leader_id"] == leader and doc["quorum_size"] == 2 and len(doc["nodes"]) == 3
    text = dtf("cluster", "nodes")
    assert text.returncode == 0 and all(i in text.stdout for i in ha.ids)
    health = json.loads(dtf("cluster", "health", "--json").stdout)
    assert health["cluster_health"] in ("healthy", "degraded") and health["leader_id"] == leader
    disabled = dtf("cluster", "disable", leader)
    assert disabled.returncode == 0 and "disabled" in disabled.stdout, disabled.stderr
    new = wait_for(lambda: (lead := ha.leader()) not in (None, leader) and lead, 60, what="leadership to move")
    nodes = json.loads(dtf("cluster", "nodes", "--json").stdout)["nodes"]
    assert {n["node_id"]: n["enabled"] for n in nodes}[leader] is False
    history = json.loads(dtf("cluster", "leader", "--json").stdout)["history"]
    assert history[-1]["leader_id"] == new
    assert dtf("cluster", "enable", leader).returncode == 0
    assert dtf("cluster", "disable", "nosuch").returncode == 2


def test_cluster_requests_and_pushes_over_the_websocket(ha: HACluster) -> None:
    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    for node_id in ha.ids:
        ha.start(node_id)
    leader = ha.wait_leader()
    ha.load_key()
    seen: dict[str, dict] = {}

    async def client() -> None:
        url = f"ws://127.0.0.1:{ha.ports[leader]}/ws"
        async with open_websocket_url(url, extra_headers=[(b"X-API-Key", ha.key.encode())]) as ws:
            for channel in ("cluster_status", "leadership_updates"):
                await ws.send_message(json.dumps({"type": "subscribe", "channel": channel, "request_id": channel}))
            for kind in ("get_cluster_status", "get_leader_info", "get_cluster_health"):
                await ws.send_message(json.dumps({"type": kind, "request_id": kind, "metrics": ["cpu", "memory"]}))
            with trio.fail_after(60):
                while not {"cluster_status_update", "cluster_health_update", "get_cluster_status",
                           "get_leader_info", "get_cluster_health"} <= set(seen):
                    message = json.loads(await ws.get_message())
                    seen[message.get("request_id") or message["type"]] = message
            # Hand leadership away: subscribers of the old leader hear it before being sent on.
            httpx.post(ha.url(leader) + f"/api/cluster/node/{leader}/disable", headers={"X-API-Key": ha.key},
                       timeout=30).raise_for_status()
            with trio.fail_after(60):
                try:
                    while "leadership_update" not in seen:
                        message = json.loads(await ws.get_message())
                        seen[message.get("request_id") or message["type"]] = message
                except ConnectionClosed:
                    pass

    trio.run(client)
    status = seen["get_cluster_status"]
    assert status["type"] == "cluster_status_response" and status["leader_id"] == leader
    assert status["quorum_size"] == 2 and len(status["nodes"]) == 3 and status["cluster_health"] in ("healthy",
                                                                                                    "degraded")
    info = seen["get_leader_info"]
    assert info["type"] == "leader_info_response" and info["leader_id"] == leader and info["term_start_time"]
    assert info["leadership_history"][0]["leader_id"] == leader
    health = seen["get_cluster_health"]
    mine = next(n for n in health["nodes"] if n["node_id"] == leader)["health"]
    assert set(mine) <= {"cpu_usage", "memory_usage", "status"} and "cpu_usage" in mine
    update = seen["cluster_status_update"]
    assert {n["node_id"] for n in update["nodes"]} == set(ha.ids)
    assert {"state", "term", "last_heartbeat", "uptime_seconds"} <= set(update["nodes"][0])
    assert seen["leadership_update"]["previous_leader_id"] == leader
