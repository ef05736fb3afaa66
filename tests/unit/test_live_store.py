"""LiveStore: pushes never roll a row back past a fresh read, odd pushes are ignored, counts follow."""

from __future__ import annotations

from dtf_app.live import LiveStore


def _push(task_id: str, status: str, index: int, **task: object) -> dict:
    return {"type": "task_update", "task_id": task_id, "status": status, "worker_id": None,
            "timestamp": "2026-01-01T00:00:00.000Z", "index": index,
            "task": {"task_id": task_id, "status": status, **task}}


def _loaded() -> LiveStore:
    store = LiveStore()
    store.load([({"task_id": "a", "status": "running"}, 10), ({"task_id": "b", "status": "pending"}, 12)],
               [{"worker_id": "w1", "status": "online"}], 12,
               {"tasks": {"pending": 1, "running": 1, "completed": 0, "total": 2}}, 2)
    return store


def test_a_push_older_than_the_read_is_ignored() -> None:
    store = _loaded()
    assert store.apply(_push("a", "assigned", 9)) is None  # raced the read: the read is newer
    assert store.tasks["a"]["status"] == "running"
    assert store.apply(_push("a", "completed", 10)) == ("task", "a")  # same index: as new as the read
    assert store.tasks["a"]["status"] == "completed"
    assert store.counts()["completed"] == 1 and store.counts()["running"] == 0
    assert sum(store.throughput) == 1


def test_new_tasks_count_and_failures_are_remembered() -> None:
    store = _loaded()
    store.apply(_push("c", "pending", 13))
    store.apply(_push("c", "failed", 14, error="boom"))
    assert store.counts()["total"] == 3 and store.counts()["failed"] == 1
    assert store.recent_failures[-1]["error"] == "boom" and store.total_tasks == 3


def test_odd_pushes_change_nothing() -> None:
    store = _loaded()
    for odd in ({}, {"type": "task_update"}, {"type": "task_update", "task": "x"}, {"type": "worker_update"},
                {"type": "task_log", "task_id": 5}, {"type": "task_log", "task_id": "a", "lines": "x"},
                {"type": "weird", "index": "nope"}, {"type": "worker_update", "worker_id": "ghost"}):
        assert store.apply(odd) is None
    assert set(store.tasks) == {"a", "b"} and set(store.workers) == {"w1"}


def test_source_shape_push_without_full_task_updates_status() -> None:
    store = _loaded()
    assert store.apply({"type": "task_update", "task_id": "b", "status": "running", "worker_id": "w1",
                        "index": 20}) == ("task", "b")
    assert store.tasks["b"]["status"] == "running" and store.tasks["b"]["worker_id"] == "w1"


def test_log_lines_are_kept_per_task() -> None:
    store = _loaded()
    assert store.apply({"type": "task_log", "task_id": "a", "lines": ["one", 2]}) == ("log", "a")
    assert list(store.logs["a"]) == ["one", "2"]
