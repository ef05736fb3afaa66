"""One test per rule of the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus
Algorithm", sections 5.1-5.4), in the manner of etcd's raft_paper_test.go: each drives a single node by
hand with fabricated peer messages. PreVote and CheckQuorum are off here unless a test says otherwise."""

from __future__ import annotations

import random

import pytest

from dtf_app.raft.core import Entry, Message, MessageType, RaftConfig, RaftNode
from dtf_app.raft.storage import MemoryStorage
from tests.raft.helpers import (
    ack_all,
    become_leader,
    committed,
    entries_with_terms,
    handle,
    make_node,
    messages,
)

MT = MessageType

# --- 5.1 Raft basics ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
def test_5_1_update_term_from_message(role: str) -> None:
    # "If one server's current term is smaller than the other's, then it updates its current term to the
    # larger value. If a candidate or leader discovers that its term is out of date, it immediately
    # reverts to follower state."
    node, st = make_node()
    if role == "candidate":
        node.campaign()
    elif role == "leader":
        become_leader(node, st)
    node.step(Message(MT.APPEND, "b", "a", 9, index=0, log_term=0))
    assert node.term == 9
    assert node.role == "follower"
    assert node.leader_id == "b"


def test_5_1_reject_stale_term_message() -> None:
    # "If a server receives a request with a stale term number, it rejects the request."
    node, st = make_node(log_terms=[1, 2], term=2)
    handle(node, st)
    node.step(Message(MT.APPEND, "b", "a", 1, index=2, log_term=2, entries=tuple(entries_with_terms([1], 3))))
    msgs = messages(node, st)
    assert node.last_index == 2 and node.term == 2
    # The stale leader is told the newer term so that it steps down.
    assert [(m.type, m.term) for m in msgs] == [(MT.APPEND_RESP, 2)]


# --- 5.2 Leader election ----------------------------------------------------------------------------


def test_5_2_start_as_follower() -> None:
    node, _ = make_node()
    assert node.role == "follower" and node.leader_id is None and node.term == 0


def test_5_2_leader_broadcasts_heartbeats() -> None:
    node, st = make_node(heartbeat_ticks=1)
    ack_all(node, st, become_leader(node, st))
    # (A follower that got an append carrying the current commit index during an interval needs no
    # heartbeat in it; from an idle interval on, everyone gets one per heartbeat_ticks.)
    node.tick()
    messages(node, st)
    node.tick()
    beats = [m for m in messages(node, st) if m.type == MT.HEARTBEAT]
    assert sorted(m.dst for m in beats) == ["b", "c"]
    assert all(m.term == node.term for m in beats)


@pytest.mark.parametrize("start_role", ["follower", "candidate"])
def test_5_2_election_timeout_starts_election(start_role: str) -> None:
    # "If a follower receives no communication over a period of time called the election timeout, then
    # it ... begins an election": increments its term, votes for itself, issues RequestVote in parallel.
    node, st = make_node(log_terms=[1, 1], term=1)
    if start_role == "candidate":
        node.campaign()
    term = node.term
    for _ in range(2 * node.config.election_ticks):
        node.tick()
    msgs = messages(node, st)
    assert node.role == "candidate"
    assert node.term == term + 1
    assert node.vote == "a" and st.hard_state.vote == "a"
    votes = [m for m in msgs if m.type == MT.VOTE and m.term == node.term]
    assert sorted(m.dst for m in votes) == ["b", "c"]
    assert all(m.index == 2 and m.log_term == 1 for m in votes)


@pytest.mark.parametrize(
    ("size", "votes", "expected"),
    [
        (3, {"b": True, "c": True}, "leader"),
        (3, {"b": True}, "leader"),
        (3, {"b": False, "c": False}, "follower"),
        (5, {"b": True}, "candidate"),
        (5, {"b": True, "c": True}, "leader"),
        (5, {"b": False, "c": False}, "candidate"),
        (5, {"b": False, "c": False, "d": False}, "follower"),
    ],
)
def test_5_2_leader_election_in_one_round(size: int, votes: dict[str, bool], expected: str) -> None:
    # A candidate wins with a majority, loses on a majority of rejections, else waits.
    peers = "abcde"[:size]
    node, st = make_node(peers=peers)
    node.campaign()
    for voter, granted in votes.items():
        node.step(Message(MT.VOTE_RESP, voter, "a", node.term, reject=not granted))
    assert node.role == expected


@pytest.mark.parametrize(
    ("vote", "candidate", "granted"),
    [(None, "b", True), (None, "c", True), ("b", "b", True), ("c", "c", True), ("b", "c", False), ("c", "b", False)],
)
def test_5_2_follower_votes_at_most_once_per_term(vote: str | None, candidate: str, granted: bool) -> None:
    node, st = make_node(term=1, vote=vote)
    node.step(Message(MT.VOTE, candidate, "a", 1, index=0, log_term=0))
    resp = [m for m in messages(node, st) if m.type == MT.VOTE_RESP]
    assert [(m.dst, m.reject) for m in resp] == [(candidate, not granted)]
    if granted:
        # The vote is in the hard state persisted with (before) the reply.
        assert st.hard_state.vote == candidate


def test_5_2_vote_survives_restart() -> None:
    node, st = make_node(term=1)
    node.step(Message(MT.VOTE, "b", "a", 1))
    handle(node, st)
    restarted = RaftNode(node.config, st, random.Random(2))
    restarted.step(Message(MT.VOTE, "c", "a", 1))
    resp = [m for m in messages(restarted, st) if m.type == MT.VOTE_RESP]
    assert [(m.dst, m.reject) for m in resp] == [("c", True)]


def test_5_2_candidate_falls_back_on_append_from_leader() -> None:
    # "If the AppendEntries RPC is from another server claiming to be leader whose term is at least as
    # large as the candidate's current term, then the candidate ... returns to follower state."
    node, _ = make_node(term=1)
    node.campaign()
    node.step(Message(MT.APPEND, "b", "a", node.term, index=0, log_term=0))
    assert node.role == "follower" and node.leader_id == "b"


def test_5_2_election_timeouts_are_randomized() -> None:
    # Timeouts are drawn from [election_ticks, 2 * election_ticks) so split votes are rare.
    seen = set()
    for seed in range(50):
        node, st = make_node(seed=seed)
        ticks = 0
        while node.role == "follower":
            node.tick()
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) < 20
    assert len(seen) > 5


# --- 5.3 Log replication ----------------------------------------------------------------------------


def test_5_3_leader_starts_replication() -> None:
    node, st = make_node()
    ack_all(node, st, become_leader(node, st))
    last = node.last_index
    index = node.propose(b"x")
    assert index == last + 1
    apps = [m for m in messages(node, st) if m.type == MT.APPEND]
    assert sorted(m.dst for m in apps) == ["b", "c"]
    for m in apps:
        assert m.index == last and m.log_term == node.term
        assert [(e.index, e.data) for e in m.entries] == [(index, b"x")]


def test_5_3_leader_commits_on_majority_and_applies() -> None:
    node, st = make_node(peers="abcde")
    ack_all(node, st, become_leader(node, st))
    index = node.propose(b"x")
    apps = [m for m in messages(node, st) if m.type == MT.APPEND]
    # One acknowledgement (plus the leader) is not a majority of five; two are.
    node.step(Message(MT.APPEND_RESP, apps[0].dst, "a", node.term, index=index))
    assert node.commit_index < index
    node.step(Message(MT.APPEND_RESP, apps[1].dst, "a", node.term, index=index))
    assert node.commit_index == index
    assert [e.data for e in committed(handle(node, st))] == [b"x"]


def test_5_3_leader_commits_preceding_entries() -> None:
    # Committing an entry of the current term commits all preceding entries, including earlier terms'.
    node, st = make_node(log_terms=[1, 2], term=2)
    msgs = become_leader(node, st)
    ack_all(node, st, msgs)
    assert node.commit_index == 3
    assert [e.index for e in committed(handle(node, st))] in ([], [1, 2, 3])


def test_5_3_follower_commits_what_the_leader_committed() -> None:
    node, st = make_node(term=1)
    ents = tuple(entries_with_terms([1, 1, 1]))
    node.step(Message(MT.APPEND, "b", "a", 1, index=0, log_term=0, entries=ents, commit=2))
    assert node.commit_index == 2
    assert [e.index for e in committed(handle(node, st))] == [1, 2]


@pytest.mark.parametrize(
    ("prev_index", "prev_term", "rejected"),
    [(0, 0, False), (2, 2, False), (3, 3, False), (3, 2, True), (4, 3, True)],
)
def test_5_3_follower_checks_the_preceding_entry(prev_index: int, prev_term: int, rejected: bool) -> None:
    # "If the follower does not find an entry in its log with the same index and term, then it refuses
    # the new entries."
    node, st = make_node(log_terms=[1, 2, 3], term=3)
    handle(node, st)
    node.step(Message(MT.APPEND, "b", "a", 3, index=prev_index, log_term=prev_term))
    resp = [m for m in messages(node, st) if m.type == MT.APPEND_RESP]
    assert len(resp) == 1 and resp[0].reject is rejected
    if rejected:
        # The hint points at an index the leader can retry from in one step.
        assert resp[0].reject_hint <= min(prev_index, 3)


@pytest.mark.parametrize(
    ("prev_index", "prev_term", "new_terms", "want_terms"),
    [
        (2, 2, [3], [1, 2, 3]),
        (1, 1, [3, 4], [1, 3, 4]),
        (0, 0, [1], [1, 2]),
        (0, 0, [3], [3]),
    ],
)
def test_5_3_follower_appends_and_deletes_conflicts(
    prev_index: int, prev_term: int, new_terms: list[int], want_terms: list[int]
) -> None:
    # "If an existing entry conflicts with a new one (same index but different terms), delete the
    # existing entry and all that follow it; append any new entries not already in the log."
    node, st = make_node(log_terms=[1, 2], term=4)
    handle(node, st)
    ents = tuple(Entry(t, prev_index + 1 + i, data=b"new") for i, t in enumerate(new_terms))
    node.step(Message(MT.APPEND, "b", "a", 4, index=prev_index, log_term=prev_term, entries=ents))
    handle(node, st)
    assert [st.term(i) for i in range(1, st.last_index() + 1)] == want_terms


FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIGURE_7_FOLLOWERS))
def test_5_3_leader_brings_figure7_followers_in_line(case: str) -> None:
    leader, lst = make_node("L", peers=("L", "F", "V"), log_terms=FIGURE_7_LEADER, term=7)
    follower, fst = make_node("F", peers=("L", "F", "V"), log_terms=FIGURE_7_FOLLOWERS[case], term=7)
    leader._term = 7  # figure 7: the leader is elected for term 8 with V's vote
    leader.campaign()
    leader.step(Message(MT.VOTE_RESP, "V", "L", leader.term))
    assert leader.role == "leader" and leader.term == 8
    pending = [m for m in messages(leader, lst) if m.dst == "F"]
    appends = 0
    while pending:
        msg = pending.pop(0)
        appends += msg.type == MT.APPEND
        if msg.dst == "F":
            follower.step(msg)
            pending += messages(follower, fst)
        else:
            leader.step(msg)
            pending += [m for m in messages(leader, lst) if m.dst == "F"]
    want = [lst.term(i) for i in range(1, lst.last_index() + 1)]
    assert [fst.term(i) for i in range(1, fst.last_index() + 1)] == want
    # Conflict hints skip whole terms: a handful of round trips, not one per divergent entry.
    assert appends <= 4


# --- 5.4 Safety ---------------------------------------------------------------------------------------


def test_5_4_1_vote_request_carries_last_log_position() -> None:
    node, st = make_node(log_terms=[1, 1, 2], term=2)
    node.campaign()
    votes = [m for m in messages(node, st) if m.type == MT.VOTE]
    assert {(m.index, m.log_term) for m in votes} == {(3, 2)}


@pytest.mark.parametrize(
    ("cand_index", "cand_term", "granted"),
    [(3, 2, True), (4, 2, True), (2, 2, False), (1, 3, True), (5, 1, False)],
)
def test_5_4_1_voter_only_votes_for_up_to_date_logs(cand_index: int, cand_term: int, granted: bool) -> None:
    # "If the logs have last entries with different terms, then the log with the later term is more
    # up-to-date. If the logs end with the same term, then whichever log is longer is more up-to-date."
    node, st = make_node(log_terms=[1, 1, 2], term=3)
    node.step(Message(MT.VOTE, "b", "a", 4, index=cand_index, log_term=cand_term))
    resp = [m for m in messages(node, st) if m.type == MT.VOTE_RESP]
    assert [m.reject for m in resp] == [not granted]


def test_5_4_2_leader_only_commits_entries_from_its_term_by_counting() -> None:
    # Figure 8: entries from earlier terms are never committed by counting replicas; only once an entry
    # of the leader's own term (its noop) is stored on a majority.
    node, st = make_node(log_terms=[1, 2], term=2)
    msgs = become_leader(node, st)
    assert node.term == 3 and node.last_index == 3
    for m in msgs:
        if m.type == MT.APPEND:
            node.step(Message(MT.APPEND_RESP, m.dst, "a", node.term, index=2))
    assert node.commit_index == 0, "entries of earlier terms were committed by counting"
    for m in msgs:
        if m.type == MT.APPEND:
            node.step(Message(MT.APPEND_RESP, m.dst, "a", node.term, index=3))
    assert node.commit_index == 3


def test_single_node_cluster_elects_itself_and_commits_alone() -> None:
    storage = MemoryStorage()
    node = RaftNode(RaftConfig(node_id="solo", peers=["solo"]), storage, random.Random(0))
    node.campaign()
    assert node.role == "leader"
    index = node.propose(b"x")
    assert node.commit_index == index
    assert [e.data for e in committed(handle(node, storage))][-1] == b"x"
