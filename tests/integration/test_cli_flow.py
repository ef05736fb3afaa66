"""The README/issue flow through the real CLI: coordinator, two workers, `dtf submit --wait --json`."""

from __future__ import annotations

import json
import signal

import duckdb

from tests.integration.harness import ASSETS, Cluster


def test_cli_flow_with_local_key_discovery_and_duckdb_after_sigterm(cluster: Cluster) -> None:
    url = cluster.start_coordinator()
    assert oct((cluster.data_dir / "admin.key").stat().st_mode & 0o777) == "0o600"
    # Workers given only --coordinator: on this machine they find the coordinator's worker key.
    for name in ("a", "b"):
        cluster.workers.append(cluster.node(["--mode", "worker", "--coordinator", url, "--worker-id", name,
                                             "--data-dir", str(cluster.root / name), "--heartbeat-interval", "1"],
                                            cluster.root / f"worker-{name}.log"))
    cluster.wait_workers(2)
    task_file = cluster.root / "tasks.json"
    task_file.write_text(json.dumps([
        {"type": "test", "name": "suite", "config": {"test_file": str(ASSETS / "sample_suite" / "test_strings.py")}},
        {"type": "benchmark", "name": "bench", "config": {"model": "bert", "batch_sizes": [1], "iterations": 2,
                                                          "warmup": 0, "sequence_length": 16}},
        {"type": "custom", "name": "cmd", "config": {"command": ["python3", "-c", "print(6 * 7)"]}},
    ]))
    done = cluster.cli("submit", "--coordinator", url, "--task-file", str(task_file), "--wait", "--json")
    assert done.returncode == 0, done.stderr
    tasks = json.loads(done.stdout)
    assert sorted(t["name"] for t in tasks) == ["bench", "cmd", "suite"]
    assert all(t["status"] == "completed" for t in tasks)

    listed = cluster.cli("tasks", "list", "--coordinator", url, "--json")
    assert listed.returncode == 0, listed.stderr
    workers = cluster.cli("workers", "list", "--coordinator", url, "--json")
    assert workers.returncode == 0 and "\"a\"" in workers.stdout

    # A viewer key given explicitly is used (and refused for submitting: exit 4).
    viewer = cluster.create_key("viewer")
    refused = cluster.cli("submit", "--coordinator", url, "--api-key", viewer, "--type", "custom", "--", "true")
    assert refused.returncode == 4, refused.stderr
    assert "Traceback" not in refused.stderr

    cluster.coordinator.kill(signal.SIGTERM)
    assert cluster.coordinator.wait() == 0
    con = duckdb.connect(str(cluster.data_dir / "dtf.duckdb"), read_only=True)
    try:
        for table in ("worker_nodes", "distributed_tasks", "task_execution_history", "results"):
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table
    finally:
        con.close()


def test_cli_errors_are_clear(cluster: Cluster) -> None:
    url = cluster.start_coordinator()
    bad = cluster.root / "bad.json"
    bad.write_text('[{"type": "custom", "config": {"command": ["true"]}},\n {"type": }]')
    result = cluster.cli("submit", "--coordinator", url, "--task-file", str(bad))
    assert result.returncode == 2 and "bad.json" in result.stderr and "line 2" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = cluster.root / "unknown.json"
    unknown.write_text('{"type": "custom", "config": {"command": ["true"]}, "requirements": {"gpus": 2}}')
    result = cluster.cli("submit", "--coordinator", url, "--task-file", str(unknown))
    assert result.returncode == 2 and "gpus" in result.stderr and "Traceback" not in result.stderr
    down = cluster.cli("tasks", "list", "--coordinator", "http://127.0.0.1:9", "--api-key", "x")
    assert down.returncode == 3 and "127.0.0.1:9" in down.stderr
    config = cluster.root / "coordinator.json"
    config.write_text('{"database": {"type": "postgresql"}}')
    result = cluster.cli("--mode", "coordinator", "--config", str(config), "--port", "0",
                         "--data-dir", str(cluster.root / "x"))
    assert result.returncode == 2 and "postgresql" in result.stderr and "Traceback" not in result.stderr


def test_node_start_problems_are_exit_2_without_traceback(cluster: Cluster) -> None:
    url = cluster.start_coordinator()
    port = url.rsplit(":", 1)[1]
    same_port = cluster.cli("--mode", "coordinator", "--port", port, "--data-dir", str(cluster.root / "other"),
                            timeout=30)
    assert same_port.returncode == 2 and "Address already in use" in same_port.stderr
    assert not (cluster.root / "other").exists()  # it binds before it touches its data dir
    same_dir = cluster.cli("--mode", "coordinator", "--port", "0", "--data-dir", str(cluster.data_dir), timeout=30)
    assert same_dir.returncode == 2 and "another DTF process" in same_dir.stderr
    blocked = cluster.root / "a-file"
    blocked.write_text("not a directory")
    bad_dir = cluster.cli("--mode", "coordinator", "--port", "0", "--data-dir", str(blocked / "sub"), timeout=30)
    assert bad_dir.returncode == 2 and "cannot start" in bad_dir.stderr
    for result in (same_port, same_dir, bad_dir):
        assert "Traceback" not in result.stderr
    # The running coordinator was not disturbed.
    assert cluster.api("GET", "/api/status").status_code == 200


def test_repeated_signals_do_not_cut_shutdown_short(cluster: Cluster) -> None:
    url = cluster.start_coordinator()
    port = url.rsplit(":", 1)[1]
    record = cluster.root / "state" / "coordinators" / f"{port}.json"
    assert record.exists()
    cluster.coordinator.kill(signal.SIGINT)
    cluster.coordinator.kill(signal.SIGTERM)  # e.g. Ctrl-C on the terminal, then the supervisor
    assert cluster.coordinator.wait() == 0
    assert not record.exists()  # the shutdown ran to the end (its last step removes the record)
    assert "while shutting down" in cluster.coordinator.output()
