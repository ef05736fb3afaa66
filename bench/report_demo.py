"""Build a demo DuckDB history and render ``dtf report`` from it (the README's screenshot comes from here).

    PYTHONPATH=. .venv/bin/python bench/report_demo.py [--html out.html] [--png assets/report.png]

The history is seeded, and says so: two hardware classes (a CPU worker and a simulated CUDA worker),
25 benchmark runs per configuration with 2 % noise, the last 5 runs of ``bert`` batch 8 fp16 on CUDA
20 % slower (the regression the report must mark), task executions, and test results with one flaky
test. The report is the same code path as ``dtf report --html`` (report_data + render_html); with
``--png`` a headless Chromium (if installed) screenshots it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import trio

from dtf_app.report import render_html
from dtf_app.store.report_data import report_data
from dtf_app.store.writer import Store


def seed_events(now: float) -> list[dict]:
    rng = random.Random(10)
    events: list[dict] = []
    for worker_id, hardware in (("worker-cpu-1", ["cpu"]), ("worker-gpu-1", ["cpu", "cuda"])):
        events.append({"kind": "worker", "worker": {
            "worker_id": worker_id, "hostname": worker_id, "registration_time": now - 86400, "last_heartbeat": now,
            "status": "online", "capabilities": {"hardware": hardware}, "hardware_metrics": {}, "tags": [],
            "simulated": worker_id.endswith("gpu-1"), "max_concurrent_tasks": 4}})
    configs = [("bert", 8, "fp16", 1000.0), ("vit", 4, "fp32", 420.0)]
    n = 0
    for run in range(25):
        when = now - (25 - run) * 3600
        for worker_id, scale in (("worker-cpu-1", 0.1), ("worker-gpu-1", 1.0)):
            rows = []
            for model, batch, precision, base in configs:
                slow = 0.2 if (worker_id == "worker-gpu-1" and model == "bert" and run >= 20) else 0.0
                value = base * scale * (1 - slow) * rng.gauss(1.0, 0.02)
                rows.append({"model": model, "batch_size": batch, "precision": precision, "backend": "torch",
                             "iterations": 20, "latency_ms_mean": 1000 * batch / value, "latency_ms_p50": None,
                             "latency_ms_p90": None, "latency_ms_p99": None, "throughput": value,
                             "memory_peak_mb": 512.0})
            n += 1
            task_id = f"bench-{n}"
            seconds = rng.uniform(5, 40)
            status = "completed" if rng.random() > 0.05 else "failed"
            events.append({"kind": "task", "task": {
                "task_id": task_id, "type": "benchmark", "priority": 1, "status": status, "create_time": when,
                "start_time": when, "end_time": when + seconds, "worker_id": worker_id, "attempts": 1,
                "config": {"model": "bert"}, "requirements": {}, "name": task_id, "dependencies": [],
                "timeout_seconds": 3600, "max_retries": 3, "batch_id": f"b{run}", "error": None}})
            events.append({"kind": "history", "row": {
                "task_id": task_id, "worker_id": worker_id, "attempt": 1, "status": status, "start_time": when,
                "end_time": when + seconds, "execution_time_seconds": seconds, "error_message": None,
                "hardware_metrics": {}}})
            events.append({"kind": "result", "result": {
                "result_id": f"{task_id}-1", "task_id": task_id, "worker_id": worker_id, "test_id": task_id,
                "timestamp": when + seconds, "metrics": {}, "status": "success", "execution_time": seconds,
                "hardware_metrics": {}, "environment": {}, "raw_data": {}, "metadata": {}, "task_type": "benchmark",
                "tests": [], "benchmarks": rows}})
            tests = [{"nodeid": f"tests/test_models.py::test_{name}", "outcome": outcome, "duration": dur,
                      "message": None}
                     for name, dur, outcome in (("load", rng.uniform(0.1, 0.3), "passed"),
                                                ("forward", rng.uniform(1.0, 2.5), "passed"),
                                                ("download", rng.uniform(3, 6), "failed" if run % 4 == 1 else "passed"))]
            events.append({"kind": "history", "row": {
                "task_id": f"test-{n}", "worker_id": worker_id, "attempt": 1, "status": "completed",
                "start_time": when, "end_time": when + 0.4, "execution_time_seconds": 0.4, "error_message": None,
                "hardware_metrics": {}}})
            events.append({"kind": "result", "result": {
                "result_id": f"test-{n}-1", "task_id": f"test-{n}", "worker_id": worker_id, "test_id": "suite",
                "timestamp": when + 1, "metrics": {}, "status": "success", "execution_time": 0.4,
                "hardware_metrics": {}, "environment": {}, "raw_data": {}, "metadata": {}, "task_type": "test",
                "tests": tests, "benchmarks": []}})
    return events


async def build(html_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dtf-report-demo-"))
    store = Store(folder / "dtf.duckdb")
    store.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            store.put(1, seed_events(time.time()))
            await store.flush()
            data = await report_data(store)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
    html_path.write_text(render_html(data, title="DTF report (seeded demo history)"), encoding="utf-8")
    print(f"{html_path}: {len(data['regressions'])} regression(s) marked")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", default="dtf-report-demo.html")
    parser.add_argument("--png", help="screenshot it here with headless Chromium")
    opts = parser.parse_args()
    html_path = Path(opts.html).resolve()
    trio.run(build, html_path)
    if opts.png:
        browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if browser is None:
            raise SystemExit("no Chromium found for --png (apt-get install chromium)")
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={Path(opts.png).resolve()}", "--window-size=1280,1640",
                        html_path.as_uri()], check=True, capture_output=True, timeout=120)
        print(f"screenshot written to {opts.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
