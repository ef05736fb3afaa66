"""Ports of the MIT 6.824 lab 2C tests (persistence, figure 8, churn) onto the simulator.

Sizes, faults and bounds are the lab's; one tick is 100 ms of lab time (see tests/raft/sim.py). A crash
keeps only what the node's application loop persisted (and, with ``lose_unsynced``, only what was
fsynced); a restart is a new RaftNode over that storage.
"""

from __future__ import annotations

from tests.raft.sim import ELECTION_TIMEOUT_MS, Cluster


def rand_cmd(c: Cluster) -> bytes:
    return str(c.rng.getrandbits(31)).encode()


def test_persist1() -> None:
    c = Cluster(3, seed=20, lose_unsynced=True)
    c.one(b"11", 3)
    for i in range(3):
        c.restart(i)
    c.one(b"12", 3)
    leader1 = c.check_one_leader()
    c.disconnect(leader1)
    c.restart(leader1)
    c.connect(leader1)
    c.one(b"13", 3)
    leader2 = c.check_one_leader()
    c.disconnect(leader2)
    c.crash(leader2)
    index14 = c.one(b"14", 2)
    c.start(leader2)
    c.connect(leader2)
    c.wait_committed(index14, 3)
    i3 = (c.check_one_leader() + 1) % 3
    c.disconnect(i3)
    c.crash(i3)
    c.one(b"15", 2)
    c.start(i3)
    c.connect(i3)
    c.one(b"16", 3)


def test_persist2() -> None:
    c = Cluster(5, seed=21, lose_unsynced=True)
    for index in range(1, 6):
        c.one(str(10 + index).encode(), 5)
        leader1 = c.check_one_leader()
        for k in (1, 2):
            c.disconnect((leader1 + k) % 5)
            c.crash((leader1 + k) % 5)
        c.one(str(10 + index).encode(), 3)
        for k in (0, 3, 4):
            c.disconnect((leader1 + k) % 5)
            c.crash((leader1 + k) % 5)
        for k in (1, 2):
            c.start((leader1 + k) % 5)
            c.connect((leader1 + k) % 5)
        c.run_for(ELECTION_TIMEOUT_MS)
        c.start((leader1 + 3) % 5)
        c.connect((leader1 + 3) % 5)
        # Only servers that saw the last entry can be elected: persistence must have kept it.
        c.one(str(10 + index).encode(), 3)
        for k in (4, 0):
            c.start((leader1 + k) % 5)
            c.connect((leader1 + k) % 5)
    c.one(b"1000", 5)


def test_persist3() -> None:
    c = Cluster(3, seed=22, lose_unsynced=True)
    c.one(b"101", 3)
    leader = c.check_one_leader()
    c.disconnect((leader + 2) % 3)
    c.one(b"102", 2)
    c.crash(leader)
    c.crash((leader + 1) % 3)
    c.connect((leader + 2) % 3)
    c.start(leader)
    c.connect(leader)
    c.one(b"103", 2)
    c.start((leader + 1) % 3)
    c.connect((leader + 1) % 3)
    c.one(b"104", 3)


def _figure8(c: Cluster, unreliable: bool) -> None:
    servers = 5
    c.one(rand_cmd(c), 1)
    nup = servers
    for iters in range(1000):
        if unreliable and iters == 200:
            c.long_reordering = True
        leader = -1
        for i in range(servers):
            node = c.node(i)
            if node.raft is not None and (unreliable or node.connected):
                if c.propose(i, rand_cmd(c)) is not None:
                    leader = i
        if c.rng.randrange(1000) < 100:
            c.run_for(c.rng.randrange(ELECTION_TIMEOUT_MS // 2))
        else:
            c.run_for(c.rng.randrange(13))
        if unreliable:
            if leader != -1 and c.rng.randrange(1000) < ELECTION_TIMEOUT_MS // 2:
                c.disconnect(leader)
                nup -= 1
            if nup < 3:
                s = c.rng.randrange(servers)
                if not c.node(s).connected:
                    c.connect(s)
                    nup += 1
        else:
            if leader != -1:
                c.crash(leader)
                nup -= 1
            if nup < 3:
                s = c.rng.randrange(servers)
                if c.node(s).raft is None:
                    c.start(s)
                    nup += 1
    c.long_reordering = False
    for i in range(servers):
        c.start(i)
        c.connect(i)
    c.one(rand_cmd(c), servers)


def test_figure8() -> None:
    _figure8(Cluster(5, seed=23, lose_unsynced=True), unreliable=False)


def test_figure8_unreliable() -> None:
    _figure8(Cluster(5, seed=24, reliable=False), unreliable=True)


def test_unreliable_agree() -> None:
    c = Cluster(5, seed=25, reliable=False)
    for it in range(1, 50):
        for j in range(4):
            c.at(c.rng.randrange(30), lambda it=it, j=j: _start_anywhere(c, f"{100 * it + j}".encode()))
        c.one(str(it).encode(), 1)
    c.set_unreliable(False)
    c.one(b"100", 5)


def _start_anywhere(c: Cluster, data: bytes) -> None:
    for i in range(len(c.ids)):
        if c.propose(i, data) is not None:
            return


def _churn(c: Cluster, unreliable: bool) -> None:
    """Three clients propose to whoever leads while servers are disconnected, crashed and restarted."""
    servers = 5
    c.set_unreliable(unreliable)
    proposed: list[tuple[int, bytes]] = []
    stop = False

    def client(cid: int) -> None:
        if stop:
            return
        data = f"c{cid}-{c.rng.getrandbits(31)}".encode()
        for i in range(servers):
            node = c.node(i)
            if node.raft is not None and node.connected:
                index = c.propose(i, data)
                if index is not None:
                    proposed.append((index, data))
                    break
        c.at(c.rng.randint(10, 80), lambda: client(cid))

    for cid in range(3):
        client(cid)
    for _ in range(20):
        if c.rng.randrange(1000) < 200:
            c.disconnect(c.rng.randrange(servers))
        if c.rng.randrange(1000) < 500:
            i = c.rng.randrange(servers)
            c.start(i)
            c.connect(i)
        if c.rng.randrange(1000) < 200:
            c.crash(c.rng.randrange(servers))
        c.run_for(ELECTION_TIMEOUT_MS * 7 // 10)
    c.run_for(ELECTION_TIMEOUT_MS)
    c.set_unreliable(False)
    for i in range(servers):
        c.start(i)
        c.connect(i)
    stop = True
    last = c.one(rand_cmd(c), servers)
    # Every value that was committed is in the one log everybody agrees on.
    committed = 0
    for index, data in proposed:
        if index <= last and c.check.applied.get(index, (0, "", b""))[2] == data:
            committed += 1
    assert committed > 0, "no client value was committed during churn"
    assert all(c.node(i).sm_index >= last for i in range(servers))


def test_reliable_churn() -> None:
    _churn(Cluster(5, seed=26, lose_unsynced=True), unreliable=False)


def test_unreliable_churn() -> None:
    _churn(Cluster(5, seed=27, lose_unsynced=True), unreliable=True)
