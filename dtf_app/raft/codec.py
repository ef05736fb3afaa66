"""Binary encoding of Raft peer messages, and the authenticated frames that carry them.

Peer traffic is hot (heartbeats every 50 ms, appends carrying thousands of entries), so messages are
packed with :mod:`struct` rather than JSON: no base64 for entry data, no per-field names. The decoder is
strict: a frame that is truncated, has trailing bytes, an unknown message type or absurd lengths raises
:class:`CodecError`, never anything else, so a peer (or an attacker) cannot crash the receiver.

Frames (see ``transport.py`` for the handshake that produces ``challenge``)::

    challenge frame  (receiver -> sender, once per connection)
        b"DTFRC1" | challenge (16 bytes) | receiver node id (u16 length + UTF-8)
    hello frame      (sender -> receiver, once per connection)
        b"DTFRH1" | sender id | receiver id | members fingerprint (32) | mac(32)
            mac = HMAC-SHA256(secret, b"hello" | challenge | sender id | receiver id | fingerprint)
            fingerprint = SHA-256 of the sender's sorted member ids: nodes that disagree on the membership
            refuse each other (a misconfigured cluster), instead of electing leaders of different clusters
    data frame       (sender -> receiver)
        b"DTFRD1" | seq (u64) | payload | mac(32)
            mac = HMAC-SHA256(secret, b"data" | challenge | seq | payload)
            payload = u32 count, then that many encoded messages

Replay protection comes from binding every MAC to the receiver's fresh per-connection ``challenge`` and to
a strictly increasing ``seq``: a captured frame re-sent on another connection fails its MAC, re-sent on the
same connection fails the sequence check.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable

from dtf_app.raft.types import Entry, Message, MessageType, Snapshot

__all__ = [
    "CHALLENGE_BYTES",
    "CodecError",
    "decode_messages",
    "encode_messages",
    "mac",
]

CHALLENGE_BYTES = 16
MAC_BYTES = 32
CHALLENGE_MAGIC = b"DTFRC1"
HELLO_MAGIC = b"DTFRH1"
DATA_MAGIC = b"DTFRD1"

# Bounds that no legitimate message comes near; they keep a hostile length field from allocating gigabytes.
MAX_MESSAGES_PER_FRAME = 1_000_000
MAX_ENTRIES_PER_MESSAGE = 1_000_000
MAX_VOTERS = 10_000
MAX_ID_BYTES = 1_024

_TYPES = list(MessageType)
_TYPE_CODES = {t: i for i, t in enumerate(_TYPES)}
_KINDS = ("normal", "noop", "config")
_KIND_CODES = {k: i for i, k in enumerate(_KINDS)}

# type, term, log_term, index, commit, reject_hint, reject, has_snapshot, n_entries
_MSG_HEAD = struct.Struct("<BQQQQQBBI")
_ENTRY_HEAD = struct.Struct("<QQBI")  # term, index, kind, data length
_SNAP_HEAD = struct.Struct("<QQI")  # index, term, voter count
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class CodecError(ValueError):
    """A frame or message that does not decode: malformed, truncated, or with trailing bytes."""


def mac(secret: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 over the concatenation of ``parts`` (each length-prefixed, so parts cannot shift)."""
    h = hmac.new(secret, digestmod=hashlib.sha256)
    for part in parts:
        h.update(_U32.pack(len(part)))
        h.update(part)
    return h.digest()


# --- writing ---------------------------------------------------------------------------------------------


def _put_str(out: list[bytes], text: str) -> None:
    raw = text.encode()
    out.append(_U16.pack(len(raw)))
    out.append(raw)


def _put_bytes(out: list[bytes], raw: bytes) -> None:
    out.append(_U32.pack(len(raw)))
    out.append(raw)


def _encode_one(out: list[bytes], msg: Message) -> None:
    out.append(_MSG_HEAD.pack(_TYPE_CODES[msg.type], msg.term, msg.log_term, msg.index, msg.commit,
                              msg.reject_hint, 1 if msg.reject else 0, 1 if msg.snapshot is not None else 0,
                              len(msg.entries)))
    _put_str(out, msg.src)
    _put_str(out, msg.dst)
    _put_bytes(out, msg.context)
    for entry in msg.entries:
        out.append(_ENTRY_HEAD.pack(entry.term, entry.index, _KIND_CODES[entry.kind], len(entry.data)))
        out.append(entry.data)
    snap = msg.snapshot
    if snap is not None:
        voters = sorted(snap.voters)
        out.append(_SNAP_HEAD.pack(snap.index, snap.term, len(voters)))
        for voter in voters:
            _put_str(out, voter)
        _put_bytes(out, snap.data)


def encode_messages(messages: list[Message]) -> bytes:
    """Pack messages into one payload (u32 count, then each message)."""
    out: list[bytes] = [_U32.pack(len(messages))]
    for msg in messages:
        _encode_one(out, msg)
    return b"".join(out)


def challenge_frame(challenge: bytes, receiver_id: str) -> bytes:
    out = [CHALLENGE_MAGIC, challenge]
    _put_str(out, receiver_id)
    return b"".join(out)


def members_fingerprint(members: Iterable[str]) -> bytes:
    """What two nodes compare to agree that they belong to the same cluster."""
    return hashlib.sha256("\n".join(sorted(members)).encode()).digest()


def hello_frame(secret: bytes, challenge: bytes, sender_id: str, receiver_id: str,
                fingerprint: bytes = b"\x00" * 32) -> bytes:
    out = [HELLO_MAGIC]
    _put_str(out, sender_id)
    _put_str(out, receiver_id)
    out.append(fingerprint)
    out.append(mac(secret, b"hello", challenge, sender_id.encode(), receiver_id.encode(), fingerprint))
    return b"".join(out)


def data_frame(secret: bytes, challenge: bytes, seq: int, payload: bytes) -> bytes:
    seq_raw = _U64.pack(seq)
    return b"".join((DATA_MAGIC, seq_raw, payload, mac(secret, b"data", challenge, seq_raw, payload)))


# --- reading ---------------------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise CodecError(f"truncated: wanted {n} bytes at offset {self.pos} of {len(self.buf)}")
        view = self.buf[self.pos:end]
        self.pos = end
        return view

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))

    def string(self) -> str:
        (n,) = self.unpack(_U16)
        if n > MAX_ID_BYTES:
            raise CodecError(f"string of {n} bytes is too long")
        try:
            return bytes(self.take(n)).decode()
        except UnicodeDecodeError as exc:
            raise CodecError(f"string is not UTF-8: {exc}") from None

    def blob(self) -> bytes:
        (n,) = self.unpack(_U32)
        return bytes(self.take(n))

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise CodecError(f"{len(self.buf) - self.pos} trailing bytes")


def _decode_one(r: _Reader) -> Message:
    code, term, log_term, index, commit, hint, reject, has_snap, n_entries = r.unpack(_MSG_HEAD)
    if code >= len(_TYPES):
        raise CodecError(f"unknown message type code {code}")
    if n_entries > MAX_ENTRIES_PER_MESSAGE:
        raise CodecError(f"{n_entries} entries in one message is too many")
    src, dst = r.string(), r.string()
    context = r.blob()
    entries = []
    for _ in range(n_entries):
        e_term, e_index, kind, length = r.unpack(_ENTRY_HEAD)
        if kind >= len(_KINDS):
            raise CodecError(f"unknown entry kind code {kind}")
        entries.append(Entry(term=e_term, index=e_index, kind=_KINDS[kind], data=bytes(r.take(length))))
    snapshot = None
    if has_snap:
        s_index, s_term, n_voters = r.unpack(_SNAP_HEAD)
        if n_voters > MAX_VOTERS:
            raise CodecError(f"{n_voters} voters is too many")
        voters = frozenset(r.string() for _ in range(n_voters))
        snapshot = Snapshot(index=s_index, term=s_term, voters=voters, data=r.blob())
    return Message(type=_TYPES[code], src=src, dst=dst, term=term, log_term=log_term, index=index,
                   entries=tuple(entries), commit=commit, reject=bool(reject), reject_hint=hint,
                   snapshot=snapshot, context=context)


def decode_messages(payload: bytes | memoryview) -> list[Message]:
    """Inverse of :func:`encode_messages`; raises :class:`CodecError` on anything malformed."""
    r = _Reader(payload)
    (count,) = r.unpack(_U32)
    if count > MAX_MESSAGES_PER_FRAME:
        raise CodecError(f"{count} messages in one frame is too many")
    messages = [_decode_one(r) for _ in range(count)]
    r.done()
    return messages


def parse_challenge(frame: bytes) -> tuple[bytes, str]:
    """(challenge, receiver id) from a challenge frame."""
    r = _Reader(frame)
    if bytes(r.take(len(CHALLENGE_MAGIC))) != CHALLENGE_MAGIC:
        raise CodecError("not a challenge frame")
    challenge = bytes(r.take(CHALLENGE_BYTES))
    receiver = r.string()
    r.done()
    return challenge, receiver


def parse_hello(frame: bytes) -> tuple[str, str, bytes, bytes]:
    """(sender id, receiver id, members fingerprint, mac) from a hello frame; the caller checks the MAC."""
    r = _Reader(frame)
    if bytes(r.take(len(HELLO_MAGIC))) != HELLO_MAGIC:
        raise CodecError("not a hello frame")
    sender, receiver = r.string(), r.string()
    fingerprint = bytes(r.take(32))
    tag = bytes(r.take(MAC_BYTES))
    r.done()
    return sender, receiver, fingerprint, tag


def parse_data(frame: bytes) -> tuple[int, memoryview, bytes]:
    """(seq, payload, mac) from a data frame; the caller checks the MAC, then decodes the payload."""
    if len(frame) < len(DATA_MAGIC) + _U64.size + MAC_BYTES or not frame.startswith(DATA_MAGIC):
        raise CodecError("not a data frame")
    view = memoryview(frame)
    (seq,) = _U64.unpack(view[len(DATA_MAGIC):len(DATA_MAGIC) + _U64.size])
    payload = view[len(DATA_MAGIC) + _U64.size:len(view) - MAC_BYTES]
    return seq, payload, bytes(view[len(view) - MAC_BYTES:])
