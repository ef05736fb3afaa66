"""Raft peer transport: messages batched over one persistent, authenticated websocket per peer.

Each node dials every other node once (``PeerSender``) and streams its messages to it as binary frames;
the receiving side (``InboundSession``, served by the coordinator's ``WS /raft`` route on the API port, or
by :func:`serve_websocket_listener` in tests) only receives. Replies travel on the replier's own outbound
connection, as in etcd: every direction is one ordered stream, and a slow or dead peer never blocks another.

Authentication (see ``codec.py`` for the frame layouts): the receiver opens with a fresh random challenge;
the sender proves it holds the cluster secret with an HMAC over the challenge and both node ids, and MACs
every data frame over (challenge, sequence number, payload). The receiver refuses, counts and drops:

* ``forged``: a bad MAC, a hello for another node, a sender that is not a member, or an authenticated
  peer whose messages claim another source or destination;
* ``replayed``: a frame whose sequence number is not the next one (a captured frame re-sent on the same
  connection; on any other connection its MAC is wrong, so it counts as forged);
* ``malformed``: frames that do not decode;
* ``misconfigured``: a correctly authenticated peer whose *bootstrap* member list differs from ours. Both
  sides then stop (:class:`ClusterMisconfigured`, exit code 2): two fresh nodes that disagree on the
  membership must not each count votes in a different cluster;
* ``not_member``: a correctly authenticated peer that is not (or no longer) a member, once the membership
  is replicated: a node removed at runtime, or one started before ``dtf cluster add`` named it. It is
  refused (close code 4410), never fatal: the refused side learns that it is not a member.

The members fingerprint in the hello expresses an *opinion* only while a node knows nothing but its
static ``--peers`` list. Once the cluster has formed (``set_replicated``: the coordinator calls it when
it first sees a leader or starts over a non-empty log, and the membership is then replicated at the first
election and with every ``dtf cluster add|remove``), the node
sends an all-zero fingerprint and compares none: membership changes one node at a time, so members
legitimately hold different lists while a change is in progress, and the replicated configuration, not
the startup list, decides who is a member. ``add_peer``/``remove_peer`` follow the configuration at
runtime.

Messages are best-effort, as Raft expects: a full queue or a broken connection drops them (counted), and
the core's retries (heartbeats, append probes) recover. TLS: a peer URL with ``https://`` is dialled as
``wss://`` with the given SSL context.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from dtf_app.raft import codec
from dtf_app.raft.types import Message

__all__ = ["CLOSE_MISCONFIGURED", "CLOSE_NOT_MEMBER", "InboundSession", "PeerAuthError", "PeerSender", "Transport",
           "TransportStats", "close_code", "raft_url"]

log = logging.getLogger("dtf.raft.transport")

RAFT_PATH = "/raft"
QUEUE_LIMIT = 10_000  # messages waiting for one peer; beyond this the newest are dropped
MAX_FRAME_BYTES = 256 * 1024 * 1024  # snapshots travel in one message
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 1.0


CLOSE_MISCONFIGURED = 4409
CLOSE_NOT_MEMBER = 4410
NO_OPINION = b"\x00" * 32


class ClusterMisconfigured(Exception):
    """The members disagree about who is in the cluster; the node stops with one clear line."""

    exit_code = 2


class PeerAuthError(Exception):
    """A peer frame refused; ``kind`` is ``forged``, ``replayed``, ``malformed``, ``misconfigured`` or
    ``not_member``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class TransportStats:
    """Counters for ``/metrics``."""

    frames_in: int = 0
    messages_in: int = 0
    frames_out: int = 0
    messages_out: int = 0
    dropped_in: dict[str, int] = field(default_factory=lambda: {"forged": 0, "replayed": 0, "malformed": 0,
                                                                  "misconfigured": 0, "not_member": 0})
    dropped_out: int = 0
    connect_failures: int = 0

    def refused(self, kind: str) -> None:
        self.dropped_in[kind] = self.dropped_in.get(kind, 0) + 1


def raft_url(base_url: str) -> str:
    """The websocket URL of a node's Raft endpoint from its advertised HTTP(S) URL."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + RAFT_PATH
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):] + RAFT_PATH
    return base + RAFT_PATH


class InboundSession:
    """The receiving side of one peer connection: challenge, hello, then data frames."""

    def __init__(self, secret: bytes, node_id: str, members: Callable[[], Collection[str]],
                 fingerprint: bytes | None = None) -> None:
        # ``fingerprint``: this node's bootstrap opinion, or None once its membership is replicated.
        self._secret = secret
        self._node_id = node_id
        self._members = members
        self._fingerprint = fingerprint
        self.challenge = secrets.token_bytes(codec.CHALLENGE_BYTES)
        self.peer: str | None = None
        self.claimed: str | None = None  # the hello's sender once its MAC checked out
        self._next_seq = 1

    def opening_frame(self) -> bytes:
        return codec.challenge_frame(self.challenge, self._node_id)

    def accept(self, frame: bytes) -> list[Message]:
        """Verify one frame; the messages it carries (none for the hello). Raises PeerAuthError."""
        try:
            if self.peer is None:
                sender, receiver, fingerprint, tag = codec.parse_hello(frame)
            else:
                seq, payload, tag = codec.parse_data(frame)
        except codec.CodecError as exc:
            raise PeerAuthError("malformed", f"undecodable frame: {exc}") from None
        if self.peer is None:
            expected = codec.mac(self._secret, b"hello", self.challenge, sender.encode(), receiver.encode(),
                                 fingerprint)
            if not secrets.compare_digest(tag, expected):
                raise PeerAuthError("forged", f"hello from {sender!r} has a bad MAC (wrong cluster secret?)")
            self.claimed = sender
            if receiver != self._node_id:
                raise PeerAuthError("forged", f"hello for node {receiver!r} reached node {self._node_id!r}")
            both_bootstrap = self._fingerprint is not None and fingerprint != NO_OPINION
            if sender not in self._members():
                if both_bootstrap:
                    raise PeerAuthError("misconfigured", f"{sender!r}, which holds the cluster secret, is not in this "
                                        f"node's member list ({', '.join(sorted(self._members()))}): the nodes were "
                                        "given different peers")
                raise PeerAuthError("not_member", f"{sender!r} is not in this node's member list "
                                    f"({', '.join(sorted([self._node_id, *self._members()]))}): not a member (yet, "
                                    "or any more)")
            if both_bootstrap and fingerprint != self._fingerprint:
                raise PeerAuthError("misconfigured", f"{sender!r} was given a different member list than this "
                                                     f"node ({', '.join(sorted(self._members()))}): the peers disagree")
            self.peer = sender
            return []
        expected = codec.mac(self._secret, b"data", self.challenge, codec._U64.pack(seq), payload)
        if not secrets.compare_digest(tag, expected):
            raise PeerAuthError("forged", f"frame from {self.peer!r} has a bad MAC")
        if self.peer not in self._members():
            # Removed while connected: its next frame ends the connection.
            raise PeerAuthError("not_member", f"{self.peer!r} is no longer a member of this cluster")
        if seq != self._next_seq:
            raise PeerAuthError("replayed", f"frame from {self.peer!r} has sequence {seq}, expected {self._next_seq}")
        self._next_seq += 1
        try:
            messages = codec.decode_messages(payload)
        except codec.CodecError as exc:
            raise PeerAuthError("malformed", f"frame from {self.peer!r}: {exc}") from None
        for msg in messages:
            if msg.src != self.peer or msg.dst != self._node_id:
                raise PeerAuthError("forged", f"{self.peer!r} sent a message from {msg.src!r} to {msg.dst!r}")
        return messages


class PeerSender:
    """The outbound stream to one peer: a queue, and a task that keeps a connection and drains it."""

    def __init__(self, node_id: str, peer_id: str, url: str, secret: bytes, stats: TransportStats, *,
                 ssl_context: ssl.SSLContext | None = None, queue_limit: int = QUEUE_LIMIT,
                 fingerprint: bytes | Callable[[], bytes] = NO_OPINION,
                 on_fatal: Callable[[str], None] | None = None,
                 on_not_member: Callable[[str, str], None] | None = None) -> None:
        self.node_id = node_id
        self.peer_id = peer_id
        self.url = url
        self._secret = secret
        self._stats = stats
        self._ssl = ssl_context
        self._queue: deque[Message] = deque()
        self._limit = queue_limit
        self._wakeup = trio.Event()
        self.connected = False
        self._warned: str | None = None  # the failure last logged: a new kind of failure is logged again
        self._fingerprint = fingerprint
        self._on_fatal = on_fatal
        self._on_not_member = on_not_member
        self._stopped = False

    def stop(self) -> None:
        """End this stream (the peer left the cluster); its task returns at its next wake-up."""
        self._stopped = True
        self._queue.clear()
        self._wakeup.set()

    def send(self, messages: list[Message]) -> None:
        if self._stopped:
            return
        room = self._limit - len(self._queue)
        if room < len(messages):
            self._stats.dropped_out += len(messages) - max(room, 0)
            messages = messages[:max(room, 0)]
        self._queue.extend(messages)
        self._wakeup.set()

    async def run(self) -> None:
        from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

        delay = RECONNECT_MIN_S
        target = raft_url(self.url)
        while not self._stopped:
            try:
                async with open_websocket_url(target, ssl_context=self._ssl, connect_timeout=5,
                                              disconnect_timeout=1,
                                              message_queue_size=4, max_message_size=MAX_FRAME_BYTES) as ws:
                    challenge, receiver = codec.parse_challenge(await ws.get_message())
                    if receiver != self.peer_id:
                        raise PeerAuthError("forged", f"{target} answers as node {receiver!r}, "
                                                      f"not {self.peer_id!r}: check the peer list")
                    fingerprint = self._fingerprint() if callable(self._fingerprint) else self._fingerprint
                    await ws.send_message(codec.hello_frame(self._secret, challenge, self.node_id, self.peer_id,
                                                            fingerprint))
                    self.connected, self._warned, delay = True, None, RECONNECT_MIN_S
                    log.debug("connected to peer %s at %s", self.peer_id, target)
                    await self._stream(ws, challenge)
            except ConnectionClosed as exc:
                reason = exc.reason
                if reason is not None and reason.code == CLOSE_MISCONFIGURED and self._on_fatal is not None:
                    self._on_fatal(f"peer {self.peer_id} at {target} refused this node: {reason.reason}")
                if reason is not None and reason.code == CLOSE_NOT_MEMBER:
                    delay = RECONNECT_MAX_S  # it will not change its mind soon
                    if self._on_not_member is not None:
                        self._on_not_member(self.peer_id, reason.reason or "not a member")
                self._stats.connect_failures += 1
            except (OSError, HandshakeError, trio.TooSlowError, codec.CodecError, PeerAuthError) as exc:
                self._stats.connect_failures += 1
                why = _describe(exc)
                if self._ssl is not None and isinstance(exc, HandshakeError | trio.TooSlowError):
                    # A refused certificate shows up as a stalled websocket handshake: find out why.
                    why = await self._tls_failure(target) or why
                if why != self._warned:
                    # A refused certificate will not cure itself: an operator must see it.
                    log.log(logging.WARNING if why.startswith("TLS") else logging.INFO,
                            "peer %s at %s unreachable (%s); retrying", self.peer_id, target, why)
                    self._warned = why
            finally:
                self.connected = False
            # Whatever was queued for a dead connection is stale by the time it is back: Raft resends.
            self._stats.dropped_out += len(self._queue)
            self._queue.clear()
            await trio.sleep(delay)
            delay = min(RECONNECT_MAX_S, delay * 2)

    async def _tls_failure(self, target: str) -> str | None:
        """The TLS error of a bare handshake with the peer (a certificate it cannot verify), if any."""
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        with trio.move_on_after(5):
            try:
                stream = await trio.open_ssl_over_tcp_stream(parts.hostname or "", parts.port or 443,
                                                             ssl_context=self._ssl)
                try:
                    await stream.do_handshake()
                finally:
                    await stream.aclose()
            except (OSError, trio.BrokenResourceError) as exc:
                cause = exc.__cause__ or exc.__context__
                if isinstance(exc, ssl.SSLError) or isinstance(cause, ssl.SSLError):
                    return f"TLS: {cause if isinstance(cause, ssl.SSLError) else exc}"
        return None

    async def _stream(self, ws: Any, challenge: bytes) -> None:
        seq = 0
        while not self._stopped:
            if not self._queue:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            batch = list(self._queue)
            self._queue.clear()
            seq += 1
            frame = codec.data_frame(self._secret, challenge, seq, codec.encode_messages(batch))
            await ws.send_message(frame)
            self._stats.frames_out += 1
            self._stats.messages_out += len(batch)


def _describe(exc: BaseException) -> str:
    """Why a connection failed, in words: a handshake error's own text is often empty, its cause's is
    what matters (a refused TLS certificate, a reset connection)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        text = str(getattr(exc, "reason", None) or exc)
        if text:
            return f"{type(exc).__name__}: {text}" if len(seen) > 1 else text
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return type(seen[0]).__name__


class Transport:
    """All of a node's peer streams, plus the inbound handler the API route calls."""

    def __init__(self, node_id: str, peers: dict[str, str], secret: bytes,
                 deliver: Callable[[list[Message]], None], *, ssl_context: ssl.SSLContext | None = None) -> None:
        if not secret:
            raise ValueError("the cluster secret must not be empty")
        self.node_id = node_id
        self.secret = secret
        self.deliver = deliver
        self.stats = TransportStats()
        self._ssl = ssl_context
        self.peers = {pid: url for pid, url in peers.items() if pid != node_id}
        # This node's bootstrap opinion of the membership; None once the membership is replicated.
        self.fingerprint: bytes | None = codec.members_fingerprint([node_id, *self.peers])
        self.fatal: str | None = None
        # Called with (peer id, reason) when a peer refuses this node as not a member.
        self.on_not_member: Callable[[str, str], None] | None = None
        self._fatal_event = trio.Event()
        self.senders = {pid: self._sender(pid, url) for pid, url in self.peers.items()}
        self._nursery: trio.Nursery | None = None
        self._told_not_member: set[str] = set()

    def _sender(self, peer_id: str, url: str) -> PeerSender:
        return PeerSender(self.node_id, peer_id, url, self.secret, self.stats, ssl_context=self._ssl,
                          fingerprint=self._hello_fingerprint, on_fatal=self._set_fatal,
                          on_not_member=self._not_member)

    def _hello_fingerprint(self) -> bytes:
        return self.fingerprint if self.fingerprint is not None else NO_OPINION

    def _not_member(self, peer_id: str, reason: str) -> None:
        if self.on_not_member is not None:
            self.on_not_member(peer_id, reason)

    def set_replicated(self) -> None:
        """The membership is now replicated: stop holding (and comparing) the bootstrap opinion."""
        self.fingerprint = None

    def _set_fatal(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
            self._fatal_event.set()

    def members(self) -> Collection[str]:
        return self.peers.keys()

    def send(self, messages: list[Message]) -> None:
        """Queue messages for their destinations (never blocks; unknown destinations are dropped)."""
        by_peer: dict[str, list[Message]] = {}
        for msg in messages:
            by_peer.setdefault(msg.dst, []).append(msg)
        for pid, msgs in by_peer.items():
            sender = self.senders.get(pid)
            if sender is None:
                self.stats.dropped_out += len(msgs)
            else:
                sender.send(msgs)

    def add_peer(self, peer_id: str, url: str) -> None:
        """Start streaming to a new member (after a membership change); a new URL replaces the old stream."""
        if peer_id == self.node_id:
            return
        old = self.senders.get(peer_id)
        if old is not None:
            if old.url == url:
                return
            old.stop()
        self.peers[peer_id] = url
        sender = self._sender(peer_id, url)
        self.senders[peer_id] = sender
        if self._nursery is not None:
            self._nursery.start_soon(sender.run)

    def remove_peer(self, peer_id: str) -> None:
        """Stop streaming to a member that left; its inbound connection is refused from its next frame."""
        self.peers.pop(peer_id, None)
        sender = self.senders.pop(peer_id, None)
        if sender is not None:
            sender.stop()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for sender in self.senders.values():
                nursery.start_soon(sender.run)
            task_status.started()
            await self._fatal_event.wait()
            raise ClusterMisconfigured(f"misconfigured cluster: {self.fatal}")

    async def serve_connection(self, receive: Callable[[], Awaitable[bytes | str]],
                               send: Callable[[bytes], Awaitable[None]]) -> str | None:
        """Handle one inbound peer connection until it closes or misbehaves.

        Returns None when the peer went away, or the reason it was refused (the caller then closes the
        socket). Refusals are counted in ``stats.dropped_in``.
        """
        session = InboundSession(self.secret, self.node_id, self.members, self.fingerprint)
        await send(session.opening_frame())
        while True:
            frame = await receive()
            if isinstance(frame, str):
                self.stats.refused("malformed")
                return "text frame on the raft stream"
            try:
                messages = session.accept(frame)
            except PeerAuthError as exc:
                self.stats.refused(exc.kind)
                who = session.peer or session.claimed or ""
                if exc.kind != "not_member" or who not in self._told_not_member:
                    # A removed node keeps dialling: say so once per node, count every time.
                    log.warning("refused peer traffic (%s): %s", exc.kind, exc)
                    if exc.kind == "not_member":
                        self._told_not_member.add(who)
                if exc.kind == "misconfigured":
                    self._set_fatal(str(exc))
                    return "misconfigured: " + str(exc)
                if exc.kind == "not_member":
                    return "not_member: " + str(exc)
                return str(exc)
            if messages:
                self.stats.frames_in += 1
                self.stats.messages_in += len(messages)
                self.deliver(messages)


def close_code(reason: str) -> int:
    """The websocket close code for a refusal returned by :meth:`Transport.serve_connection`."""
    if reason.startswith("misconfigured"):
        return CLOSE_MISCONFIGURED
    if reason.startswith("not_member"):
        return CLOSE_NOT_MEMBER
    return 4403


async def serve_websocket_listener(transport: Transport, host: str = "127.0.0.1", port: int = 0, *,
                                   task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A standalone websocket listener for the Raft endpoint (tests and tools; nodes use the API port)."""
    from trio_websocket import ConnectionClosed, serve_websocket

    async def handler(request: Any) -> None:
        ws = await request.accept()
        try:
            reason = await transport.serve_connection(ws.get_message, ws.send_message)
            if reason is not None:
                code = close_code(reason)
                await ws.aclose(code=code, reason=reason[:120])
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        listener = await nursery.start(
            partial(serve_websocket, handler, host, port, None, max_message_size=MAX_FRAME_BYTES))
        task_status.started(listener.port)
