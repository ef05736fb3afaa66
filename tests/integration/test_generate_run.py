"""``dtf submit --generate benchmark|test`` against a real local cluster: the generated tasks run to the end.

A coordinator and two worker processes on loopback; the CLI is the real ``dtf`` in a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.harness import Cluster


def test_generated_benchmarks_and_tests_run_to_completion(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.wait_workers(2, timeout=60)
    auth = ("--coordinator", cluster.url, "--api-key", cluster.admin_key)

    bench = cluster.cli("submit", *auth, "--generate", "benchmark", "--model", "prajjwal1/bert-tiny",
                        "--precision", "fp32,fp16", "--batch-sizes", "1,2", "--iterations", "2", "--wait", "--json",
                        timeout=600)
    assert bench.returncode in (0, 1), bench.stderr
    tasks = {t["name"]: t for t in json.loads(bench.stdout)}
    assert set(tasks) == {"prajjwal1/bert-tiny-fp32", "prajjwal1/bert-tiny-fp16"}
    assert all(t["status"] == "completed" for t in tasks.values()), tasks
    fp32, fp16 = tasks["prajjwal1/bert-tiny-fp32"], tasks["prajjwal1/bert-tiny-fp16"]
    # The dependency held: the fp16 run started only after the fp32 reference had finished.
    assert fp16["dependencies"] == [fp32["task_id"]] and fp16["start_time"] >= fp32["end_time"]
    assert fp32["requirements"]["min_memory_gb"] == 0.1 and fp32["metadata"]["model_family"] == "bert"
    assert fp32["result"]["metrics"]["configurations"] == 2

    out_dir = tmp_path / "generated"
    tests = cluster.cli("submit", *auth, "--generate", "test", "--model", "bert-tiny,openai/whisper-tiny,vit",
                        "--output-dir", str(out_dir), "--wait", "--json", timeout=600)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    done = {t["name"]: t for t in json.loads(tests.stdout)}
    assert set(done) == {"generated-test-bert", "generated-test-whisper", "generated-test-vit"}
    for task in done.values():
        assert task["status"] == "completed" and task["result"]["status"] == "success", task
        # A shape check and a forward pass per model, all passed on the worker's backend.
        assert task["result"]["metrics"]["passed"] == 2 and task["result"]["metrics"]["failed"] == 0
    assert sorted(p.name for p in out_dir.glob("*.py")) == ["test_generated_bert.py", "test_generated_vit.py",
                                                            "test_generated_whisper.py"]
    # A model no family matches is a usage error naming the families, before anything is submitted.
    bad = cluster.cli("submit", *auth, "--generate", "test", "--model", "resnet")
    assert bad.returncode == 2 and "not a known model family" in bad.stderr and "Traceback" not in bad.stderr
