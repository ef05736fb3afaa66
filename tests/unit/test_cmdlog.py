"""The durable command log: round trip, torn tail, snapshot + truncation, group commit."""

from __future__ import annotations

from pathlib import Path

import trio

from dtf_app.coordinator.cmdlog import CommandLog, Replicator
from dtf_app.coordinator.state import State


def test_round_trip_and_torn_tail(tmp_path: Path) -> None:
    log = CommandLog(tmp_path)
    assert log.open() == (None, [])
    log.append([{"op": "A", "n": 1}, {"op": "B", "n": 2}])
    log.sync()
    log.append([{"op": "C", "n": 3}])
    log.sync()
    log.close()
    size = (tmp_path / "commands.log").stat().st_size
    with open(tmp_path / "commands.log", "r+b") as handle:
        handle.truncate(size - 3)  # a crash in the middle of the last record
    log = CommandLog(tmp_path)
    snapshot, records = log.open()
    assert snapshot is None
    assert [(i, c["op"]) for i, c in records] == [(1, "A"), (2, "B")]
    # The next append continues after the last good record, over the cut tail.
    assert log.append([{"op": "D"}]) == 3
    log.sync()
    log.close()
    _, records = CommandLog(tmp_path).open()
    assert [c["op"] for _, c in records] == ["A", "B", "D"]


def test_corrupt_byte_stops_replay_at_the_bad_record(tmp_path: Path) -> None:
    log = CommandLog(tmp_path)
    log.open()
    log.append([{"op": "A"}, {"op": "B"}])
    log.sync()
    log.close()
    data = bytearray((tmp_path / "commands.log").read_bytes())
    data[-2] ^= 0xFF
    (tmp_path / "commands.log").write_bytes(bytes(data))
    _, records = CommandLog(tmp_path).open()
    assert [c["op"] for _, c in records] == ["A"]


async def test_group_commit_and_snapshot(tmp_path: Path) -> None:
    applied: list[int] = []
    state = State()
    log = CommandLog(tmp_path)
    log.open()
    rep = Replicator(log, state, lambda i, c, r, e: applied.append(i), snapshot_every=50)
    async with trio.open_nursery() as nursery:
        await nursery.start(rep.run)

        async def one(n: int) -> None:
            await rep.propose([{"op": "CreateApiKey", "time": 1.0, "name": f"k{n}", "role": "viewer",
                                "key_hash": str(n)}])

        async with trio.open_nursery() as inner:
            for n in range(120):
                inner.start_soon(one, n)
        nursery.cancel_scope.cancel()
    assert applied == list(range(1, 121))
    assert rep.fsyncs < 120  # concurrent proposals shared fsyncs
    log.close()
    log2 = CommandLog(tmp_path)
    snapshot, records = log2.open()
    assert snapshot is not None
    restored = State.restore(snapshot)
    for index, command in records:
        restored.apply(command, index)
    assert len(restored.api_keys) == 120 and restored.applied_index == 120


async def test_snapshot_also_triggers_on_log_bytes(tmp_path: Path) -> None:
    state = State()
    log = CommandLog(tmp_path)
    log.open()
    rep = Replicator(log, state, lambda i, c, r, e: None, snapshot_every=10**9, snapshot_bytes=4096)
    async with trio.open_nursery() as nursery:
        await nursery.start(rep.run)
        for n in range(40):
            await rep.propose([{"op": "CreateApiKey", "time": 1.0, "name": f"k{n}", "role": "viewer",
                                "key_hash": "x" * 200}])
        nursery.cancel_scope.cancel()
    assert (tmp_path / "state.snapshot").exists()
    assert log.bytes_since_snapshot < 4096
    log.close()
