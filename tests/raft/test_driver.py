"""The trio driver and the peer transport: codec, authentication, and whole clusters of drivers.

In-process clusters run on trio's MockClock over an in-memory network that the test can cut; the socket
tests run real transports over websockets on 127.0.0.1 with durable storage in a temporary directory.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dtf_app.raft import codec
from dtf_app.raft.driver import LeadershipChange, RaftDriver
from dtf_app.raft.log import DurableStorage
from dtf_app.raft.storage import MemoryStorage
from dtf_app.raft.transport import InboundSession, PeerAuthError, Transport, serve_websocket_listener
from dtf_app.raft.types import Entry, Message, MessageType, NotLeader, Snapshot

MT = MessageType
SECRET = b"test-cluster-secret"


class ListMachine:
    """A state machine that appends each entry's data to a list; results are the list's length."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.restored: list[int] = []

    def apply_entry(self, entry: Entry) -> Any:
        if entry.kind != "normal":
            return None
        self.items.append(entry.data.decode())
        return len(self.items)

    def snapshot_bytes(self) -> bytes:
        return json.dumps(self.items).encode()

    def restore_snapshot(self, snapshot: Snapshot) -> None:
        self.items = json.loads(snapshot.data.decode()) if snapshot.data else []
        self.restored.append(snapshot.index)


# --- codec ----------------------------------------------------------------------------------------------


def _sample_messages() -> list[Message]:
    snap = Snapshot(index=7, term=2, voters=frozenset({"a", "b", "c"}), data=b"\x00state\xff")
    entries = (Entry(1, 1, "noop", b'{"voters":["a"]}'), Entry(2, 2, "normal", b"x" * 300),
               Entry(2, 3, "config", b"{}"))
    return [Message(t, "a", "b", 3, log_term=2, index=5, commit=4, reject=True, reject_hint=9,
                    context=b"ctx", entries=entries if t == MT.APPEND else (),
                    snapshot=snap if t == MT.SNAPSHOT else None) for t in MessageType]


def test_codec_round_trips_every_message_type() -> None:
    messages = _sample_messages()
    assert codec.decode_messages(codec.encode_messages(messages)) == messages
    assert codec.decode_messages(codec.encode_messages([])) == []


def test_codec_refuses_damage_with_codec_error_only() -> None:
    payload = codec.encode_messages(_sample_messages())
    rng = random.Random(5)
    for cut in range(len(payload)):
        with pytest.raises(codec.CodecError):
            codec.decode_messages(payload[:cut])
    with pytest.raises(codec.CodecError):
        codec.decode_messages(payload + b"\x00")
    for _ in range(2000):
        damaged = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            codec.decode_messages(bytes(damaged))
        except codec.CodecError:
            pass


# --- inbound authentication -----------------------------------------------------------------------------


def _client_frames(challenge: bytes, messages: list[Message], secret: bytes = SECRET) -> list[bytes]:
    frames = [codec.hello_frame(secret, challenge, "a", "b")]
    frames += [codec.data_frame(secret, challenge, i + 1, codec.encode_messages([m])) for i, m in enumerate(messages)]
    return frames


def test_inbound_session_accepts_the_right_secret_and_refuses_forgeries_and_replays() -> None:
    msgs = [Message(MT.HEARTBEAT, "a", "b", 1), Message(MT.HEARTBEAT, "a", "b", 2)]
    members = lambda: {"a", "c"}  # noqa: E731
    session = InboundSession(SECRET, "b", members)
    # (No fingerprint check in these sessions: that is the misconfiguration test below.)
    frames = _client_frames(session.challenge, msgs)
    assert session.accept(frames[0]) == []
    assert session.accept(frames[1]) == [msgs[0]]
    # The same frame again on the same connection: a replay.
    with pytest.raises(PeerAuthError) as replay:
        session.accept(frames[1])
    assert replay.value.kind == "replayed"

    # A captured frame re-sent on a new connection: bound to the old challenge, so its MAC fails.
    fresh = InboundSession(SECRET, "b", members)
    with pytest.raises(PeerAuthError) as old_hello:
        fresh.accept(frames[0])
    assert old_hello.value.kind == "forged"
    fresh.accept(codec.hello_frame(SECRET, fresh.challenge, "a", "b"))
    with pytest.raises(PeerAuthError) as old_data:
        fresh.accept(frames[2])
    assert old_data.value.kind == "forged"

    # Wrong secret, wrong receiver, non-member, spoofed source, garbage.
    cases = [
        (codec.hello_frame(b"wrong", InboundSession(SECRET, "b", members).challenge, "a", "b"), "forged"),
    ]
    for frame, kind in cases:
        s = InboundSession(SECRET, "b", members)
        with pytest.raises(PeerAuthError) as exc:
            s.accept(frame)
        assert exc.value.kind == kind
    s = InboundSession(SECRET, "b", members)
    with pytest.raises(PeerAuthError, match="reached node"):
        s.accept(codec.hello_frame(SECRET, s.challenge, "a", "z"))
    s = InboundSession(SECRET, "b", members)
    with pytest.raises(PeerAuthError, match="not in this node's member list"):
        s.accept(codec.hello_frame(SECRET, s.challenge, "x", "b"))
    s = InboundSession(SECRET, "b", members)
    s.accept(codec.hello_frame(SECRET, s.challenge, "a", "b"))
    spoof = codec.data_frame(SECRET, s.challenge, 1, codec.encode_messages([Message(MT.VOTE, "c", "b", 9)]))
    with pytest.raises(PeerAuthError, match="sent a message from 'c'"):
        s.accept(spoof)
    s = InboundSession(SECRET, "b", members)
    with pytest.raises(PeerAuthError) as garbage:
        s.accept(b"\x00" * 10)
    assert garbage.value.kind == "malformed"


# --- in-process clusters on a mock clock -----------------------------------------------------------------


class Net:
    """An in-memory network between drivers; nodes in ``down`` neither send nor receive."""

    def __init__(self) -> None:
        self.drivers: dict[str, RaftDriver] = {}
        self.down: set[str] = set()
        self.cut: set[frozenset[str]] = set()

    def sender(self, src: str):  # noqa: ANN201
        def send(messages: list[Message]) -> None:
            if src in self.down:
                return
            for msg in messages:
                if msg.dst in self.down or frozenset((src, msg.dst)) in self.cut:
                    continue
                self.drivers[msg.dst].deliver([msg])

        return send


def _cluster(net: Net, ids: tuple[str, ...], **kwargs: Any) -> dict[str, tuple[RaftDriver, ListMachine]]:
    out = {}
    for i, node_id in enumerate(ids):
        machine = ListMachine()
        driver = RaftDriver(node_id, ids, MemoryStorage(), machine, net.sender(node_id), rng=random.Random(i),
                            persist_in_thread=False, **kwargs)
        net.drivers[node_id] = driver
        out[node_id] = (driver, machine)
    return out


async def _wait_leader(drivers: list[RaftDriver], exclude: set[str] = frozenset()) -> RaftDriver:  # type: ignore[assignment]
    while True:
        leaders = [d for d in drivers if d.is_leader and d.node_id not in exclude]
        if len(leaders) == 1:
            return leaders[0]
        await trio.sleep(0.05)


async def test_three_drivers_elect_replicate_and_fail_over(autojump_clock: trio.testing.MockClock) -> None:
    net = Net()
    nodes = _cluster(net, ("a", "b", "c"))
    changes: list[LeadershipChange] = []
    scopes: dict[str, trio.CancelScope] = {}

    async def run(node_id: str) -> None:
        with trio.CancelScope() as scope:
            scopes[node_id] = scope
            await nodes[node_id][0].run()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for node_id in nodes:
                nursery.start_soon(run, node_id)
            drivers = [d for d, _ in nodes.values()]
            leader = await _wait_leader(drivers)
            results = await leader.propose([b"one", b"two"])
            assert results == [1, 2]
            follower = next(d for d in drivers if d is not leader)
            with pytest.raises(NotLeader) as hint:
                await follower.propose([b"nope"])
            assert hint.value.leader_id == leader.node_id
            # Linearizable reads on the leader and (forwarded) on a follower.
            assert await leader.read_barrier() >= 3
            assert await follower.read_barrier() >= 3
            assert nodes[follower.node_id][1].items[-2:] == ["one", "two"]

            # The leader dies: the others elect a new one that keeps the log and takes proposals.
            net.down.add(leader.node_id)
            scopes[leader.node_id].cancel()
            rest = [d for d in drivers if d is not leader]
            rest[0]._on_leadership = changes.append
            new = await _wait_leader(rest, exclude={leader.node_id})
            assert new.term > leader.term or new.node_id != leader.node_id
            assert (await new.propose([b"three"]))[0] == 3
            for d in rest:
                await d.wait_applied(new.status().commit_index)
            assert all(nodes[d.node_id][1].items == ["one", "two", "three"] for d in rest)
            nursery.cancel_scope.cancel()
    assert changes, "no leadership change was reported"


async def test_a_minority_leader_cannot_commit_and_its_proposal_times_out(autojump_clock: trio.testing.MockClock) -> None:
    net = Net()
    nodes = _cluster(net, ("a", "b", "c"))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for driver, _ in nodes.values():
                nursery.start_soon(driver.run)
            drivers = [d for d, _ in nodes.values()]
            leader = await _wait_leader(drivers)
            others = [d.node_id for d in drivers if d is not leader]
            for other in others:
                net.cut.add(frozenset((leader.node_id, other)))
            with pytest.raises(Exception) as lost:
                await leader.propose([b"lonely"], timeout=5)
            assert type(lost.value).__name__ in ("ProposalDropped", "NotLeader")
            # The majority side elected its own leader meanwhile; the old one stepped down (CheckQuorum).
            new = await _wait_leader([d for d in drivers if d is not leader])
            assert not leader.is_leader
            assert (await new.propose([b"majority"])) == [1]
            nursery.cancel_scope.cancel()
    assert "lonely" not in nodes[others[0]][1].items


async def test_a_lagging_follower_catches_up_by_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    net = Net()
    nodes = _cluster(net, ("a", "b", "c"), snapshot_entries=20, keep_entries=5)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            net.down.add("c")
            for node_id in ("a", "b"):
                nursery.start_soon(nodes[node_id][0].run)
            leader = await _wait_leader([nodes["a"][0], nodes["b"][0]])
            for i in range(60):
                await leader.propose([f"e{i}".encode()])
            assert leader.storage.first_index() > 2  # compacted
            net.down.discard("c")
            nursery.start_soon(nodes["c"][0].run)
            await nodes["c"][0].wait_applied(leader.status().commit_index)
            assert nodes["c"][1].items == [f"e{i}" for i in range(60)]
            assert nodes["c"][1].restored, "the follower should have installed a snapshot"
            nursery.cancel_scope.cancel()


async def test_single_member_cluster_leads_at_once(autojump_clock: trio.testing.MockClock) -> None:
    machine = ListMachine()
    driver = RaftDriver("solo", ("solo",), MemoryStorage(), machine, lambda msgs: None, persist_in_thread=False)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            assert await driver.propose([b"x", b"y"]) == [1, 2]
            assert await driver.read_barrier() >= 3
            nursery.cancel_scope.cancel()


class GatedStorage(MemoryStorage):
    """MemoryStorage whose fsync (``sync``) blocks while the gate is closed, and counts completed syncs."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.syncs = 0

    def sync(self) -> None:
        self.gate.wait()
        self.syncs += 1


async def test_the_leader_replicates_while_its_own_fsync_runs_and_commits_only_after_it() -> None:
    # Real clock and real threads (the leader's fsync is blocked in a worker thread); a long election
    # timeout so nobody campaigns while it is blocked, and an explicit first campaign.
    net = Net()
    ids = ("a", "b", "c")
    nodes: dict[str, tuple[RaftDriver, ListMachine]] = {}
    for i, node_id in enumerate(ids):
        machine = ListMachine()
        driver = RaftDriver(node_id, ids, GatedStorage(), machine, net.sender(node_id), rng=random.Random(i),
                            tick_seconds=0.05, election_ticks=400)
        net.drivers[node_id] = driver
        nodes[node_id] = (driver, machine)
    leader, machine = nodes["a"]
    gate = leader.storage.gate
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for driver, _ in nodes.values():
                    nursery.start_soon(driver.run)
                leader.campaign()
                while not leader.is_leader:
                    await trio.sleep(0.01)
                assert await leader.propose([b"warm-up"]) == [1]
                gate.clear()
                outcome: list[Any] = []

                async def propose() -> None:
                    outcome.extend(await leader.propose([b"parallel"]))

                nursery.start_soon(propose)
                index = leader.status().last_index + 1
                followers = [nodes[i][0] for i in ("b", "c")]
                # The followers store (and fsync) the entry while the leader's own fsync is still blocked.
                while not all(f.storage.last_index() >= index and f.storage.syncs for f in followers):
                    await trio.sleep(0.01)
                await trio.sleep(0.2)  # their acknowledgements arrive meanwhile
                assert not outcome, "committed before the leader's fsync returned"
                assert machine.items == ["warm-up"]
                gate.set()
                while not outcome:
                    await trio.sleep(0.01)
                assert outcome == [2]
                nursery.cancel_scope.cancel()
    finally:
        gate.set()


async def test_a_stalled_loop_counts_as_one_tick_not_an_election_timeout(autojump_clock: trio.testing.MockClock) -> None:
    # A follower whose process was starved for longer than an election timeout must not campaign before
    # it had a chance to read the heartbeats that queued up meanwhile: missed ticks are dropped.
    net = Net()
    nodes = _cluster(net, ("a", "b", "c"))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for driver, _ in nodes.values():
                nursery.start_soon(driver.run)
            drivers = [d for d, _ in nodes.values()]
            leader = await _wait_leader(drivers)
            term = leader.term
            follower = next(d for d in drivers if d is not leader)
            ticks: list[int] = []
            real_tick = follower.node.tick
            follower.node.tick = lambda: (ticks.append(1), real_tick())[1]  # type: ignore[method-assign]
            autojump_clock.jump(10 * follower.tick_seconds * follower.node.config.election_ticks)
            await trio.sleep(follower.tick_seconds / 2)
            assert len(ticks) <= 2, f"{len(ticks)} ticks for one stalled round"
            await trio.sleep(5)
            assert leader.is_leader and leader.term == term
            nursery.cancel_scope.cancel()


# --- real sockets -----------------------------------------------------------------------------------------


async def test_real_transports_over_websockets_with_durable_logs(tmp_path: Path) -> None:
    ids = ("n1", "n2", "n3")
    ports: dict[str, int] = {}
    drivers: dict[str, RaftDriver] = {}
    machines: dict[str, ListMachine] = {}
    transports: dict[str, Transport] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # Listeners first (ephemeral ports), then each transport learns the others' URLs.
            holders: dict[str, dict[str, RaftDriver]] = {}
            for node_id in ids:
                holder: dict[str, RaftDriver] = {}
                holders[node_id] = holder
                transports[node_id] = Transport(node_id, {}, SECRET, lambda m, h=holder: h["d"].deliver(m))
                ports[node_id] = await nursery.start(serve_websocket_listener, transports[node_id])
            for node_id in ids:
                peers = {p: f"http://127.0.0.1:{ports[p]}" for p in ids}
                t = Transport(node_id, peers, SECRET, transports[node_id].deliver)
                # The listener's transport must know the members (for hello checks): share the maps.
                transports[node_id].peers.update(t.peers)
                transports[node_id].fingerprint = t.fingerprint
                machines[node_id] = ListMachine()
                drivers[node_id] = RaftDriver(node_id, ids, DurableStorage(tmp_path / node_id), machines[node_id],
                                              t.send, tick_seconds=0.02, election_ticks=10)
                holders[node_id]["d"] = drivers[node_id]
                await nursery.start(t.run)
            for d in drivers.values():
                await nursery.start(d.run)
            leader = await _wait_leader(list(drivers.values()))
            results = await leader.propose([f"item-{i}".encode() for i in range(100)])
            assert results == list(range(1, 101))
            for d in drivers.values():
                await d.wait_applied(leader.status().commit_index)
            assert all(m.items == [f"item-{i}" for i in range(100)] for m in machines.values())

            # A client with the wrong secret is refused and counted; nothing reaches the core.
            from trio_websocket import open_websocket_url

            target = next(p for p in ids if p != leader.node_id)
            before = transports[target].stats.dropped_in["forged"]
            async with open_websocket_url(f"ws://127.0.0.1:{ports[target]}/raft") as ws:
                challenge, _ = codec.parse_challenge(await ws.get_message())
                await ws.send_message(codec.hello_frame(b"not-the-secret", challenge, leader.node_id, target))
                with trio.move_on_after(10):
                    while transports[target].stats.dropped_in["forged"] == before:
                        await trio.sleep(0.05)
            assert transports[target].stats.dropped_in["forged"] == before + 1
            nursery.cancel_scope.cancel()
    for d in drivers.values():
        d.storage.close()


def test_nodes_given_different_member_lists_refuse_each_other() -> None:
    mine = codec.members_fingerprint(["a", "b", "c"])
    theirs = codec.members_fingerprint(["a", "b", "d"])
    session = InboundSession(SECRET, "b", lambda: {"a", "c"}, mine)
    with pytest.raises(PeerAuthError) as exc:
        session.accept(codec.hello_frame(SECRET, session.challenge, "a", "b", theirs))
    assert exc.value.kind == "misconfigured" and "different member list" in str(exc.value)
    ok = InboundSession(SECRET, "b", lambda: {"a", "c"}, mine)
    assert ok.accept(codec.hello_frame(SECRET, ok.challenge, "a", "b", mine)) == []
