"""The coordinator's Raft-backed replicator on a one-member cluster: results by index, restart, snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from dtf_app.coordinator.replicator import Replicator
from dtf_app.coordinator.scheduler import validate_task
from dtf_app.coordinator.state import State


def _task(task_id: str) -> dict[str, Any]:
    doc = validate_task({"type": "custom", "config": {"command": ["true"]}})
    doc.update(task_id=task_id, batch_id="b1")
    return doc


class Recorder:
    def __init__(self) -> None:
        self.applied: list[tuple[int, str]] = []

    def __call__(self, index: int, command: dict[str, Any], result: Any, events: list[dict[str, Any]]) -> None:
        self.applied.append((index, command["op"]))


async def _open(directory: Path, recorder: Recorder, **kwargs: Any) -> Replicator:
    rep = Replicator(directory, State(), recorder, node_id="solo", **kwargs)
    await trio.to_thread.run_sync(rep.open)
    return rep


async def test_propose_returns_each_commands_result_and_restart_replays(tmp_path: Path) -> None:
    rec = Recorder()
    rep = await _open(tmp_path / "raft", rec)
    async with trio.open_nursery() as nursery:
        await nursery.start(rep.run)
        results = await rep.propose([
            {"op": "SubmitTasks", "time": 1.0, "tasks": [_task("a"), _task("b")]},
            {"op": "CancelTask", "time": 2.0, "task_id": "a", "reason": "test"},
            {"op": "NoSuchOp", "time": 3.0},
        ])
        assert [t["task_id"] for t in results[0]] == ["a", "b"]
        assert results[1]["status"] == "cancelled"
        assert "unknown command" in results[2]["error"]
        assert rep.is_leader and rep.leader_id == "solo"
        nursery.cancel_scope.cancel()
    rep.close()
    before = (rep.state.tasks, rep.state.workers, rep.state.api_keys)

    rec2 = Recorder()
    again = await _open(tmp_path / "raft", rec2)
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        with trio.fail_after(30):
            await again.wait_caught_up()
        assert again.state.tasks["a"]["status"] == "cancelled"
        # Same state; only the new term's noop entry was added on top.
        assert (again.state.tasks, again.state.workers, again.state.api_keys) == before
        assert again.state.term == rep.state.term + 1
        assert [op for _, op in rec2.applied] == [op for _, op in rec.applied]
        nursery.cancel_scope.cancel()
    again.close()


async def test_snapshots_compact_the_log_after_the_store_hook_and_restore(tmp_path: Path) -> None:
    rec = Recorder()
    flushed: list[int] = []
    rep = await _open(tmp_path / "raft", rec, snapshot_every=10, keep_entries=2)

    async def before_snapshot() -> None:
        flushed.append(rep.state.applied_index)

    rep.before_snapshot = before_snapshot
    async with trio.open_nursery() as nursery:
        await nursery.start(rep.run)
        for i in range(40):
            await rep.propose([{"op": "SubmitTasks", "time": float(i), "tasks": [_task(f"t{i}")]}])
        nursery.cancel_scope.cancel()
    assert flushed, "the store hook runs before each snapshot"
    assert rep.storage is not None and rep.storage.first_index() > 10
    rep.close()

    restored: list[State] = []
    again = await _open(tmp_path / "raft", Recorder())
    again.on_restored = restored.append
    assert len(again.state.tasks) >= 10  # restored from the snapshot at open
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        with trio.fail_after(30):
            await again.wait_caught_up()
        assert sorted(again.state.tasks) == sorted(f"t{i}" for i in range(40))
        nursery.cancel_scope.cancel()
    again.close()


def test_refusals_from_lagging_peers_do_not_remove_a_node_a_leader_replicates_to(tmp_path: Path) -> None:
    """A node just added is refused by members that have not applied its addition yet; while a leader
    is replicating to it those refusals are stale, and it must stay able to campaign. Without a leader
    to hear from, refusals by a majority of the other voters do mean it was removed."""
    from dtf_app.raft.types import Message, MessageType

    peers = {"c1": "http://127.0.0.1:1", "c2": "http://127.0.0.1:2", "c3": "http://127.0.0.1:3",
             "c4": "http://127.0.0.1:4"}
    rep = Replicator(tmp_path / "raft", State(), Recorder(), node_id="c4", peers=peers, secret=b"s" * 32)
    rep.open()
    try:
        assert rep.driver is not None
        node = rep.driver.node
        rep.state.members = dict(peers)  # it applied the entry that added it
        node.step(Message(MessageType.HEARTBEAT, "c3", "c4", 1, commit=0))
        assert node.hears_leader and node.leader_id == "c3"
        rep._not_member("c1", "'c4' is not in this node's member list (c1, c2, c3)")
        rep._not_member("c2", "'c4' is not in this node's member list (c1, c2, c3)")
        assert not rep.removed and node.can_campaign

        # The leader went quiet for an election timeout: now a majority of the others refusing it counts.
        for _ in range(rep.election_ticks):
            node.tick()
        assert not node.hears_leader
        rep._not_member("c1", "'c4' is no longer a member of this cluster")
        assert not rep.removed
        rep._not_member("c2", "'c4' is no longer a member of this cluster")
        assert rep.removed and not node.can_campaign
    finally:
        rep.close()
