"""Coordinator pieces that need no sockets: prefetch depth (leader.py), outcome sanitising (intake.py), views."""

from __future__ import annotations

from pathlib import Path

from dtf_app.config import Settings
from dtf_app.coordinator import leader
from dtf_app.coordinator.intake import clean_outcome
from dtf_app.coordinator.service import Coordinator
from dtf_app.coordinator.views import iso


def test_prefetch_deepens_only_while_tasks_are_short(tmp_path: Path) -> None:
    coord = Coordinator(Settings(data_dir=str(tmp_path)))
    assert coord.duties.prefetch_per_slot() == leader.PREFETCH_PER_SLOT  # nothing known yet: stay shallow
    for _ in range(30):
        coord.duties.note_run_time({"start_time": 10.0, "end_time": 10.001})
    assert coord.duties.prefetch_per_slot() == leader.PREFETCH_PER_SLOT_SHORT
    for _ in range(30):
        coord.duties.note_run_time({"start_time": 10.0, "end_time": 14.0})
    assert coord.duties.prefetch_per_slot() == leader.PREFETCH_PER_SLOT
    coord.duties.note_run_time({"start_time": None, "end_time": 1.0})  # ignored, no crash


def test_clean_outcome_rejects_and_repairs() -> None:
    assert clean_outcome([1]) is None
    assert clean_outcome({"task_id": "t", "attempt": "1"}) is None
    assert clean_outcome({"task_id": "t", "attempt": True}) is None
    item = clean_outcome({"task_id": "t", "attempt": 1, "outcome": "completed", "start_time": "x",
                          "result": {"status": "odd", "metrics": 5, "tests": "many", "execution_time": float("nan")}})
    assert item is not None and item["start_time"] is None
    result = item["result"]
    assert result["status"] == "partial" and result["metrics"] == {"value": 5}
    assert result["tests"] == [] and result["execution_time"] is None
    failed = clean_outcome({"task_id": "t", "attempt": 2, "outcome": "weird", "error": 42})
    assert failed is not None and failed["outcome"] == "failed" and failed["error"] == "42"


def test_iso_times() -> None:
    assert iso(None) is None
    assert iso(0.25) == "1970-01-01T00:00:00.250Z"
