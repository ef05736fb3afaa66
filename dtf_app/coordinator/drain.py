"""ASGI middleware: a request refused before its body was read must not wedge its keep-alive connection.

Many answers are given without reading the body: 401/403 from ``requires()``, 404 for an unknown route,
405, 409, 413. Under hypercorn's trio HTTP/1.1 protocol (0.18) such an answer, when the body has not
arrived yet, leaves the connection stuck: on the response's last chunk hypercorn sees the request
still in ``SEND_BODY`` and wants to close the socket, but that close runs in the app's task, which
Quart's connection handler cancels as soon as hypercorn tells it the stream ended, so the close never
happens. h11 then waits for a ``start_next_cycle`` that never comes, and the client's next request on
that connection is never answered.

This middleware fixes both halves at the ASGI layer, for every route:

- before the response starts, it waits (bounded by :data:`DRAIN_TIMEOUT_S`) until the request body has
  fully arrived (Quart's receiver keeps reading it), unless the body is declared or found larger than
  the body limit; a drained connection stays keep-alive;
- when the body could not be drained, the response says ``Connection: close``;
- the response's last chunk is sent shielded from cancellation, so hypercorn's own close of a
  connection with an unread body completes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How long a response waits for the rest of a request body it did not read. A client that declared a
# body is sending it; one that stalls longer gets its answer with Connection: close.
DRAIN_TIMEOUT_S = 10.0


class _Body:
    """What arrived of one request's body."""

    def __init__(self, scope: Scope, max_bytes: int) -> None:
        self.received = 0
        self.settled = trio.Event()  # complete, too large, or the client went away
        self.complete = False
        declared: int | None = None
        has_body = False
        for name, value in scope.get("headers") or ():
            name = name.lower()
            if name == b"content-length":
                has_body = True
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
            elif name == b"transfer-encoding":
                has_body = True
        if not has_body or declared == 0:
            self._finish(complete=True)  # h11: no framing headers means no body
        elif declared is not None and declared > max_bytes:
            self._finish(complete=False)  # never buffer a body we would refuse anyway
        self.max_bytes = max_bytes

    def _finish(self, *, complete: bool) -> None:
        self.complete = complete
        self.settled.set()

    def note(self, message: Message) -> None:
        if message.get("type") == "http.request":
            self.received += len(message.get("body") or b"")
            if not message.get("more_body", False):
                self._finish(complete=True)
            elif self.received > self.max_bytes:
                self._finish(complete=False)
        elif message.get("type") == "http.disconnect":
            self._finish(complete=self.complete)


class DrainUnreadBody:
    """Wrap an ASGI app (``app.asgi_app = DrainUnreadBody(app.asgi_app, max_bytes=...)``)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float = DRAIN_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        body = _Body(scope, self.max_bytes)

        async def receive_tracked() -> Message:
            message = await receive()
            body.note(message)
            return message

        async def send_after_body(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                if not body.settled.is_set():
                    with trio.move_on_after(self.timeout):
                        await body.settled.wait()
                if not body.complete:
                    message = dict(message)
                    message["headers"] = [*(message.get("headers") or []), (b"connection", b"close")]
            elif kind == "http.response.body" and not message.get("more_body", False):
                # The last chunk makes hypercorn recycle or close the connection; that must finish even
                # though Quart cancels this task the moment the stream is reported closed.
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        await self.app(scope, receive_tracked, send_after_body)


__all__ = ["DRAIN_TIMEOUT_S", "DrainUnreadBody"]
