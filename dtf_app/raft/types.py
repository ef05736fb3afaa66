"""Value types shared by the Raft core, its storages and its drivers.

Everything here is an immutable value (frozen dataclasses with slots) or an exception, so the core, the
in-memory storage, the durable log (``dtf_app/raft/log.py``) and the trio driver can pass them around
without copying.

Voter-set encoding (read by both storages through :func:`voters_from_entry`):

* ``Entry.kind == 'noop'``: appended by every new leader as the first entry of its term. Its ``data`` is
  UTF-8 JSON ``{"voters": ["a", "b", ...]}`` -- the leader's full voter set at that point (sorted).
* ``Entry.kind == 'config'``: a single-server membership change. Its ``data`` is UTF-8 JSON
  ``{"op": "add"|"remove", "node_id": "x", "voters": [...]}`` where ``voters`` is the full voter set
  *after* the change (sorted), plus ``"context"`` when the change carries one: opaque application text
  committed atomically with the change (DTF puts the members' URLs there, like etcd's ConfChange.Context).
* ``Entry.kind == 'normal'``: application bytes, carries no configuration.

A storage therefore knows the voter set as of any index by scanning back to the latest noop/config entry
at or below it (or falling back to its snapshot's voters). The core applies a config entry's voter set as
soon as the entry is appended to its log (the single-server-change rule of the Raft thesis, section 4.1),
so "latest config entry in the log" is also the core's own rule.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

EntryKind = Literal["normal", "noop", "config"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. Indices start at 1."""

    term: int
    index: int
    kind: EntryKind = "normal"
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Application state as of ``index`` (whose entry had ``term``) plus the voters at that index."""

    index: int
    term: int
    voters: frozenset[str]
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """Add or remove one voter; ``context`` is the application's, carried verbatim in the config entry."""

    op: Literal["add", "remove"]
    node_id: str
    context: str = ""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read barrier: once ``index`` is applied, a read for ``ctx`` may be served."""

    index: int
    ctx: bytes


class MessageType(enum.Enum):
    """Kinds of peer messages. Replies end in ``_RESP`` (see :func:`is_response`)."""

    PRE_VOTE = "pre_vote"
    PRE_VOTE_RESP = "pre_vote_resp"
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    APPEND = "append"
    APPEND_RESP = "append_resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat_resp"
    # Answered with APPEND_RESP (index = installed/known last index), as etcd does.
    SNAPSHOT = "snapshot"
    TIMEOUT_NOW = "timeout_now"
    # A follower forwards a client's read barrier to the leader; the leader answers with READ_INDEX_RESP.
    READ_INDEX = "read_index"
    READ_INDEX_RESP = "read_index_resp"
    # A follower forwards a transfer request to the leader (like etcd's MsgTransferLeader).
    TRANSFER_LEADER = "transfer_leader"


def is_response(mtype: MessageType) -> bool:
    """True for reply messages (those the classic lab does not count as RPCs)."""
    return mtype.name.endswith("_RESP")


@dataclass(frozen=True, slots=True)
class Message:
    """A message between two Raft nodes.

    Field use by type (unused fields keep their defaults):

    * PRE_VOTE / VOTE: ``index``/``log_term`` = candidate's last log index/term; ``context == b'transfer'``
      marks a campaign started by a leadership transfer (which bypasses the leader lease).
    * *_RESP to votes: ``reject``.
    * APPEND: ``index``/``log_term`` = index/term of the entry preceding ``entries``; ``commit``.
    * APPEND_RESP: ``index`` = last index now known to match (accept) or the rejected ``index``;
      ``reject_hint``/``log_term`` = follower's hint for fast back-off (etcd's RejectHint/LogTerm).
    * HEARTBEAT: ``commit`` (min of leader commit and follower match), ``context`` = read-index round.
    * SNAPSHOT: ``snapshot``; answered by APPEND_RESP.
    * HEARTBEAT_RESP: ``context`` echoed.
    * READ_INDEX: ``context`` = client ctx. READ_INDEX_RESP: ``index`` (read index), ``context``.
    * TRANSFER_LEADER: ``context`` = target node id (UTF-8).
    """

    type: MessageType
    src: str
    dst: str
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class Ready:
    """Output of :meth:`RaftNode.ready`: persist, then send, then apply, then ``advance``."""

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    must_sync: bool = False


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Static configuration of one node. ``peers`` lists all voters, this node included."""

    node_id: str
    peers: Sequence[str] | frozenset[str]
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_msg: int = 256
    max_inflight_msgs: int = 256


class NotLeader(Exception):
    """Raised by proposals on a non-leader; ``leader_id`` names the leader when known."""

    def __init__(self, leader_id: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDropped(Exception):
    """The proposal was not accepted (leadership transfer in progress, conf change pending, ...)."""


# --- config entry encoding ------------------------------------------------------------------------------


def encode_noop(voters: frozenset[str] | set[str]) -> bytes:
    """Data of a leader's noop entry: the voter set at the start of its term."""
    return json.dumps({"voters": sorted(voters)}, separators=(",", ":")).encode()


def encode_conf_change(change: ConfChange, voters_after: frozenset[str] | set[str]) -> bytes:
    """Data of a config entry: the change and the full voter set after it."""
    body: dict[str, object] = {"op": change.op, "node_id": change.node_id, "voters": sorted(voters_after)}
    if change.context:
        body["context"] = change.context
    return json.dumps(body, separators=(",", ":")).encode()


def conf_change_from_entry(entry: Entry) -> ConfChange | None:
    """The change carried by a config entry, or None for other kinds."""
    if entry.kind != "config":
        return None
    body = json.loads(entry.data.decode())
    return ConfChange(op=body["op"], node_id=body["node_id"], context=body.get("context") or "")


def voters_from_entry(entry: Entry) -> frozenset[str] | None:
    """The voter set carried by a noop or config entry (see module docstring), else None.

    A noop with empty data (e.g. written by an older encoder) carries no configuration.
    """
    if entry.kind == "normal" or not entry.data:
        return None
    body = json.loads(entry.data.decode())
    voters = body.get("voters")
    if voters is None:
        return None
    return frozenset(voters)
