"""``dtf dash --web``: the dashboard in a browser through textual-serve, behind the API-key auth.

A real ``dtf dash --web`` process against a real coordinator: pages without a valid key are refused, a
valid key opens the page (and is kept in a cookie for its websocket), and the websocket streams the
screen of a real ``dtf dash`` process that got the key. (The browser itself is checked by hand with
headless Chromium where one is installed; this test speaks the page's websocket directly.)
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from tests.integration.harness import Cluster, wait_for

pytest.importorskip("textual_serve")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_web_dashboard_needs_a_key_and_streams_the_app(cluster: Cluster) -> None:
    import aiohttp

    cluster.start_coordinator()
    viewer = cluster.create_key("viewer")
    port = _free_port()
    web = cluster.node(["dash", "--web", str(port), "--coordinator", cluster.url], cluster.root / "web.log")
    base = f"http://127.0.0.1:{port}"
    try:
        first = wait_for(lambda: httpx.get(base + "/", timeout=5), timeout=60, what="the web dashboard to listen")
        assert first.status_code == 401 and "api_key=KEY" in first.text
        refused = httpx.get(base + "/", params={"api_key": "not-a-key"}, timeout=10)
        assert refused.status_code == 401 and "refused" in refused.text
        page = httpx.get(base + "/", params={"api_key": viewer}, timeout=10)
        assert page.status_code == 200 and "DTF dashboard" in page.text
        assert page.cookies.get("dtf_api_key") == viewer

        async def stream() -> bytes:
            received = b""
            async with aiohttp.ClientSession(cookies={"dtf_api_key": viewer}) as session:
                async with session.ws_connect(f"ws://127.0.0.1:{port}/ws?width=120&height=40") as ws:
                    async with asyncio.timeout(90):
                        while b"Overview" not in received:
                            message = await ws.receive()
                            if message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                                data = message.data
                                received += data if isinstance(data, bytes) else data.encode()
                            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                  aiohttp.WSMsgType.ERROR):
                                break
            return received

        screen = asyncio.run(stream())
        # The dash process drew its tabs: it started under the web driver and got the key.
        assert b"Overview" in screen, screen[-2000:]
    finally:
        web.stop()
