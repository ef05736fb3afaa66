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


async def test_a_claimed_outbox_is_locked_but_opens_duckdb_only_when_used(tmp_path: Path) -> None:
    path = tmp_path / "w" / "outbox.duckdb"
    outbox = Outbox.claim(path)
    assert outbox.known_empty() and not outbox.is_open and not path.exists()  # a fresh worker: no file yet
    assert await outbox.pending() == [] and not path.exists()  # nothing to read: DuckDB stays closed
    with pytest.raises(OutboxError, match="another running worker holds .*outbox.duckdb.lock"):
        Outbox.claim(path)
    assert await outbox.connect() == [] and outbox.is_open and path.exists()
    assert await outbox.connect() == []  # idempotent
    await outbox.aclose()
    again = Outbox.claim(path)  # closing released the lock
    await again.aclose()


async def test_the_empty_marker_follows_the_rows_so_a_restart_knows_without_opening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.duckdb"
    marker = tmp_path / "outbox.duckdb.empty"
    outbox = await Outbox.open(path)
    assert marker.exists() and outbox.known_empty()
    await outbox.add_many([outcome("a"), outcome("b")])
    assert not marker.exists() and not outbox.known_empty()
    await outbox.remove_many([("a", 1)])
    assert not marker.exists()  # b is still waiting for its ack
    await outbox.apply(add=[outcome("c")], remove=[("b", 1), ("c", 1)])  # stored and acked in one batch
    assert marker.exists() and outbox.known_empty()
    await outbox.add_many([outcome("d")])
    await outbox.aclose()

    restarted = Outbox.claim(path)
    assert not restarted.known_empty()  # d waits: the worker must read it before its hello
    assert [row["task_id"] for row in await restarted.connect()] == ["d"]
    await restarted.remove_many([("d", 1)])
    await restarted.aclose()
    assert marker.exists() and Outbox.claim(path).known_empty()


def test_claiming_and_asking_never_import_duckdb(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from dtf_app.worker.outbox import Outbox; "
            "o = Outbox.claim(Path(sys.argv[1])); assert o.known_empty(); "
            "assert 'duckdb' not in sys.modules, 'duckdb imported'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "outbox.duckdb")], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
