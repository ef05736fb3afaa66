"""A seeded frame fuzzer for the websockets ``/ws`` (client subscriptions) and ``/ws/worker``.

A real coordinator and a real worker; the fuzzer sends malformed frames (non-JSON text, binary,
JSON that is not an object, unknown types, every field of every frame type with wrong types, huge
frames, deep nesting) and asserts that each one is answered: on ``/ws`` with an error frame (or an
error ``*_response``), on ``/ws/worker`` with an error frame, or on either with a clean close 44xx.
No answer within ``REPLY_TIMEOUT`` fails (a hang). Afterwards the coordinator is alive, answers
``/status``, logged no traceback, and a normal task still runs to completion on the real worker.

Plain ``random.Random(SEED)``: the same frames every run, a bounded count.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.integration.harness import Cluster

SEED = 20261201
CLIENT_FRAMES = 150
WORKER_FRAMES = 150
HELLO_FRAMES = 40
REPLY_TIMEOUT = 30
HUGE = 2 * 1024 * 1024
DEEP = 200  # nesting levels every JSON parser here must handle

# Lone surrogates, NaN/Infinity and nesting far beyond any parser's limit are all sent, and must be
# answered like any other malformed frame (dtf_app/jsonsafe.py).

CLIENT_TYPES = ("subscribe", "unsubscribe", "get_cluster_status", "get_status", "get_leader_info",
                "get_cluster_health")
CHANNELS = ("task_updates", "worker_updates", "orchestrated_task_updates", "cluster_status", "leadership_updates")
# What /ws pushes on its own (a subscription the fuzzer happened to make valid): not a reply.
PUSH_TYPES = ("task_update", "task_log", "worker_update", "cluster_status_update", "leadership_update",
              "cluster_health_update", "orchestrated_task_update")


# ------------------------------------------------------------------------------------------- values
def _text(rng: random.Random, size: int | None = None) -> str:
    size = rng.choice((0, 1, 5, 40)) if size is None else size
    alphabet = "abcXYZ019 _-:./\\\"'{}[]\n\t\x00\x7féß漢字😀\ud800\udfff"  # lone surrogates too
    return "".join(rng.choice(alphabet) for _ in range(size))


def _value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value (and NaN/Infinity), nested a little."""
    roll = rng.randrange(12 if depth < 3 else 8)
    if roll == 0:
        return None
    if roll == 1:
        return rng.choice((True, False))
    if roll == 2:
        return rng.choice((0, -1, 1, 2**31, -(2**63), 10**30, rng.randrange(-1000, 1000)))
    if roll == 3:
        return rng.choice((0.5, -1e308, 1e-300, 3.0, float("nan"), float("inf"), float("-inf")))
    if roll <= 7:
        return _text(rng)
    if roll <= 9:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_text(rng, rng.randrange(1, 6)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _wrong(rng: random.Random, good: Callable[[Any], bool]) -> Any:
    """A value for which ``good`` is false (a wrong type for a field)."""
    while True:
        value = _value(rng)
        if not good(value):
            return value


def _deep(rng: random.Random, levels: int) -> Any:
    value: Any = _text(rng, 3)
    for _ in range(levels):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def _dumps(doc: Any) -> str:
    return json.dumps(doc)  # NaN and Infinity included: Python writes them, though JSON has none


def _raw_frames(rng: random.Random) -> list[tuple[str, str | bytes]]:
    """Frames that are not JSON objects at all, for both sockets."""
    frames: list[tuple[str, str | bytes]] = [
        ("empty text", ""), ("not json", "hello"), ("truncated", '{"type": "subscribe"'),
        ("json array", "[1, 2, 3]"), ("json string", '"subscribe"'), ("json number", "42"),
        ("json null", "null"), ("json true", "true"), ("trailing garbage", '{"type": "x"} junk'),
        ("binary garbage", bytes(rng.randrange(256) for _ in range(64))),
        ("binary invalid utf-8", b'{"type": "\xff\xfe"}'), ("empty binary", b""),
        ("huge text, not json", "x" * HUGE), ("huge array", "[" + "1," * (HUGE // 2) + "1]"),
        ("deep array", _dumps(_deep(rng, DEEP))),
        ("very deep array", "[" * 100_000 + "]" * 100_000),
        ("very deep object", '{"a":' * 100_000 + "1" + "}" * 100_000),
    ]
    return frames


# ------------------------------------------------------------------------------------------- /ws frames
def client_frames(rng: random.Random, count: int) -> Iterator[tuple[str, str | bytes]]:
    yield from _raw_frames(rng)
    yield ("huge object", _dumps({"type": "subscribe", "channel": "task_updates",
                                  "filter": {f"k{i}": i for i in range(HUGE // 16)}}))
    yield ("huge request id", _dumps({"type": "get_status", "request_id": "r" * HUGE}))
    yield ("deep filter", _dumps({"type": "subscribe", "channel": "task_updates", "filter": _deep(rng, DEEP)}))
    for i in range(count):
        kind = rng.choice((*CLIENT_TYPES, *CLIENT_TYPES, _value(rng), _text(rng)))
        doc: dict[str, Any] = {"type": kind}
        for field in ("channel", "filter", "request_id"):
            roll = rng.random()
            if roll < 0.4:
                doc[field] = _value(rng)
            elif roll < 0.6 and field == "channel":
                doc[field] = rng.choice(CHANNELS)
        if rng.random() < 0.2:
            doc[_text(rng, 4)] = _value(rng)
        yield (f"client frame {i}", _dumps(doc))


def _is_client_reply(message: dict[str, Any]) -> bool:
    return message.get("type") not in PUSH_TYPES


def _check_client_reply(label: str, message: dict[str, Any]) -> None:
    kind = message.get("type")
    if kind == "error":
        assert isinstance(message.get("error"), dict) and message["error"].get("code"), (label, message)
    else:
        assert isinstance(kind, str) and kind.endswith("_response"), (label, message)
        assert message.get("status", "ok") in ("ok", "error") or kind == "cluster_status_response", (label, message)


# ------------------------------------------------------------------------------------------- /ws/worker
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_refs(v: Any, times: bool = True) -> bool:
    return v is None or isinstance(v, list) and all(
        isinstance(r, dict) and isinstance(r.get("task_id"), str) and r["task_id"] and _is_int(r.get("attempt"))
        and (not times or r.get("start_time") is None
             or isinstance(r["start_time"], int | float) and not isinstance(r["start_time"], bool))
        for r in v)


def _is_strings(v: Any) -> bool:
    return v is None or isinstance(v, list) and all(isinstance(s, str) for s in v)


# For every frame type a worker sends: each field and what a good value is (the rest are wrong types).
WORKER_FIELDS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "started": {"items": lambda v: isinstance(v, list) and _is_refs(v)},
    "results": {"items": lambda v: isinstance(v, list) and _is_refs(v, times=False)},
    "heartbeat": {"metrics": lambda v: v is None or isinstance(v, dict), "free_slots": lambda v: v is None or _is_int(v),
                  "running": _is_refs},
    "log": {"task_id": lambda v: isinstance(v, str), "attempt": lambda v: v is None or _is_int(v),
            "lines": lambda v: isinstance(v, list) and _is_strings(v)},
}
HELLO_FIELDS: dict[str, Callable[[Any], bool]] = {
    "worker_id": lambda v: isinstance(v, str) and bool(v), "hostname": lambda v: v is None or isinstance(v, str),
    "capabilities": lambda v: v is None or isinstance(v, dict),
    "max_concurrent_tasks": lambda v: v is None or _is_int(v),
    "simulated": lambda v: v is None or isinstance(v, bool), "metrics": lambda v: v is None or isinstance(v, dict),
    "tags": _is_strings, "running": _is_refs, "finished": _is_refs,
}


def _good_ref(rng: random.Random) -> dict[str, Any]:
    return {"task_id": f"fuzz-{rng.randrange(10**6)}", "attempt": rng.randrange(1, 4)}


def hello_frames(rng: random.Random, count: int) -> Iterator[tuple[str, str | bytes]]:
    yield from _raw_frames(rng)
    yield ("hello of another type", _dumps({"type": "heartbeat", "worker_id": "fuzz-h"}))
    yield ("huge hello", _dumps({"type": "hello", "worker_id": "fuzz-h", "running": "x" * HUGE}))
    for i in range(count):
        field = rng.choice(list(HELLO_FIELDS))
        doc = {"type": "hello", "worker_id": f"fuzz-hello-{i}", field: _wrong(rng, HELLO_FIELDS[field])}
        yield (f"hello with bad {field} ({i})", _dumps(doc))


def worker_frames(rng: random.Random, count: int) -> Iterator[tuple[str, str | bytes]]:
    yield from _raw_frames(rng)
    yield ("frame without type", _dumps({"items": []}))
    yield ("unknown type", _dumps({"type": "assign", "tasks": []}))
    yield ("huge started", _dumps({"type": "started", "items": [{"task_id": 1}] * (HUGE // 16)}))
    yield ("deep results", _dumps({"type": "results", "items": [{"task_id": "t", "attempt": _deep(rng, DEEP)}]}))
    for i in range(count):
        kind = rng.choice(list(WORKER_FIELDS))
        fields = WORKER_FIELDS[kind]
        bad = rng.choice(list(fields))
        doc: dict[str, Any] = {"type": kind}
        for field, good in fields.items():
            if field == bad:
                doc[field] = _wrong(rng, good)
            elif field in ("items", "running"):
                doc[field] = [_good_ref(rng)]  # well-formed references to tasks nobody knows
            elif field == "lines":
                doc[field] = ["ok"]
            elif field == "task_id":
                doc[field] = "fuzz-task"
        yield (f"{kind} with bad {bad} ({i})", _dumps(doc))


# ------------------------------------------------------------------------------------------- driving
class Socket:
    """One websocket that reconnects after the server closes it."""

    def __init__(self, url: str, key: str, on_open: Callable[[WebSocketConnection], Any] | None = None) -> None:
        self.url, self.key, self.on_open = url, key, on_open
        self.ws: WebSocketConnection | None = None
        self.closes: list[int] = []

    async def connect(self, nursery: trio.Nursery) -> WebSocketConnection:
        if self.ws is None or self.ws.closed:
            from trio_websocket import connect_websocket_url

            self.ws = await connect_websocket_url(nursery, self.url, extra_headers=[(b"X-API-Key", self.key.encode())],
                                                  message_queue_size=64, max_message_size=64 * 1024 * 1024)
            if self.on_open is not None:
                await self.on_open(self.ws)
        return self.ws


async def _answer(sock: Socket, nursery: trio.Nursery, label: str, frame: str | bytes,
                  is_reply: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | int:
    """Send one frame; return the reply (a JSON object) or the close code. Fails on a hang."""
    ws = await sock.connect(nursery)
    try:
        with trio.fail_after(REPLY_TIMEOUT):
            await ws.send_message(frame)
            while True:
                text = await ws.get_message()
                message = json.loads(text)
                assert isinstance(message, dict), (label, text[:300])
                if is_reply(message):
                    return message
    except trio.TooSlowError:
        raise AssertionError(f"no answer within {REPLY_TIMEOUT} s to {label}") from None
    except ConnectionClosed as exc:
        code = exc.reason.code
        sock.closes.append(code)
        assert 4400 <= code <= 4499, f"{label}: closed with {code} {exc.reason.reason!r}, not a 44xx"
        return code


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("fuzz-ws")
    cluster = Cluster(root, worker_timeout=30.0)
    try:
        cluster.start_coordinator()
        cluster.start_worker("ws-w1")
        cluster.wait_workers(1)
        yield cluster
    finally:
        cluster.stop()


def _ws_url(cluster: Cluster, path: str) -> str:
    return cluster.url.replace("http://", "ws://") + path


async def _still_serving(cluster: Cluster) -> None:
    """Alive, answering, no traceback in the log, and a normal task completes on the real worker."""
    assert cluster.coordinator is not None and cluster.coordinator.proc.poll() is None, "the coordinator died"

    def check() -> None:
        assert cluster.api("GET", "/status").status_code == 200
        created = cluster.submit({"type": "custom", "config": {"command": ["echo", "after-fuzz"]}})
        assert created.status_code == 201, created.text
        task = cluster.wait_task(created.json()["task_id"])
        assert task["status"] == "completed" and task["worker_id"] == "ws-w1", task

    await trio.to_thread.run_sync(check)
    output = cluster.coordinator.output()
    assert "Traceback" not in output, output[max(0, output.index("Traceback") - 2000):][:8000]


async def test_fuzz_client_socket(live: Cluster) -> None:
    rng = random.Random(SEED)
    viewer = await trio.to_thread.run_sync(lambda: live.create_key("viewer", "ws-fuzz-viewer"))
    sent = 0
    async with trio.open_nursery() as nursery:
        for key in (live.admin_key, viewer):
            sock = Socket(_ws_url(live, "/ws"), key)
            for label, frame in client_frames(rng, CLIENT_FRAMES // 2):
                answer = await _answer(sock, nursery, label, frame, _is_client_reply)
                if isinstance(answer, dict):
                    _check_client_reply(label, answer)
                sent += 1
            # The socket still works for a well-formed request after all that.
            answer = await _answer(sock, nursery, "get_status", json.dumps({"type": "get_status", "request_id": 1}),
                                   _is_client_reply)
            assert isinstance(answer, dict) and answer["type"] == "cluster_status_response", answer
            assert sock.ws is not None
            await sock.ws.aclose()
        nursery.cancel_scope.cancel()
    assert sent > CLIENT_FRAMES
    await _still_serving(live)


async def test_fuzz_worker_socket(live: Cluster) -> None:
    rng = random.Random(SEED + 1)
    url = _ws_url(live, "/ws/worker")
    worker_key = await trio.to_thread.run_sync(lambda: live.worker_key)
    async with trio.open_nursery() as nursery:
        # Malformed hellos: each gets an error frame and a 4400 close (a fresh connection each time).
        for label, frame in hello_frames(rng, HELLO_FRAMES):
            sock = Socket(url, worker_key)
            answer = await _answer(sock, nursery, label, frame, lambda m: True)
            if isinstance(answer, dict):
                assert answer.get("type") == "error" and answer.get("code") == "bad_hello", (label, answer)
                with trio.fail_after(REPLY_TIMEOUT):
                    with pytest.raises(ConnectionClosed) as info:
                        while True:
                            await sock.ws.get_message()  # type: ignore[union-attr]
                assert info.value.reason.code == 4400, (label, info.value.reason)

        # After a good hello: every malformed frame gets an error frame, and the connection lives on.
        # (A new id per connection: an id, once enrolled, needs its credential to connect again.)
        connections = 0

        async def hello(ws: WebSocketConnection) -> None:
            nonlocal connections
            connections += 1
            await ws.send_message(json.dumps({"type": "hello", "worker_id": f"fuzz-worker-{connections}",
                                              "max_concurrent_tasks": 1}))
            with trio.fail_after(REPLY_TIMEOUT):
                welcome = json.loads(await ws.get_message())
            assert welcome["type"] == "welcome", welcome

        sock = Socket(url, worker_key, on_open=hello)
        for label, frame in worker_frames(rng, WORKER_FRAMES):
            answer = await _answer(sock, nursery, label, frame, lambda m: m.get("type") == "error")
            if isinstance(answer, dict):
                assert answer.get("code") and answer.get("message"), (label, answer)
        assert sock.ws is not None
        await sock.ws.aclose()
        nursery.cancel_scope.cancel()
    await _still_serving(live)
