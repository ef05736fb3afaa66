"""Running headless nodes never import textual, not even lazily while they work.

``python -X importtime`` logs every module a process imports, whenever it happens, to stderr (our log
file); after serving, dispatching and running every task type, the logs must not mention textual.
"""

from __future__ import annotations

from tests.integration.harness import ASSETS, Cluster


def test_coordinator_and_worker_processes_never_import_textual(cluster: Cluster) -> None:
    cluster.start_coordinator(python_args=("-X", "importtime"))
    cluster.start_worker("w1", python_args=("-X", "importtime"))
    cluster.wait_workers(1)
    created = cluster.submit([
        {"type": "test", "config": {"test_file": str(ASSETS / "sample_suite" / "test_strings.py")}},
        {"type": "benchmark", "config": {"model": "bert", "iterations": 1, "warmup": 0, "sequence_length": 8}},
        {"type": "custom", "config": {"callable": "dtf_plugins.runners.builtin_tasks:noop"}},
    ]).json()
    for task in created:
        assert cluster.wait_task(task["task_id"], timeout=120)["status"] == "completed"
    assert cluster.api("GET", "/metrics").status_code == 200
    assert cluster.api("GET", "/api/results/aggregate", params={"result_type": "benchmark"}).status_code == 200
    cluster.stop()
    for log in ("coordinator.log", "worker-w1.log"):
        text = (cluster.root / log).read_text()
        assert "import time:" in text and "trio" in text and "duckdb" in text  # the probe recorded imports
        assert "textual" not in text, f"{log} shows textual was imported"
