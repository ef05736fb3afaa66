"""Ports of the MIT 6.824 lab 2B tests (log agreement) onto the simulator.

Sizes, faults and bounds are the lab's; one tick is 100 ms of lab time (see tests/raft/sim.py).
"""

from __future__ import annotations

from tests.raft.sim import ELECTION_TIMEOUT_MS, Cluster


def cmd(c: Cluster) -> bytes:
    return str(c.rng.getrandbits(31)).encode()


def test_basic_agree() -> None:
    c = Cluster(3, seed=10)
    c.check_one_leader()
    # Index 1 is the first leader's noop; client commands follow it.
    first = c.one(b"warmup", 3)
    for k in range(1, 4):
        want = first + k
        assert c.n_committed(want)[0] == 0, "committed before Start()"
        assert c.one(str(k * 100).encode(), 3, retry=False) == want


def test_rpc_byte_budget() -> None:
    # Each command's bytes should cross the network about once per follower, not more.
    c = Cluster(3, seed=11)
    c.one(b"99", 3)
    bytes0 = c.bytes_sent
    sent = 0
    for _ in range(10):
        data = bytes(c.rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(5000))
        c.one(data, 3, retry=False)
        sent += len(data)
    got = c.bytes_sent - bytes0
    assert got <= 3 * sent + 50_000, f"too many RPC bytes: {got}, expected at most {3 * sent + 50_000}"


def test_follower_failure() -> None:
    c = Cluster(3, seed=12)
    c.one(b"101", 3)
    leader1 = c.check_one_leader()
    c.disconnect((leader1 + 1) % 3)
    # The leader and the remaining follower make progress.
    c.one(b"102", 2)
    c.run_for(ELECTION_TIMEOUT_MS)
    c.one(b"103", 2)
    leader2 = c.check_one_leader()
    c.disconnect((leader2 + 1) % 3)
    c.disconnect((leader2 + 2) % 3)
    index = c.propose(leader2, b"104")
    assert index is not None, "leader rejected Start()"
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    assert c.n_committed(index)[0] == 0, "a command committed without a majority"


def test_leader_failure() -> None:
    c = Cluster(3, seed=13)
    c.one(b"101", 3)
    leader1 = c.check_one_leader()
    c.disconnect(leader1)
    c.one(b"102", 2)
    c.run_for(ELECTION_TIMEOUT_MS)
    c.one(b"103", 2)
    leader2 = c.check_one_leader()
    c.disconnect(leader2)
    indexes = [c.propose(i, b"104") for i in range(3)]
    assert any(index is not None for index in indexes), "no server accepted Start()"
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    for index in indexes:
        if index is not None:
            assert c.n_committed(index)[0] == 0, "104 committed with a single server"


def test_fail_agree() -> None:
    c = Cluster(3, seed=14)
    c.one(b"101", 3)
    leader = c.check_one_leader()
    c.disconnect((leader + 1) % 3)
    for v in (b"102", b"103", b"104", b"105"):
        c.one(v, 2)
    c.connect((leader + 1) % 3)
    # The reconnected follower catches up on everything it missed.
    c.one(b"106", 3)
    c.run_for(ELECTION_TIMEOUT_MS)
    c.one(b"107", 3)


def test_fail_no_agree() -> None:
    c = Cluster(5, seed=15)
    base = c.one(b"10", 5)
    leader = c.check_one_leader()
    for k in (1, 2, 3):
        c.disconnect((leader + k) % 5)
    index = c.propose(leader, b"20")
    assert index == base + 1, f"expected index {base + 1}, got {index}"
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    assert c.n_committed(index)[0] == 0, "committed without a majority"
    for k in (1, 2, 3):
        c.connect((leader + k) % 5)
    # The old leader stepped down (CheckQuorum), so a new term starts with a noop: 30 lands right after
    # it, either on top of the uncommitted 20 (old leader re-elected) or in its place.
    leader2 = c.check_one_leader()
    index2 = c.propose(leader2, b"30")
    assert index2 is not None and base + 2 <= index2 <= base + 3, f"unexpected index {index2}"
    c.one(b"1000", 5)


def test_concurrent_starts() -> None:
    c = Cluster(3, seed=16)
    for _attempt in range(5):
        leader = c.check_one_leader()
        term = c.raft(leader).term
        first = c.propose(leader, b"1")
        if first is None:
            continue
        indexes = {}
        for i in range(5):
            data = str(100 + i).encode()
            index = c.propose(leader, data)
            if index is not None:
                indexes[index] = data
        if c.raft(leader).term != term or len(indexes) < 5:
            continue
        for index, data in indexes.items():
            assert c.wait_committed(index, 3) == data
        assert len(set(indexes)) == 5
        return
    raise AssertionError("term changed too often")


def test_rejoin() -> None:
    c = Cluster(3, seed=17)
    c.one(b"101", 3)
    leader1 = c.check_one_leader()
    c.disconnect(leader1)
    # The old leader appends entries nobody else will ever see.
    for v in (b"102", b"103", b"104"):
        c.propose(leader1, v)
    c.one(b"103", 2)
    leader2 = c.check_one_leader()
    c.disconnect(leader2)
    c.connect(leader1)
    c.one(b"104", 2)
    c.connect(leader2)
    c.one(b"105", 3)


def test_backup() -> None:
    # Leaders must back up over 50-entry divergent logs quickly (conflict hints, not one entry per RTT).
    c = Cluster(5, seed=18)
    c.one(cmd(c), 5)
    leader1 = c.check_one_leader()
    for k in (2, 3, 4):
        c.disconnect((leader1 + k) % 5)
    for _ in range(50):
        c.propose(leader1, cmd(c))
    c.run_for(ELECTION_TIMEOUT_MS // 2)
    c.disconnect(leader1)
    c.disconnect((leader1 + 1) % 5)
    for k in (2, 3, 4):
        c.connect((leader1 + k) % 5)
    for _ in range(50):
        c.one(cmd(c), 3)
    leader2 = c.check_one_leader()
    other = (leader1 + 2) % 5
    if leader2 == other:
        other = (leader2 + 1) % 5
    c.disconnect(other)
    for _ in range(50):
        c.propose(leader2, cmd(c))
    c.run_for(ELECTION_TIMEOUT_MS // 2)
    for i in range(5):
        c.disconnect(i)
    c.connect(leader1)
    c.connect((leader1 + 1) % 5)
    c.connect(other)
    for _ in range(50):
        c.one(cmd(c), 3)
    for i in range(5):
        c.connect(i)
    c.one(cmd(c), 5)


def test_rpc_counts() -> None:
    c = Cluster(3, seed=19)
    leader = c.check_one_leader()
    total1 = c.rpc_count
    assert 1 <= total1 <= 30, f"too many or few RPCs ({total1}) to elect initial leader"
    for _attempt in range(5):
        leader = c.check_one_leader()
        term = c.raft(leader).term
        total1 = c.rpc_count
        iters = 10
        ok = True
        # One command at a time, each waited for on every server: the commit index must ride on the
        # next heartbeat or append, not on a round of its own.
        for i in range(iters):
            index = c.propose(leader, str(1000 + i).encode())
            if index is None or c.raft(leader).term != term:
                ok = False
                break
            c.wait_committed(index, 3)
        if not ok or c.raft(leader).term != term:
            continue
        total2 = c.rpc_count
        assert total2 - total1 <= (iters + 1 + 3) * 3, f"too many RPCs ({total2 - total1}) for {iters} entries"
        break
    else:
        raise AssertionError("term changed too often")
    c.run_for(ELECTION_TIMEOUT_MS)
    total3 = c.rpc_count
    assert total3 - total2 <= 3 * 20, f"too many RPCs ({total3 - total2}) for 1 second of idleness"


def test_rpc_counts_concurrent_starts() -> None:
    # The lab's own flow: start iters+1 commands at once, then wait for all of them everywhere.
    c = Cluster(3, seed=20)
    leader = c.check_one_leader()
    term = c.raft(leader).term
    total1 = c.rpc_count
    iters = 10
    indexes = [c.propose(leader, str(1000 + i).encode()) for i in range(iters + 1)]
    assert all(index is not None for index in indexes)
    for index in indexes:
        assert index is not None
        c.wait_committed(index, 3)
    assert c.raft(leader).term == term
    total2 = c.rpc_count
    assert total2 - total1 <= (iters + 1 + 3) * 3, f"too many RPCs ({total2 - total1}) for {iters} entries"
