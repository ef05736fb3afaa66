"""Regression detection on seeded benchmark history in a real DuckDB file; the source design's aggregate names."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from dtf_app.coordinator.results_api import basic_statistics
from dtf_app.store import queries
from dtf_app.store.regressions import regressions, welch_t_test
from dtf_app.store.writer import Store
from tests.unit.test_store import T0, bench_row, result, worker


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "dtf.duckdb")
    s.open()
    yield s
    s.close()


def seed(store: Store, *, regress: float, seed_value: int = 7) -> None:
    """25 runs of one configuration on a CPU worker and on a CUDA worker, 2 % noise; the last 5 runs on
    CUDA are ``regress`` (e.g. 0.2 = 20 %) slower."""
    rng = random.Random(seed_value)
    events: list[dict[str, Any]] = [worker("w-cpu", ["cpu"]), worker("w-gpu", ["cpu", "cuda"])]
    for run in range(25):
        for worker_id, base in (("w-cpu", 100.0), ("w-gpu", 1000.0)):
            factor = 1.0 - (regress if worker_id == "w-gpu" and run >= 20 else 0.0)
            throughput = base * factor * rng.gauss(1.0, 0.02)
            row = bench_row("bert", 8, throughput, 1000.0 / throughput, precision="fp16")
            events.append(result(f"{worker_id}-{run}-1", worker_id, benchmarks=[row], task_type="benchmark",
                                 when=T0 + run * 60))
    store.put(1, events)


async def test_a_20_percent_regression_on_one_hardware_class_is_flagged(store: Store) -> None:
    seed(store, regress=0.2)
    await store.flush()
    data = await regressions(store)
    assert data["checked"] == 2
    assert [(r["hardware"], r["model"], r["batch_size"], r["precision"]) for r in data["regressions"]] == [
        ("cpu,cuda", "bert", 8, "fp16")]
    hit = data["regressions"][0]
    assert hit["change"] == pytest.approx(-0.2, abs=0.03) and hit["p_value"] < 0.01
    assert hit["recent_count"] == 5 and hit["baseline_count"] == 20
    # Latency went up by the same token (lower is better there).
    latency = await regressions(store, metric="latency_ms_mean")
    assert [r["hardware"] for r in latency["regressions"]] == ["cpu,cuda"] and latency["regressions"][0]["change"] > 0


@pytest.mark.parametrize("seed_value", [1, 2, 3, 4, 5])
async def test_the_same_history_with_only_noise_is_not_flagged(store: Store, seed_value: int) -> None:
    seed(store, regress=0.0, seed_value=seed_value)
    await store.flush()
    data = await regressions(store)
    assert data["checked"] == 2 and data["regressions"] == []


async def test_bad_parameters_are_refused_with_what_is_accepted(store: Store) -> None:
    with pytest.raises(ValueError, match="metric must be one of throughput"):
        await regressions(store, metric="colour")
    with pytest.raises(ValueError, match="window must be an integer from 2"):
        await regressions(store, window=1)
    with pytest.raises(ValueError, match="alpha must be a number between 0 and 1"):
        await regressions(store, alpha=1.5)


def test_welch_p_values_match_the_t_distribution() -> None:
    # t = 2 with 10 degrees of freedom: two-sided p = 0.0734 (tables); equal means: p = 1.
    t, df, p = welch_t_test(6, 2.0, 3.0, 6, 0.0, 3.0)
    assert t == pytest.approx(2.0) and df == pytest.approx(10.0) and p == pytest.approx(0.07339, abs=1e-4)
    assert welch_t_test(5, 1.0, 1.0, 5, 1.0, 1.0)[2] == pytest.approx(1.0)
    assert welch_t_test(1, 1.0, 0.0, 5, 2.0, 1.0)[2] == 1.0  # too few samples to judge


async def test_performance_is_the_source_design_s_name_for_benchmark(store: Store) -> None:
    seed(store, regress=0.0)
    await store.flush()
    data = await queries.aggregate(store, result_type="performance", aggregation_level="hardware")
    assert data["result_type"] == "performance" and [g["key"] for g in data["groups"]] == ["cpu", "cpu,cuda"]
    gpu = data["groups"][1]
    assert gpu["throughput_p50"] <= gpu["throughput_p95"] <= gpu["throughput_max"]
    stats = basic_statistics("performance", data["groups"])
    assert set(stats["cpu"]["throughput"]) >= {"mean", "median", "std", "p95", "count"}
    assert stats["cpu,cuda"]["throughput"]["mean"] == pytest.approx(1000.0, rel=0.02)


async def test_the_html_report_shows_the_seeded_regression(store: Store) -> None:
    import re
    import struct
    import zlib

    from dtf_app.report import render_html, status_png
    from dtf_app.store.report_data import report_data

    seed(store, regress=0.2)
    flaky = [{"nodeid": "t.py::flip", "outcome": o, "duration": 0.5, "message": None} for o in ("passed", "failed")]
    store.put(2, [result(f"rt{i}-1", "w-cpu", tests=[row], when=T0 + 5000 + i) for i, row in enumerate(flaky)])
    await store.flush()
    data = await report_data(store)
    assert [r["hardware"] for r in data["regressions"]] == ["cpu,cuda"]
    assert [t["nodeid"] for t in data["flaky_tests"]] == ["t.py::flip"]
    page = render_html(data)
    assert page.count("<svg") >= 3 and "REGRESSION -2" in page and "t.py::flip" in page
    assert "bert batch 8 fp16 numpy on cpu,cuda <span class=\"bad\">regressed</span>" in page
    assert "<script" not in page and not re.search(r"(src|href)=\"https?:", page)  # viewable offline
    png = status_png(data)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    idat = png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == height * (width * 3 + 1)


async def test_compare_two_time_ranges_and_two_batches(store: Store) -> None:
    from dtf_app.store.compare import compare

    seed(store, regress=0.2)
    tests_a = [{"nodeid": "t.py::a", "outcome": "passed", "duration": 1.0, "message": None},
               {"nodeid": "t.py::b", "outcome": "failed", "duration": 1.0, "message": "x"}]
    tests_b = [{"nodeid": "t.py::a", "outcome": "failed", "duration": 3.0, "message": "y"},
               {"nodeid": "t.py::b", "outcome": "passed", "duration": 1.0, "message": None}]
    first, second = result("ta-1", "w-cpu", tests=tests_a), result("tb-1", "w-cpu", tests=tests_b)
    first["result"]["metadata"], second["result"]["metadata"] = {"batch_id": "A1"}, {"batch_id": "B1"}
    store.put(2, [first, second])
    await store.flush()
    # Runs 0-19 against runs 20-24 (timestamps T0 + run * 60): the CUDA rows lost ~20 %.
    data = await compare(store, f"{T0}..{T0 + 20 * 60}", f"{T0 + 20 * 60}..{T0 + 25 * 60}")
    (bert,) = data["benchmarks"]
    assert bert["count_a"] == 40 and bert["count_b"] == 10 and bert["throughput_change"] < -0.1
    runs = await compare(store, "batch:A1", "B1")
    assert runs["tests"]["newly_failing"] == ["t.py::a"] and runs["tests"]["fixed"] == ["t.py::b"]
    assert runs["tests"]["slowest_changes"][0]["nodeid"] == "t.py::a"
    with pytest.raises(ValueError, match="is empty"):
        await compare(store, f"{T0 + 10}..{T0}", "B1")
