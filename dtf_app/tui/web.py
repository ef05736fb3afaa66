"""``dtf dash --web PORT``: the same dashboard in a browser (textual-serve), behind the API-key auth.

textual-serve runs one ``dtf dash`` process per browser tab and streams its screen over a websocket. It
has no authentication of its own, so every request here needs an API key the coordinator accepts: given
once as ``?api_key=KEY`` (it is then kept in an HttpOnly cookie so the page's websocket carries it), or as
an ``X-API-Key`` header. The key is checked against the coordinator (``GET /api/status``), and each
browser session's ``dtf dash`` process gets that key in its environment, never on a command line.

The sources' dashboard service (port 8050, ``COORDINATOR_URL``) is the same thing: ``dtf dash --web``
without a port listens on 8050, and ``COORDINATOR_URL`` is read when no ``--coordinator`` is given.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shlex
import sys
import time
from typing import Any

from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

COOKIE = "dtf_api_key"
WEB_SERVER_PID_ENV = "DTF_WEB_SERVER_PID"
KEY_CACHE_SECONDS = 30.0
DEFAULT_WEB_PORT = 8050


class _KeyedAppService(AppService):
    """An app process whose environment carries the browser session's API key."""

    def __init__(self, *args: Any, api_key: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.api_key = api_key

    def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
        environment = super()._build_environment(width, height)
        environment["DTF_API_KEY"] = self.api_key
        # The session's dtf dash quits when this server is gone (run.py): killed or stopped, it would
        # otherwise leave the session process behind, spinning on its closed pipes.
        environment[WEB_SERVER_PID_ENV] = str(os.getpid())
        return environment


class DashWebServer(Server):
    """textual-serve's server with an API-key gate in front of every route."""

    def __init__(self, urls: list[str], *, host: str, port: int) -> None:
        from dtf_app.up import dtf_command

        # The frozen executable itself when frozen (it has no "-m"), this interpreter otherwise.
        command = shlex.join([*dtf_command(), "dash", "--coordinator", ",".join(urls)])
        super().__init__(command, host=host, port=port, title="DTF dashboard")
        self.urls = urls
        self._valid: dict[str, float] = {}

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._require_key)
        return app

    async def _key_ok(self, key: str) -> bool:
        """Whether the coordinator accepts ``key`` (remembered for a short while)."""
        import httpx

        digest = hashlib.sha256(key.encode()).hexdigest()
        if self._valid.get(digest, 0.0) > time.monotonic():
            return True
        async with httpx.AsyncClient(timeout=10.0) as client:
            for url in self.urls:
                try:
                    response = await client.get(url + "/api/status", headers={"X-API-Key": key})
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    self._valid[digest] = time.monotonic() + KEY_CACHE_SECONDS
                    return True
                if response.status_code in (401, 403):
                    return False
        raise web.HTTPServiceUnavailable(text=f"cannot reach the coordinator ({', '.join(self.urls)}) to "
                                              "check the API key; is it running?")

    @web.middleware
    async def _require_key(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/static/"):
            return await handler(request)  # the page's scripts and fonts: nothing about the cluster
        key = request.query.get("api_key") or request.headers.get("X-API-Key") or request.cookies.get(COOKIE)
        if not key:
            raise web.HTTPUnauthorized(text="an API key is required: open this page as /?api_key=KEY "
                                            "(any role that may read: viewer, operator or admin)")
        if not await self._key_ok(key):
            raise web.HTTPUnauthorized(text="the API key was refused by the coordinator (unknown or deleted key)")
        request["dtf_api_key"] = key
        response = await handler(request)
        if request.query.get("api_key") and isinstance(response, web.Response):
            response.set_cookie(COOKIE, key, httponly=True, samesite="Strict")
        return response

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """textual-serve's handler, with the session's key handed to its app process."""
        websocket = web.WebSocketResponse(heartbeat=15)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        app_service: AppService | None = None
        try:
            await websocket.prepare(request)
            app_service = _KeyedAppService(
                self.command, write_bytes=websocket.send_bytes, write_str=websocket.send_str,
                close=websocket.close, download_manager=self.download_manager, debug=self.debug,
                api_key=request["dtf_api_key"])
            await app_service.start(width, height)
            try:
                await self._process_messages(websocket, app_service)
            finally:
                await app_service.stop()
        except asyncio.CancelledError:
            await websocket.close()
        except Exception:  # noqa: BLE001 - one browser session failing must not stop the server
            logging.getLogger("dtf.web").exception("browser session failed")
        finally:
            if app_service is not None:
                await app_service.stop()
        return websocket


def serve_web(urls: list[str], *, host: str, port: int) -> int:
    """Serve the dashboard on http://host:port until Ctrl-C."""
    server = DashWebServer(urls, host=host, port=port)
    print(f"dtf dash: serving the dashboard on http://{host}:{port}/?api_key=KEY for {', '.join(urls)}",
          file=sys.stderr)
    server.serve()
    return 0
