"""Leader-side bookkeeping for ReadIndex (Raft thesis §6.4; etcd's ``read_only.go``).

A read barrier is answered with the commit index at the time it was asked, once a heartbeat round sent
after it has been acknowledged by a quorum (so the leader knows it was still the leader). A new leader
first has to commit an entry of its own term to know the real commit index: until then requests are
deferred, never refused.
"""

from __future__ import annotations


class ReadRequest:
    """One pending read: the index to answer with, the client's ctx, who asked, and who has acked."""

    __slots__ = ("index", "ctx", "origin", "round", "acks")

    def __init__(self, index: int, ctx: bytes, origin: str, round_no: int, leader: str) -> None:
        self.index = index
        self.ctx = ctx
        self.origin = origin
        self.round = round_no
        self.acks = {leader}


class ReadOnly:
    """Deferred and pending read requests of one leadership term."""

    def __init__(self) -> None:
        self.deferred: list[tuple[bytes, str]] = []
        self.pending: list[ReadRequest] = []
        self.round = 0

    def reset(self) -> None:
        """Leadership changed hands: every unanswered request is dropped (clients retry)."""
        self.deferred = []
        self.pending = []

    def defer(self, ctx: bytes, origin: str) -> None:
        self.deferred.append((ctx, origin))

    def take_deferred(self) -> list[tuple[bytes, str]]:
        deferred, self.deferred = self.deferred, []
        return deferred

    def add(self, index: int, ctx: bytes, origin: str, leader: str) -> bytes:
        """Register a read at ``index``; returns the heartbeat context of the round confirming it."""
        self.round += 1
        self.pending.append(ReadRequest(index, ctx, origin, self.round, leader))
        return str(self.round).encode()

    def ack(self, voter: str, context: bytes, voters: frozenset[str]) -> list[ReadRequest]:
        """``voter`` answered the heartbeat round ``context``; returns the requests now confirmed."""
        if voter not in voters or not context.isdigit():
            return []
        round_no = int(context)
        quorum = len(voters) // 2 + 1
        confirmed = 0
        for i, req in enumerate(self.pending):
            if req.round <= round_no:
                req.acks.add(voter)
                if len(req.acks & voters) >= quorum:
                    confirmed = i + 1
        # Confirming a round also confirms every request registered before it.
        done = self.pending[:confirmed]
        del self.pending[:confirmed]
        return done
