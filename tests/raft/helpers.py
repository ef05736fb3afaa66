"""Helpers for unit tests that drive one RaftNode by hand (no simulator): build a node over a preloaded
MemoryStorage, run the application loop once, and fabricate peer messages."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from dtf_app.raft.core import Entry, HardState, Message, MessageType, RaftConfig, RaftNode, Ready
from dtf_app.raft.storage import MemoryStorage

MT = MessageType


def entries_with_terms(terms: Iterable[int], start: int = 1) -> list[Entry]:
    return [Entry(term=t, index=start + i, data=f"e{start + i}".encode()) for i, t in enumerate(terms)]


def make_node(
    node_id: str = "a",
    peers: Iterable[str] = ("a", "b", "c"),
    log_terms: Iterable[int] = (),
    term: int = 0,
    vote: str | None = None,
    commit: int = 0,
    seed: int = 1,
    **config: object,
) -> tuple[RaftNode, MemoryStorage]:
    storage = MemoryStorage()
    storage.append(entries_with_terms(log_terms))
    storage.set_hard_state(HardState(term, vote, commit))
    options: dict[str, object] = {"pre_vote": False, "check_quorum": False}
    options.update(config)
    cfg = RaftConfig(node_id=node_id, peers=tuple(peers), **options)  # type: ignore[arg-type]
    return RaftNode(cfg, storage, random.Random(seed)), storage


def handle(node: RaftNode, storage: MemoryStorage) -> list[Ready]:
    """Run the application loop until there is nothing ready; the Readys handled."""
    out = []
    while node.has_ready():
        rd = node.ready()
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        node.advance(rd)
        out.append(rd)
    return out


def messages(node: RaftNode, storage: MemoryStorage) -> list[Message]:
    return [m for rd in handle(node, storage) for m in rd.messages]


def committed(readys: list[Ready]) -> list[Entry]:
    return [e for rd in readys for e in rd.committed_entries]


def become_leader(node: RaftNode, storage: MemoryStorage) -> list[Message]:
    """Campaign (no pre-vote) and win with votes from every peer; returns the leader's first messages."""
    node.campaign()
    msgs = messages(node, storage)
    for m in msgs:
        if m.type == MT.VOTE:
            node.step(Message(MT.VOTE_RESP, m.dst, node.node_id, node.term))
    assert node.role == "leader"
    return messages(node, storage)


def ack_all(node: RaftNode, storage: MemoryStorage, msgs: list[Message]) -> list[Message]:
    """Answer each APPEND in ``msgs`` as an up-to-date follower would."""
    for m in msgs:
        if m.type == MT.APPEND:
            node.step(Message(MT.APPEND_RESP, m.dst, m.src, m.term, index=m.index + len(m.entries)))
    return messages(node, storage)


def pump_instant(nodes: dict[str, RaftNode], storages: dict[str, Any]) -> None:
    """The application loop over an instant, lossless network: persist (fsync where the storage can),
    send, advance, and deliver every message until no node has anything left to do."""
    queue: list[Message] = []
    while True:
        busy = False
        for node_id, node in nodes.items():
            while node.has_ready():
                busy = True
                rd = node.ready()
                storage = storages[node_id]
                if rd.snapshot is not None:
                    storage.apply_snapshot(rd.snapshot)
                if rd.entries:
                    storage.append(rd.entries)
                if rd.hard_state is not None:
                    storage.set_hard_state(rd.hard_state)
                if rd.must_sync and hasattr(storage, "sync"):
                    storage.sync()
                queue.extend(rd.messages)
                node.advance(rd)
        if not queue and not busy:
            return
        for msg in queue:
            nodes[msg.dst].step(msg)
        queue.clear()
