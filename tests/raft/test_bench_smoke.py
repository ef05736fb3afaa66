"""Smoke test of bench/raft_bench.py: every measurement runs for a moment and reports positive figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("raft_bench", REPO_ROOT / "bench" / "raft_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_disk_figures_are_positive(tmp_path: Path) -> None:
    result = bench.run_bench(0.02, tmp_path, groups=(1, 4), include_core=False)
    assert result["core"]["available"] is False
    for part in ("log", "raw"):
        assert [row["group"] for row in result[part]] == [1, 4]
        for row in result[part]:
            assert row["fsyncs"] >= 1 and row["entries"] == row["fsyncs"] * row["group"]
            assert row["entries_per_s"] > 0 and row["fsyncs_per_s"] > 0
    table = bench.format_table(result)
    assert "raw fsyncs/s" in table and "skipped" in table
    assert list(tmp_path.iterdir()) == []  # the scratch directory is cleaned up


@pytest.mark.parametrize("durable", [False, True])
@pytest.mark.parametrize("batch", [1, 8])
def test_core_commits_are_positive(tmp_path: Path, batch: int, durable: bool) -> None:
    row = bench.bench_core(0.02, batch, durable_dir=tmp_path if durable else None)
    assert row["storage"] == ("durable" if durable else "memory")
    assert row["rounds"] >= 1
    assert row["commits"] >= row["rounds"] * batch
    assert row["commits_per_s"] > 0


def test_cli_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--seconds", "0.005", "--dir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["group"] for row in result["log"]] == [1, 16, 256]
    assert result["core"]["available"] is True
    rows = result["core"]["results"]
    assert [(row["storage"], row["batch"]) for row in rows] == [
        ("memory", 1),
        ("memory", 64),
        ("durable", 1),
        ("durable", 64),
    ]
    assert all(row["commits_per_s"] > 0 for row in result["core"]["results"])
