"""Raft consensus for DTF: a sans-IO core (``core``), its value types (``types``) and storages.

The core never touches sockets, clocks or threads; a driver feeds it ticks and messages and carries out
its ``Ready`` outputs (persist, send, apply, then ``advance``). ``storage.MemoryStorage`` is the
in-memory storage used by tests; ``log`` holds the durable one.
"""

from dtf_app.raft.core import RaftNode
from dtf_app.raft.storage import LogStorage, MemoryStorage
from dtf_app.raft.types import (
    ConfChange,
    Entry,
    HardState,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    ReadState,
    Ready,
    Snapshot,
    voters_from_entry,
)

__all__ = [
    "ConfChange",
    "Entry",
    "HardState",
    "LogStorage",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotLeader",
    "ProposalDropped",
    "RaftConfig",
    "RaftNode",
    "ReadState",
    "Ready",
    "Snapshot",
    "voters_from_entry",
]
