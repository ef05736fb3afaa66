"""Scenarios for what Raft adds beyond the paper's core: PreVote, CheckQuorum and the leader lease,
ReadIndex, leadership transfer and single-server membership changes (Ongaro's thesis, etcd)."""

from __future__ import annotations

import pytest

from dtf_app.raft.core import ConfChange, Message, MessageType, NotLeader, ProposalDropped
from tests.raft.sim import ELECTION_TIMEOUT_MS, TICK_MS, Cluster

# --- PreVote ---------------------------------------------------------------------------------------


def test_prevote_partitioned_node_rejoins_without_disrupting() -> None:
    c = Cluster(5, seed=40)
    leader = c.check_one_leader()
    c.one(b"before", 5)
    term = c.raft(leader).term
    lonely = (leader + 1) % 5
    c.disconnect(lonely)
    c.run_for(10 * ELECTION_TIMEOUT_MS)
    # Its pre-votes never succeed, so its term never moves.
    assert c.raft(lonely).term == term
    c.connect(lonely)
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    assert c.check_one_leader() == leader
    assert c.raft(leader).term == term
    c.one(b"after", 5)


def test_without_prevote_a_rejoining_node_forces_a_new_term() -> None:
    # The contrast that shows what PreVote buys (and that the test above can fail).
    c = Cluster(5, seed=41, pre_vote=False, check_quorum=False)
    leader = c.check_one_leader()
    term = c.raft(leader).term
    lonely = (leader + 1) % 5
    c.disconnect(lonely)
    c.run_for(10 * ELECTION_TIMEOUT_MS)
    assert c.raft(lonely).term > term
    c.connect(lonely)
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    assert c.check_terms() > term


# --- CheckQuorum and the leader lease ----------------------------------------------------------------


@pytest.mark.parametrize("seed", [42, 43, 44])
def test_check_quorum_leader_in_minority_steps_down(seed: int) -> None:
    c = Cluster(5, seed=seed)
    leader = c.check_one_leader()
    lid = c.ids[leader]
    buddy = c.ids[(leader + 1) % 5]
    c.partition([lid, buddy])
    started = c.now
    stepped_down = c.run_until(lambda: c.raft(lid).role != "leader", 2 * ELECTION_TIMEOUT_MS + TICK_MS)
    assert stepped_down, "leader cut off from its quorum kept leading"
    assert c.now - started <= 2 * ELECTION_TIMEOUT_MS + TICK_MS
    # The majority side elects its own leader; after healing everyone agrees.
    c.run_for(3 * ELECTION_TIMEOUT_MS)
    c.heal()
    c.one(b"healed", 5)


def test_lease_makes_followers_ignore_vote_requests() -> None:
    c = Cluster(3, seed=45)
    leader = c.check_one_leader()
    term = c.raft(leader).term
    follower, other = c.ids[(leader + 1) % 3], c.ids[(leader + 2) % 3]
    last = c.raft(other).last_index
    # A node that has just heard from the leader ignores a (pre-)vote for a higher term, however
    # up to date the candidate looks.
    for mtype in (MessageType.PRE_VOTE, MessageType.VOTE):
        c.deliver_now(Message(mtype, other, follower, term + 5, log_term=term + 4, index=last + 100))
        assert c.raft(follower).term == term
        assert c.raft(follower).vote != other
        assert c.raft(follower).leader_id == c.ids[leader]
    c.deliver_now(Message(MessageType.VOTE, follower, c.ids[leader], term + 5, log_term=term + 4, index=last))
    assert c.raft(leader).role == "leader" and c.raft(leader).term == term
    # A transfer's campaign (TimeoutNow) is the exception: it bypasses the lease.
    c.deliver_now(
        Message(MessageType.VOTE, other, follower, term + 1, log_term=term, index=last, context=b"transfer")
    )
    assert c.raft(follower).term == term + 1 and c.raft(follower).vote == other


def test_check_quorum_off_keeps_a_minority_leader() -> None:
    c = Cluster(5, seed=46, check_quorum=False)
    leader = c.check_one_leader()
    c.partition([c.ids[leader]])
    c.run_for(4 * ELECTION_TIMEOUT_MS)
    assert c.raft(leader).role == "leader"


# --- ReadIndex ---------------------------------------------------------------------------------------


def test_read_index_on_leader_and_followers() -> None:
    c = Cluster(3, seed=47)
    index = c.one(b"x", 3)
    c.run_for(500)
    assert c.check.max_committed == index
    for i in range(3):
        assert c.read(i, f"r{i}".encode())
    c.run_for(500)
    for i in range(3):
        states = c.node(i).read_states
        assert [(s.ctx, s.index) for s in states] == [(f"r{i}".encode(), index)]


def test_read_index_across_leader_change() -> None:
    c = Cluster(3, seed=48)
    for k in range(5):
        c.one(f"v{k}".encode(), 3)
    old = c.check_one_leader()
    old_id = c.ids[old]
    c.disconnect(old)
    # The deposed leader (still believing it leads) must never answer without its quorum.
    c.read(old, b"stale")

    def new_leader() -> str | None:
        for n in c.leaders():
            if n.id != old_id:
                return n.id
        return None

    assert c.run_until(lambda: new_leader() is not None, 5 * ELECTION_TIMEOUT_MS)
    nid = new_leader()
    assert nid is not None
    raft = c.raft(nid)
    assert raft.log_term(raft.commit_index) != raft.term, "noop already committed; test needs a fresh leader"
    commit_at_ask = c.check.max_committed
    # Deferred, not refused: the new leader answers once its noop commits and a heartbeat round confirms.
    assert c.read(nid, b"fresh")
    assert not c.node(nid).read_states
    assert c.run_until(lambda: bool(c.node(nid).read_states), ELECTION_TIMEOUT_MS)
    state = c.node(nid).read_states[0]
    assert state.ctx == b"fresh"
    assert state.index >= commit_at_ask
    assert raft.log_term(state.index) == raft.term, "the answer covers the new leader's noop"
    c.run_for(3 * ELECTION_TIMEOUT_MS)
    assert not c.node(old).read_states, "a leader without a quorum answered a read"
    c.connect(old)
    c.run_for(ELECTION_TIMEOUT_MS)
    assert not [s for s in c.node(old).read_states if s.ctx == b"stale"]


def test_read_index_refused_by_node_without_leader() -> None:
    c = Cluster(3, seed=49)
    with pytest.raises(NotLeader):
        c.raft(0).read_index(b"too-early")


# --- leadership transfer ------------------------------------------------------------------------------


def test_transfer_to_up_to_date_follower() -> None:
    c = Cluster(3, seed=50)
    leader = c.check_one_leader()
    c.one(b"x", 3)
    term = c.raft(leader).term
    target = c.ids[(leader + 1) % 3]
    c.transfer(leader, target)
    assert c.run_until(lambda: c.raft(target).role == "leader", ELECTION_TIMEOUT_MS)
    assert c.raft(target).term == term + 1
    # The old leader steps down as soon as the new term's messages reach it.
    assert c.run_until(lambda: c.raft(leader).role == "follower", 2 * TICK_MS)
    c.one(b"y", 3)


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    c = Cluster(3, seed=51)
    leader = c.check_one_leader()
    lag = (leader + 1) % 3
    c.disconnect(lag)
    for k in range(20):
        c.one(f"v{k}".encode(), 2)
    c.connect(lag)
    target = c.ids[lag]
    assert c.raft(target).last_index < c.raft(leader).last_index
    c.transfer(leader, target)
    with pytest.raises(ProposalDropped):
        c.raft(leader).propose(b"during transfer")
    assert c.run_until(lambda: c.raft(target).role == "leader", ELECTION_TIMEOUT_MS)
    c.one(b"after", 3)


def test_transfer_to_crashed_target_is_aborted() -> None:
    c = Cluster(3, seed=52)
    leader = c.check_one_leader()
    target = (leader + 1) % 3
    c.crash(target)
    c.transfer(leader, c.ids[target])
    raft = c.raft(leader)
    assert raft.lead_transferee == c.ids[target]
    with pytest.raises(ProposalDropped):
        raft.propose(b"blocked")
    assert c.run_until(lambda: raft.lead_transferee is None, ELECTION_TIMEOUT_MS + TICK_MS)
    assert raft.role == "leader"
    assert c.propose(leader, b"accepted again") is not None


def test_transfer_to_unknown_target_is_ignored() -> None:
    c = Cluster(3, seed=53)
    leader = c.check_one_leader()
    c.transfer(leader, "nobody")
    assert c.raft(leader).lead_transferee is None
    assert c.propose(leader, b"fine") is not None


def test_transfer_requested_on_a_follower_is_forwarded() -> None:
    c = Cluster(3, seed=54)
    leader = c.check_one_leader()
    c.one(b"x", 3)
    follower = c.ids[(leader + 1) % 3]
    c.transfer(follower, follower)
    assert c.run_until(lambda: c.raft(follower).role == "leader", ELECTION_TIMEOUT_MS)


# --- membership changes ---------------------------------------------------------------------------------


def _leader_id(c: Cluster) -> str:
    return c.ids[c.check_one_leader()]


def _converged(c: Cluster, voters: set[str]) -> bool:
    return all(c.raft(v).voters == voters for v in voters)


def test_membership_3_to_5_to_3_including_leader_removal() -> None:
    c = Cluster(3, seed=55)
    c.one(b"start", 3)
    voters = set(c.ids)
    for new in ("n3", "n4"):
        lid = _leader_id(c)
        index = c.conf_change(lid, ConfChange("add", new))
        assert index is not None
        voters.add(new)
        # The new node starts with the configuration that includes it.
        c.add_node(new, sorted(voters))
        if new == "n3":
            # One change at a time.
            with pytest.raises(ProposalDropped):
                c.raft(lid).propose_conf_change(ConfChange("add", "n4"))
        assert c.run_until(lambda v=frozenset(voters): _converged(c, set(v)), 5 * ELECTION_TIMEOUT_MS)
        c.wait_committed(index, len(voters))
    c.one(b"five", 5)
    # Remove the leader itself: it steps down once the change commits, and the rest carry on.
    lid = _leader_id(c)
    index = c.conf_change(lid, ConfChange("remove", lid))
    assert index is not None
    voters.discard(lid)
    assert c.run_until(lambda: c.raft(lid).role != "leader", 2 * ELECTION_TIMEOUT_MS)
    assert c.raft(lid).commit_index >= index
    assert c.run_until(lambda: _converged(c, voters), 5 * ELECTION_TIMEOUT_MS)
    new_leader = _leader_id(c)
    assert new_leader in voters
    victim = sorted(voters - {new_leader})[0]
    assert c.conf_change(new_leader, ConfChange("remove", victim)) is not None
    voters.discard(victim)
    assert c.run_until(lambda: _converged(c, voters), 5 * ELECTION_TIMEOUT_MS)
    assert len(voters) == 3
    index = c.one(b"three", 3)
    for v in voters:
        assert c.node(v).sm_index >= index
    # The removed nodes do not disturb the remaining cluster.
    term = c.raft(new_leader).term
    c.run_for(5 * ELECTION_TIMEOUT_MS)
    assert c.raft(new_leader).role == "leader" and c.raft(new_leader).term == term


def test_conf_change_requires_leader_and_sane_change() -> None:
    c = Cluster(3, seed=56)
    leader = _leader_id(c)
    follower = next(i for i in c.ids if i != leader)
    with pytest.raises(NotLeader) as err:
        c.raft(follower).propose_conf_change(ConfChange("add", "n9"))
    assert err.value.leader_id == leader
    with pytest.raises(ProposalDropped):
        c.raft(leader).propose_conf_change(ConfChange("add", follower))
    with pytest.raises(ProposalDropped):
        c.raft(leader).propose_conf_change(ConfChange("remove", "n9"))
