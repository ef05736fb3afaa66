"""The worker outbox keeps outcomes in DuckDB until they are acked, across reopen, in batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtf_app.worker.outbox import Outbox, OutboxError


def outcome(task_id: str, attempt: int = 1, **extra: object) -> dict:
    return {
        "task_id": task_id,
        "attempt": attempt,
        "outcome": "completed",
        "start_time": 1.0,
        "end_time": 2.0,
        "error": None,
        "result": {"status": "success", "metrics": {"value": task_id}, **extra},
    }


async def test_round_trip_keeps_documents_and_order(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "sub" / "outbox.duckdb")
    documents = [outcome("a"), outcome("b", 2, output="line1\nline2 \u00e9"), outcome("c")]
    await outbox.add_many(documents)
    assert await outbox.count() == 3
    assert await outbox.pending() == documents
    assert await outbox.pending(limit=2) == documents[:2]
    await outbox.aclose()


async def test_reopen_after_close_still_has_unacked_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.duckdb"
    first = await Outbox.open(path)
    await first.add_many([outcome("t1"), outcome("t2")])
    await first.remove_many([("t1", 1)])
    await first.aclose()

    reopened = await Outbox.open(path)
    assert [row["task_id"] for row in await reopened.pending()] == ["t2"]
    await reopened.aclose()


async def test_remove_many_matches_task_and_attempt_exactly(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.duckdb")
    documents = [outcome(f"t{i}", attempt) for i in range(300) for attempt in (1, 2)]
    await outbox.add_many(documents)
    assert await outbox.count() == 600
    # Ack attempt 1 of every task plus keys that were never stored (a duplicate ack is harmless).
    await outbox.remove_many([(f"t{i}", 1) for i in range(300)] + [("unknown", 1), ("t0", 9)])
    remaining = await outbox.pending()
    assert len(remaining) == 300
    assert {row["attempt"] for row in remaining} == {2}
    await outbox.remove_many([])
    await outbox.add_many([])
    assert await outbox.count() == 300
    await outbox.aclose()


async def test_closed_outbox_refuses_work_with_a_clear_error(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.duckdb")
    await outbox.aclose()
    with pytest.raises(OutboxError, match="closed"):
        await outbox.count()


async def test_unopenable_path_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(OutboxError, match="not-a-dir"):
        await Outbox.open(blocker / "outbox.duckdb")


async def test_apply_inserts_and_deletes_in_one_call(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.duckdb")
    await outbox.add_many([outcome("old-1"), outcome("old-2")])
    await outbox.apply(add=[outcome("new")], remove=[("old-1", 1)])
    assert sorted(row["task_id"] for row in await outbox.pending()) == ["new", "old-2"]
    await outbox.apply()
    assert await outbox.count() == 2
    await outbox.aclose()
