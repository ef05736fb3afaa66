"""Ports of the MIT 6.824 lab 2D tests (snapshots, InstallSnapshot, compaction) onto the simulator.

The application snapshots every ``SNAPSHOT_INTERVAL`` applied entries and compacts its log to that
point (the lab's SnapShotInterval = 10), so a follower that falls behind can only be caught up by
InstallSnapshot. The lab's MAXLOGSIZE check becomes a bound on the entries kept in each storage.
"""

from __future__ import annotations

import pytest

from tests.raft.sim import Cluster

SNAPSHOT_INTERVAL = 10
MAX_LOG_ENTRIES = 3 * SNAPSHOT_INTERVAL


def rand_cmd(c: Cluster) -> bytes:
    return str(c.rng.getrandbits(31)).encode()


def _check_log_size(c: Cluster) -> None:
    for node in c.nodes.values():
        kept = node.storage.last_index() - node.storage.first_index() + 1
        assert kept <= MAX_LOG_ENTRIES, f"{node.id} keeps {kept} entries: snapshots are not compacting the log"


def _snapcommon(seed: int, disconnect: bool, reliable: bool, crash: bool) -> Cluster:
    servers = 3
    c = Cluster(servers, seed=seed, reliable=reliable, snapshot_every=SNAPSHOT_INTERVAL, lose_unsynced=True)
    c.one(rand_cmd(c), servers)
    leader1 = c.check_one_leader()
    installs_before = c.sent_by_type["SNAPSHOT"]
    for i in range(30):
        victim, sender = (leader1 + 1) % servers, leader1
        if i % 3 == 1:
            sender, victim = victim, leader1
        if disconnect:
            c.disconnect(victim)
            c.one(rand_cmd(c), servers - 1)
        if crash:
            c.crash(victim)
            c.one(rand_cmd(c), servers - 1)
        # Enough entries for a snapshot (and a compaction past the victim) to happen.
        for _ in range(SNAPSHOT_INTERVAL // 2 + c.rng.randrange(SNAPSHOT_INTERVAL)):
            c.propose(sender, rand_cmd(c))
        if not disconnect and not crash:
            c.one(rand_cmd(c), servers)
        else:
            c.one(rand_cmd(c), servers - 1)
        _check_log_size(c)
        if disconnect:
            c.connect(victim)
            c.one(rand_cmd(c), servers)
            leader1 = c.check_one_leader()
        if crash:
            c.start(victim)
            c.connect(victim)
            c.one(rand_cmd(c), servers)
            leader1 = c.check_one_leader()
    if disconnect or crash:
        assert c.sent_by_type["SNAPSHOT"] > installs_before, "lagging followers were never sent a snapshot"
    return c


def test_snapshot_basic() -> None:
    _snapcommon(30, disconnect=False, reliable=True, crash=False)


def test_snapshot_install() -> None:
    _snapcommon(31, disconnect=True, reliable=True, crash=False)


def test_snapshot_install_unreliable() -> None:
    _snapcommon(32, disconnect=True, reliable=False, crash=False)


def test_snapshot_install_crash() -> None:
    _snapcommon(33, disconnect=False, reliable=True, crash=True)


def test_snapshot_install_unreliable_crash() -> None:
    _snapcommon(34, disconnect=False, reliable=False, crash=True)


def test_snapshot_all_crash() -> None:
    servers = 3
    c = Cluster(servers, seed=35, snapshot_every=SNAPSHOT_INTERVAL, lose_unsynced=True)
    c.one(rand_cmd(c), servers)
    for _ in range(5):
        for _ in range(SNAPSHOT_INTERVAL // 2 + c.rng.randrange(SNAPSHOT_INTERVAL)):
            c.one(rand_cmd(c), servers)
        index1 = c.one(rand_cmd(c), servers)
        for i in range(servers):
            c.crash(i)
        for i in range(servers):
            c.start(i)
        index2 = c.one(rand_cmd(c), servers)
        assert index2 >= index1 + 1, f"index decreased from {index1} to {index2}"


def test_snapshot_init() -> None:
    # A restarted node starts from its snapshot: committed entries are handed out from snapshot.index+1.
    servers = 3
    c = Cluster(servers, seed=36, snapshot_every=SNAPSHOT_INTERVAL, lose_unsynced=True)
    c.one(rand_cmd(c), servers)
    for _ in range(SNAPSHOT_INTERVAL + 1):
        c.one(rand_cmd(c), servers)
    for rounds in range(2):
        for i in range(servers):
            c.crash(i)
        for i in range(servers):
            c.start(i)
            snap = c.node(i).storage.snapshot()
            assert snap is not None
            first = c.node(i).first_apply_after_start
            assert first is None or first == snap.index + 1, f"re-applied from {first}, snapshot at {snap.index}"
        c.one(rand_cmd(c), servers)
        del rounds


@pytest.mark.parametrize("seed", [37, 38])
def test_snapshot_bytes_verbatim(seed: int) -> None:
    # The snapshot a lagging follower installs is the leader application's, byte for byte.
    c = Cluster(3, seed=seed, snapshot_every=SNAPSHOT_INTERVAL)
    c.one(b"first", 3)
    leader = c.check_one_leader()
    lagger = (leader + 1) % 3
    c.disconnect(lagger)
    for k in range(3 * SNAPSHOT_INTERVAL):
        c.one(f"v{k}".encode(), 2)
    c.connect(lagger)
    c.one(b"last", 3)
    installed = c.node(lagger).installed
    assert installed, "the lagging follower was not sent a snapshot"
    for snap in installed:
        assert snap.data == c.node(leader).created[snap.index]
        assert snap.voters == frozenset(c.ids)
