"""Runtime membership pieces without processes: replicated member URLs in the state, the config entry's
context, the transport's membership checks, a removed campaigner, and a restart with stale --peers."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from dtf_app.coordinator.replicator import Replicator
from dtf_app.coordinator.state import State
from dtf_app.raft import codec
from dtf_app.raft.core import RaftNode
from dtf_app.raft.log import DurableStorage
from dtf_app.raft.storage import MemoryStorage
from dtf_app.raft.transport import (
    CLOSE_MISCONFIGURED,
    CLOSE_NOT_MEMBER,
    InboundSession,
    PeerAuthError,
    Transport,
    close_code,
)
from dtf_app.raft.types import (
    ConfChange,
    Entry,
    RaftConfig,
    Snapshot,
    conf_change_from_entry,
    encode_conf_change,
    voters_from_entry,
)

SECRET = b"unit-test-cluster-secret-0123456789"
URLS = {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2", "c": "http://127.0.0.1:3", "d": "http://127.0.0.1:4"}


def test_set_members_bootstraps_once_and_change_members_follows_config_entries() -> None:
    state = State()
    abc = {k: URLS[k] for k in "abc"}
    result, _ = state.apply({"op": "SetMembers", "members": abc}, 5)
    assert result["changed"] and state.members == abc and state.members_index == 5
    # Once replicated, the bootstrap list never overrides it (a late or repeated SetMembers).
    result, _ = state.apply({"op": "SetMembers", "members": {"x": "http://x:1"}}, 6)
    assert result["changed"] is False and state.members == abc
    state.apply({"op": "SetNodeEnabled", "node_id": "c", "enabled": False}, 7)
    abd = {k: URLS[k] for k in "abd"}
    state.apply({"op": "ChangeMembers", "change": "add", "node_id": "d", "members": {**abc, "d": URLS["d"]}}, 8)
    result, _ = state.apply({"op": "ChangeMembers", "change": "remove", "node_id": "c", "members": abd}, 9)
    assert result == {"change": "remove", "node_id": "c", "members": abd}
    assert state.members == abd and state.members_index == 9 and "c" not in state.disabled_nodes
    # A snapshot carries them: a node catching up by snapshot knows every member's URL.
    again = State.restore(state.snapshot())
    assert again.members == abd and again.members_index == 9
    bad, _ = state.apply({"op": "ChangeMembers", "change": "add", "node_id": "e", "members": {}}, 10)
    assert "rejected" in bad["error"] and state.members == abd


def test_a_config_entry_carries_its_context_verbatim() -> None:
    context = json.dumps({"members": URLS})
    data = encode_conf_change(ConfChange("add", "d", context), frozenset("abcd"))
    entry = Entry(3, 10, "config", data)
    assert conf_change_from_entry(entry) == ConfChange("add", "d", context)
    assert voters_from_entry(entry) == frozenset("abcd")
    # Without a context the encoding is what it always was.
    plain = encode_conf_change(ConfChange("remove", "c"), frozenset("ab"))
    assert b"context" not in plain and conf_change_from_entry(Entry(3, 11, "config", plain)) == ConfChange("remove", "c")


def test_membership_checks_in_the_hello_follow_the_replicated_membership() -> None:
    mine = codec.members_fingerprint("abc")
    theirs = codec.members_fingerprint("abcd")
    # Both fresh, different lists: misconfigured (fatal), as before.
    fresh = InboundSession(SECRET, "b", lambda: {"a", "c"}, mine)
    with pytest.raises(PeerAuthError) as exc:
        fresh.accept(codec.hello_frame(SECRET, fresh.challenge, "a", "b", theirs))
    assert exc.value.kind == "misconfigured"
    # This node follows a replicated membership (no opinion): a joining node's longer list is fine...
    joined = InboundSession(SECRET, "b", lambda: {"a", "c", "d"}, None)
    assert joined.accept(codec.hello_frame(SECRET, joined.challenge, "d", "b", theirs)) == []
    # ...and a node that is not a member is refused, not fatal.
    stranger = InboundSession(SECRET, "b", lambda: {"a", "c"}, None)
    with pytest.raises(PeerAuthError) as exc:
        stranger.accept(codec.hello_frame(SECRET, stranger.challenge, "d", "b", theirs))
    assert exc.value.kind == "not_member" and stranger.claimed == "d"
    # A member removed while connected: its next frame is refused.
    members = {"a", "c"}
    live = InboundSession(SECRET, "b", lambda: members, None)
    live.accept(codec.hello_frame(SECRET, live.challenge, "a", "b"))
    members.discard("a")
    with pytest.raises(PeerAuthError) as exc:
        live.accept(codec.data_frame(SECRET, live.challenge, 1, codec.encode_messages([])))
    assert exc.value.kind == "not_member"
    assert close_code("not_member: x") == CLOSE_NOT_MEMBER and close_code("misconfigured: x") == CLOSE_MISCONFIGURED


def test_transport_adds_and_removes_peers_at_runtime() -> None:
    transport = Transport("a", {"a": URLS["a"], "b": URLS["b"]}, SECRET, lambda msgs: None)
    assert transport.fingerprint is not None
    transport.add_peer("d", URLS["d"])
    assert set(transport.senders) == {"b", "d"} and transport.peers["d"] == URLS["d"]
    old = transport.senders["d"]
    transport.add_peer("d", "http://127.0.0.1:44")  # a new URL replaces the stream
    assert transport.senders["d"] is not old and old._stopped
    transport.remove_peer("b")
    assert set(transport.senders) == {"d"} and "b" not in transport.members()
    transport.set_replicated()
    assert transport.fingerprint is None and transport._hello_fingerprint() == b"\x00" * 32


def test_a_removed_campaigner_goes_back_to_follower_and_stays_quiet() -> None:
    node = RaftNode(RaftConfig(node_id="a", peers=("a", "b", "c"), election_ticks=5), MemoryStorage(),
                    random.Random(1))
    for _ in range(20):
        node.tick()
        if node.role == "pre_candidate":
            break
    assert node.role == "pre_candidate"
    node.ready()
    node.can_campaign = False  # what the replicator does once it learns it was removed
    for _ in range(30):
        node.tick()
    assert node.role == "follower"
    assert not any(m.type.name.endswith("VOTE") for m in node.ready().messages)


def test_a_restart_uses_the_replicated_membership_over_stale_peers(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    state = State()
    state.apply({"op": "SetMembers", "members": {k: URLS[k] for k in "abc"}}, 1)
    state.apply({"op": "ChangeMembers", "change": "add", "node_id": "d", "members": URLS}, 2)
    abd = {k: URLS[k] for k in "abd"}
    state.apply({"op": "ChangeMembers", "change": "remove", "node_id": "c", "members": abd}, 3)
    storage = DurableStorage(tmp_path / "raft")
    storage.apply_snapshot(Snapshot(3, 1, frozenset("abd"), state.snapshot()))
    storage.close()

    caplog.set_level(logging.WARNING)
    rep = Replicator(tmp_path / "raft", State(), lambda *a: None, node_id="a",
                     peers={k: URLS[k] for k in "abc"}, secret=SECRET)
    rep.open()
    try:
        assert rep.voters == frozenset("abd") and rep.members() == abd
        assert set(rep.transport.peers) == {"b", "d"} and rep.transport.fingerprint is None
        assert "differs from the configured peers" in caplog.text and not rep.removed
    finally:
        rep.close()

    # The removed node, restarted with its old --peers, knows it is out and does not campaign.
    storage = DurableStorage(tmp_path / "c-raft")
    storage.apply_snapshot(Snapshot(3, 1, frozenset("abd"), state.snapshot()))
    storage.close()
    gone = Replicator(tmp_path / "c-raft", State(), lambda *a: None, node_id="c",
                      peers={k: URLS[k] for k in "abc"}, secret=SECRET)
    gone.open()
    try:
        assert gone.removed and gone.driver is not None and gone.driver.node.can_campaign is False
        assert "was removed from the cluster" in caplog.text
    finally:
        gone.close()


def test_a_peer_named_in_this_node_s_own_peers_is_dialed_at_that_url(tmp_path: Path) -> None:
    # The replicated map (the first leader's view) decides who is a member; this node's own --peers say
    # how it reaches them (here through proxies), and a member added at run time is dialed as replicated.
    state = State()
    state.apply({"op": "SetMembers", "members": {k: URLS[k] for k in "abc"}}, 1)
    state.apply({"op": "ChangeMembers", "change": "add", "node_id": "d", "members": URLS}, 2)
    storage = DurableStorage(tmp_path / "raft")
    storage.apply_snapshot(Snapshot(2, 1, frozenset("abcd"), state.snapshot()))
    storage.close()
    proxies = {"a": URLS["a"], "b": "http://127.0.0.1:9002", "c": "http://127.0.0.1:9003"}
    rep = Replicator(tmp_path / "raft", State(), lambda *a: None, node_id="a", peers=proxies, secret=SECRET)
    rep.open()
    try:
        assert rep.members() == URLS
        assert rep.transport.peers == {"b": proxies["b"], "c": proxies["c"], "d": URLS["d"]}
    finally:
        rep.close()


@pytest.mark.parametrize(("args", "fragment"), [
    (["cluster", "add", "bad id", "http://127.0.0.1:1"], "ID must be 1-128 characters"),
    (["cluster", "add", "c4", "ftp://127.0.0.1:1"], "must be an http:// or https:// URL"),
    (["cluster", "add", "c4", "http://127.0.0.1:1", "--wait", "-1"], "--wait must be 0 or more"),
    (["cluster", "remove", "bad/id"], "ID must be 1-128 characters"),
])
def test_cluster_add_and_remove_refuse_bad_input_with_exit_2(args: list[str], fragment: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dtf_app", *args, "--coordinator", "http://127.0.0.1:9",
                           "--api-key", "k"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert fragment in done.stderr and "Traceback" not in done.stderr
