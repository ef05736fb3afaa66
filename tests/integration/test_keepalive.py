"""A request refused before its body was read leaves its keep-alive connection usable (or closes it cleanly).

Raw sockets on a real coordinator: the request's headers go first, its body in a later TCP segment,
then a second request on the same connection. Before the fix the second request was never answered.
"""

from __future__ import annotations

import socket
import time

import h11
import pytest

from tests.integration.harness import Cluster

DEADLINE_S = 30.0


def _reader() -> h11.Connection:
    """A client-side h11 parser for one response (the request was written by hand, pipelined)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "127.0.0.1")]))
    conn.send(h11.EndOfMessage())
    return conn


def _exchange(port: int, head: bytes, body: bytes, *, then_status: bool = True,
              ) -> list[tuple[int, dict[bytes, bytes]]] | str:
    """Send head, pause, body, then (unless told not to) GET /status on the same connection; return
    the responses seen (status, headers) or the reason the exchange ended early."""
    conn = _reader()
    responses: list[tuple[int, dict[bytes, bytes]]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(head)
        time.sleep(0.5)  # the answer may be decided now, before the body is on the wire
        sock.sendall(body)
        expected = 1
        if then_status:
            time.sleep(0.1)
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            expected = 2
        deadline = time.monotonic() + DEADLINE_S
        current: tuple[int, dict[bytes, bytes]] | None = None
        while len(responses) < expected:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    return f"no answer within {DEADLINE_S} s after {len(responses)} response(s)"
                conn.receive_data(data)
                if not data:
                    return "closed" if responses else "closed before any response"
            elif isinstance(event, h11.Response):
                current = (event.status_code, {k.lower(): v.lower() for k, v in event.headers})
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                responses.append(current)
                if current[1].get(b"connection") == b"close":
                    # The server said Connection: close; the socket must then end (not hang).
                    rest, closed = conn.trailing_data
                    sock.settimeout(max(0.1, deadline - time.monotonic()))
                    try:
                        while not closed and not rest:
                            chunk = sock.recv(65536)
                            rest, closed = rest + chunk, not chunk
                    except TimeoutError:
                        return "said Connection: close but kept the socket open"
                    return responses if not rest else f"data after Connection: close: {rest[:80]!r}"
                current = None
                rest, closed = conn.trailing_data
                conn = _reader()
                if rest:
                    conn.receive_data(rest)
                if closed:
                    conn.receive_data(b"")
    return responses


def _request(method: str, path: str, body: bytes, key: str | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    if key:
        lines.append(f"X-API-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(("case", "status"), [
    ("no_key", 401), ("viewer_submits", 403), ("unknown_route", 404), ("wrong_method", 405),
    ("delete_own_key", 409),
])
def test_refused_request_with_late_body_keeps_connection_working(cluster: Cluster, case: str, status: int) -> None:
    cluster.start_coordinator()
    body = b'{"type": "custom", "config": {"command": ["true"]}, "padding": "' + b"x" * 20_000 + b'"}'
    key = {"no_key": None, "viewer_submits": cluster.create_key("viewer")}.get(case, cluster.admin_key)
    method, path = {
        "no_key": ("POST", "/api/tasks"), "viewer_submits": ("POST", "/api/tasks"),
        "unknown_route": ("POST", "/api/nothing/here"), "wrong_method": ("PUT", "/status"),
        "delete_own_key": ("DELETE", "/api/keys/bootstrap-admin"),
    }[case]
    outcome = _exchange(cluster.port, _request(method, path, body, key), body)
    assert isinstance(outcome, list), outcome
    assert outcome[0][0] == status, outcome
    if len(outcome) == 2:  # kept alive: the second request got its answer
        assert outcome[1][0] == 200, outcome
    else:  # closed cleanly: the refusal said so
        assert outcome[0][1].get(b"connection") == b"close", outcome
    # Nothing was queued by a refused submit, and the coordinator still serves.
    assert cluster.api("GET", "/api/tasks").json()["total"] == 0


def test_body_over_the_limit_is_refused_and_the_connection_closed(cluster: Cluster) -> None:
    from dtf_app.coordinator.api import MAX_BODY_BYTES

    cluster.start_coordinator()
    head = (f"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {cluster.admin_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n").encode()
    # Only the head: a server that closes with unread bytes in its buffer resets the connection, and
    # the client could lose the answer; the point here is the answer and the close.
    outcome = _exchange(cluster.port, head, b"", then_status=False)
    assert isinstance(outcome, list) and len(outcome) == 1, outcome
    assert outcome[0][0] == 413 and outcome[0][1].get(b"connection") == b"close", outcome
