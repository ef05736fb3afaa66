"""Ports of the MIT 6.824 lab 2A tests (leader election) onto the simulator.

Sizes, faults and bounds are the lab's; one tick is 100 ms of lab time (see tests/raft/sim.py).
"""

from __future__ import annotations

from tests.raft.sim import ELECTION_TIMEOUT_MS, Cluster


def test_initial_election() -> None:
    c = Cluster(3, seed=1)
    c.check_one_leader()
    c.run_for(50)
    term1 = c.check_terms()
    assert term1 >= 1
    # With no failures, leaders keep their term: nothing should force a new election.
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    assert c.check_terms() == term1
    c.check_one_leader()


def test_re_election() -> None:
    c = Cluster(3, seed=2)
    leader1 = c.check_one_leader()
    c.disconnect(leader1)
    c.check_one_leader()
    # The old leader rejoining must not disturb the new one.
    c.connect(leader1)
    leader2 = c.check_one_leader()
    # No quorum: no leader may be elected.
    c.disconnect(leader2)
    c.disconnect((leader2 + 1) % 3)
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    c.check_no_leader()
    c.connect((leader2 + 1) % 3)
    c.check_one_leader()
    c.connect(leader2)
    c.check_one_leader()


def test_many_elections() -> None:
    c = Cluster(7, seed=3)
    c.check_one_leader()
    for _ in range(10):
        victims = c.rng.sample(range(7), 3)
        for v in victims:
            c.disconnect(v)
        # Four of seven remain: a leader must still emerge (or survive).
        c.check_one_leader()
        for v in victims:
            c.connect(v)
    c.check_one_leader()
