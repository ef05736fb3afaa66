"""The Raft core's contract with its application (DESIGN.md section 7): the Ready protocol, must_sync,
persistence before sending, NotLeader hints, the leader noop, restarts from snapshots, flow control."""

from __future__ import annotations

import random

import pytest

from dtf_app.raft.core import (
    ConfChange,
    Entry,
    HardState,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftNode,
    Snapshot,
)
from dtf_app.raft.types import encode_conf_change, encode_noop, voters_from_entry
from tests.raft.helpers import ack_all, become_leader, committed, handle, make_node, messages

MT = MessageType


def test_public_names_import_from_core() -> None:
    import dtf_app.raft.core as core

    for name in ("RaftNode", "RaftConfig", "Entry", "HardState", "Snapshot", "ConfChange", "ReadState",
                 "Message", "MessageType", "Ready", "NotLeader", "ProposalDropped"):
        assert hasattr(core, name), name
    assert all(t.name.endswith("_RESP") == t.value.endswith("_resp") for t in MessageType)


def _persist(st, rd) -> None:  # type: ignore[no-untyped-def]
    st.append(rd.entries)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)


def test_must_sync_rules() -> None:
    node, st = make_node(term=1)
    node.step(Message(MT.VOTE, "b", "a", 2))
    rd = node.ready()
    assert rd.hard_state == HardState(2, "b", 0) and rd.must_sync
    # The vote's reply travels in the same Ready as the vote: sent only after it is durable.
    assert [m.type for m in rd.messages] == [MT.VOTE_RESP]
    _persist(st, rd)
    node.advance(rd)
    ent = Entry(2, 1, "noop", encode_noop({"a", "b", "c"}))
    node.step(Message(MT.APPEND, "b", "a", 2, index=0, log_term=0, entries=(ent,)))
    rd = node.ready()
    assert rd.entries == [ent] and rd.must_sync
    _persist(st, rd)
    node.advance(rd)
    node.step(Message(MT.HEARTBEAT, "b", "a", 2, commit=1))
    rd = node.ready()
    # A commit-index-only change need not be fsynced: it can be learned again.
    assert rd.hard_state == HardState(2, "b", 1) and not rd.must_sync
    assert rd.committed_entries == [ent]
    _persist(st, rd)
    node.advance(rd)
    assert not node.has_ready()


def test_not_leader_names_the_leader() -> None:
    node, st = make_node()
    with pytest.raises(NotLeader) as err:
        node.propose(b"x")
    assert err.value.leader_id is None
    node.step(Message(MT.HEARTBEAT, "c", "a", 1))
    with pytest.raises(NotLeader) as err:
        node.propose(b"x")
    assert err.value.leader_id == "c"


def test_new_leader_noop_precedes_client_entries() -> None:
    node, st = make_node(log_terms=[1, 1], term=1)
    become_leader(node, st)
    assert node.leader_id == "a"
    index = node.propose(b"client")
    handle(node, st)
    noop = st.entries(3, 4)[0]
    assert noop.kind == "noop" and noop.term == node.term
    assert voters_from_entry(noop) == {"a", "b", "c"}
    assert index == 4


def test_restart_hands_out_committed_entries_after_the_snapshot() -> None:
    node, st = make_node(peers=["a"])
    node.campaign()
    for k in range(6):
        node.propose(f"v{k}".encode())
    applied = committed(handle(node, st))
    assert [e.index for e in applied] == list(range(1, 8))
    st.create_snapshot(4, b"state@4")
    st.compact(3)
    restarted = RaftNode(node.config, st, random.Random(3))
    again = committed(handle(restarted, st))
    assert [e.index for e in again] == [5, 6, 7]


def test_received_snapshot_is_installed_verbatim_and_never_stale() -> None:
    node, st = make_node(term=1)
    snap = Snapshot(index=10, term=1, voters=frozenset("abc"), data=b"\x00app-bytes\xff")
    node.step(Message(MT.SNAPSHOT, "b", "a", 1, snapshot=snap))
    rds = handle(node, st)
    assert rds[0].snapshot == snap and rds[0].must_sync
    assert node.commit_index == 10 and st.snapshot() == snap and st.first_index() == 11
    resp = [m for rd in rds for m in rd.messages]
    assert [(m.type, m.index) for m in resp] == [(MT.APPEND_RESP, 10)]
    # An older snapshot is not installed again.
    node.step(Message(MT.SNAPSHOT, "b", "a", 1, snapshot=Snapshot(5, 1, frozenset("abc"), b"old")))
    assert all(rd.snapshot is None for rd in handle(node, st))


def test_lagging_follower_gets_the_storage_snapshot() -> None:
    node, st = make_node()
    ack_all(node, st, become_leader(node, st))
    for k in range(5):
        node.propose(f"v{k}".encode())
    msgs = messages(node, st)
    for m in msgs:
        if m.type == MT.APPEND and m.dst == "b":
            node.step(Message(MT.APPEND_RESP, "b", "a", node.term, index=m.index + len(m.entries)))
    handle(node, st)
    snap = st.create_snapshot(node.commit_index, b"app")
    st.compact(node.commit_index)
    # c rejects (say it lost its log): the entries it needs are gone, so it gets the snapshot.
    rejected = node.progress("c").next - 1
    node.step(Message(MT.APPEND_RESP, "c", "a", node.term, index=rejected, reject=True, reject_hint=0))
    sent = [m for m in messages(node, st) if m.dst == "c"]
    assert [m.type for m in sent] == [MT.SNAPSHOT]
    assert sent[0].snapshot == snap


def test_flow_control_limits_entries_and_inflight_messages() -> None:
    node, st = make_node(max_entries_per_msg=2, max_inflight_msgs=2)
    ack_all(node, st, become_leader(node, st))
    for k in range(10):
        node.propose(f"v{k}".encode())
    apps = [m for m in messages(node, st) if m.type == MT.APPEND and m.dst == "b"]
    assert all(len(m.entries) <= 2 for m in apps)
    assert len(apps) == 2, "more appends in flight than max_inflight_msgs"
    node.step(Message(MT.APPEND_RESP, "b", "a", node.term, index=apps[0].index + len(apps[0].entries)))
    more = [m for m in messages(node, st) if m.type == MT.APPEND and m.dst == "b"]
    assert len(more) == 1


def test_probe_state_sends_one_append_until_answered() -> None:
    node, st = make_node()
    msgs = become_leader(node, st)
    assert [m.dst for m in msgs if m.type == MT.APPEND] == ["b", "c"]
    node.propose(b"x")
    node.propose(b"y")
    # Followers are still being probed (no answer yet): nothing more is sent to them.
    assert not [m for m in messages(node, st) if m.type == MT.APPEND]


def test_proposals_are_batched_into_one_append_per_follower() -> None:
    node, st = make_node()
    ack_all(node, st, become_leader(node, st))
    for k in range(5):
        node.propose(f"v{k}".encode())
    apps = [m for m in messages(node, st) if m.type == MT.APPEND]
    assert sorted(m.dst for m in apps) == ["b", "c"]
    assert all([e.data for e in m.entries] == [f"v{k}".encode() for k in range(5)] for m in apps)


def test_flow_control_holds_back_proposals_until_the_window_opens() -> None:
    node, st = make_node(max_inflight_msgs=1)
    ack_all(node, st, become_leader(node, st))
    node.propose(b"first")
    messages(node, st)
    for k in range(5):
        node.propose(f"v{k}".encode())
    apps = [m for m in messages(node, st) if m.type == MT.APPEND]
    assert not apps, "sent beyond max_inflight_msgs"
    # b acknowledges "first": its window opens and the five waiting entries go out in one append.
    node.step(Message(MT.APPEND_RESP, "b", "a", node.term, index=node.last_index - 5))
    rest = [m for m in messages(node, st) if m.type == MT.APPEND]
    assert [m.dst for m in rest] == ["b"]
    assert [e.data for e in rest[0].entries] == [f"v{k}".encode() for k in range(5)]


def test_commit_index_rides_on_the_next_message_not_an_extra_round() -> None:
    node, st = make_node()
    ack_all(node, st, become_leader(node, st))
    node.tick()
    messages(node, st)
    index = node.propose(b"x")
    apps = [m for m in messages(node, st) if m.type == MT.APPEND]
    for m in apps:
        node.step(Message(MT.APPEND_RESP, m.dst, "a", node.term, index=index))
    assert node.commit_index == index
    assert not [m for m in messages(node, st) if m.type == MT.APPEND]
    node.tick()
    beats = [m for m in messages(node, st) if m.type == MT.HEARTBEAT]
    assert sorted((m.dst, m.commit) for m in beats) == [("b", index), ("c", index)]


def test_second_conf_change_while_one_is_pending_is_dropped() -> None:
    node, st = make_node()
    ack_all(node, st, become_leader(node, st))
    node.propose_conf_change(ConfChange("add", "d"))
    assert node.voters == {"a", "b", "c", "d"}
    with pytest.raises(ProposalDropped):
        node.propose_conf_change(ConfChange("remove", "b"))


def test_new_leader_waits_for_its_noop_before_conf_changes() -> None:
    node, st = make_node()
    become_leader(node, st)
    with pytest.raises(ProposalDropped):
        node.propose_conf_change(ConfChange("add", "d"))


def test_leader_read_index_needs_a_heartbeat_quorum() -> None:
    node, st = make_node()
    ack_all(node, st, become_leader(node, st))
    node.read_index(b"q")
    beats = [m for m in messages(node, st) if m.type == MT.HEARTBEAT]
    assert len(beats) == 2 and all(m.context for m in beats)
    rds = handle(node, st)
    assert not [s for rd in rds for s in rd.read_states]
    node.step(Message(MT.HEARTBEAT_RESP, "b", "a", node.term, context=beats[0].context))
    rds = handle(node, st)
    assert [(s.index, s.ctx) for rd in rds for s in rd.read_states] == [(node.commit_index, b"q")]


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        RaftNode(RaftConfig(node_id="a", peers=["a"], election_ticks=1), make_node()[1], random.Random(0))


def test_snapshot_matching_our_log_only_acknowledges_the_snapshot_index() -> None:
    # Entries after the snapshot's index may be from a deposed leader: claiming them as matched would let
    # the new leader count them towards a commit.
    node, st = make_node(log_terms=[1, 1, 2, 2], term=2)
    handle(node, st)
    node.step(Message(MT.SNAPSHOT, "b", "a", 3, snapshot=Snapshot(2, 1, frozenset("abc"), b"s")))
    resp = [m for m in messages(node, st) if m.type == MT.APPEND_RESP]
    assert [(m.index, m.reject) for m in resp] == [(2, False)]
    assert node.commit_index == 2 and node.last_index == 4


def test_config_entry_takes_effect_when_appended_and_is_undone_by_truncation() -> None:
    node, st = make_node(term=1)
    noop = Entry(1, 1, "noop", encode_noop({"a", "b", "c"}))
    change = Entry(1, 2, "config", encode_conf_change(ConfChange("add", "d"), {"a", "b", "c", "d"}))
    node.step(Message(MT.APPEND, "b", "a", 1, index=0, log_term=0, entries=(noop, change)))
    handle(node, st)
    assert node.voters == {"a", "b", "c", "d"}, "a config entry applies as soon as it is in the log"
    # A new leader that never had the change overwrites it: the old configuration is back.
    node.step(Message(MT.APPEND, "c", "a", 2, index=1, log_term=1, entries=(Entry(2, 2, "normal", b"x"),)))
    handle(node, st)
    assert node.voters == {"a", "b", "c"}
    restarted = RaftNode(node.config, st, random.Random(5))
    assert restarted.voters == {"a", "b", "c"}


def test_removed_node_does_not_campaign() -> None:
    node, st = make_node(term=1)
    noop = Entry(1, 1, "noop", encode_noop({"a", "b", "c"}))
    change = Entry(1, 2, "config", encode_conf_change(ConfChange("remove", "a"), {"b", "c"}))
    node.step(Message(MT.APPEND, "b", "a", 1, index=0, log_term=0, entries=(noop, change), commit=2))
    handle(node, st)
    for _ in range(100):
        node.tick()
    assert node.role == "follower" and node.term == 1
    node.step(Message(MT.TIMEOUT_NOW, "b", "a", 1))
    assert node.role == "follower"
