"""Where the dashboard's data comes from: a running cluster, an embedded local one, or a fixed store.

No Textual here: a backend starts its trio side on a :class:`~dtf_app.live.TrioHost` and offers the
operations the views need (submit, cancel, task detail, cluster, results) as trio coroutines.

- :class:`RemoteBackend` (``dtf dash``): a :class:`~dtf_app.live.LiveClient` against coordinator URLs.
- :class:`EmbeddedBackend` (plain ``dtf``): a one-member coordinator in this process (trio guest on
  Textual's loop), two local worker processes as ``dtf up`` starts them, and a LiveClient on it.
- :class:`StaticBackend` (tests, snapshots, the refresh benchmark): a store filled by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from dtf_app.live import Connection, LiveClient, LiveError, LiveEvent, LiveStore, TrioHost

log = logging.getLogger("dtf.tui")


class Backend:
    """The common surface; ``client`` is None while there is no live client (static data)."""

    def __init__(self) -> None:
        self.store = LiveStore()
        self.client: LiveClient | None = None
        self.description = ""

    async def start(self, host: TrioHost, sink: Callable[[LiveEvent], None]) -> None:
        """Start the trio side; events go to ``sink``."""

    async def before_stop(self) -> None:
        """Blocking shutdown work done before trio is cancelled (asyncio side)."""

    def require_client(self) -> LiveClient:
        if self.client is None:
            raise LiveError("not connected to a cluster")
        return self.client


class StaticBackend(Backend):
    """A store the caller fills; operations that need a cluster answer 'not connected'."""

    def __init__(self, store: LiveStore, description: str = "static data") -> None:
        super().__init__()
        self.store = store
        self.description = description
        self.cluster_info: dict[str, Any] = {}
        self.results_info: dict[str, Any] = {}


class RemoteBackend(Backend):
    """``dtf dash``: follow a running cluster."""

    def __init__(self, urls: list[str], api_key: str | None) -> None:
        super().__init__()
        self.urls, self.api_key = urls, api_key
        self.description = ", ".join(urls)

    async def start(self, host: TrioHost, sink: Callable[[LiveEvent], None]) -> None:
        self.client = LiveClient(self.urls, self.api_key, store=self.store, sink=sink)

        async def main(nursery: trio.Nursery) -> None:
            nursery.start_soon(self.client.run)

        await host.start(main)


class EmbeddedBackend(Backend):
    """Plain ``dtf``: a local coordinator in this process and ``workers`` worker processes."""

    def __init__(self, data_dir: Path, workers: int = 2) -> None:
        super().__init__()
        self.data_dir = data_dir.resolve()
        self.workers = workers
        self.children: list[Any] = []
        self.description = f"embedded cluster in {self.data_dir}"
        self.url = ""

    async def start(self, host: TrioHost, sink: Callable[[LiveEvent], None]) -> None:
        from dtf_app.config import Settings
        from dtf_app.coordinator.server import serve_coordinator

        settings = Settings(mode="coordinator", host="127.0.0.1", port=0, data_dir=str(self.data_dir))

        async def main(nursery: trio.Nursery) -> None:
            nursery.start_soon(self._run, nursery, settings, sink, serve_coordinator)

        await host.start(main)

    async def _run(self, nursery: trio.Nursery, settings: Any, sink: Callable[[LiveEvent], None],
                   serve: Any) -> None:
        sink(Connection("starting", None, f"starting the local coordinator in {self.data_dir}"))
        self.url = await nursery.start(serve, settings)
        admin_key = (self.data_dir / "admin.key").read_text().strip()
        self.client = LiveClient([self.url], admin_key, store=self.store, sink=sink)
        nursery.start_soon(self.client.run)
        if self.workers:
            worker_key = await trio.to_thread.run_sync(self._worker_key, admin_key)
            # Started from this (the main) thread: Linux sends PR_SET_PDEATHSIG when the *thread* that
            # forked a child ends, and a worker thread of trio's pool ends after a few idle seconds.
            self._start_workers(worker_key)

    def _worker_key(self, admin_key: str) -> str:
        from dtf_app.client import Client
        from dtf_app.up import _worker_key

        with Client(self.url, admin_key) as client:
            return _worker_key(client, self.data_dir)

    def _start_workers(self, worker_key: str) -> None:
        from dtf_app.up import Child, _child_env

        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for i in range(1, self.workers + 1):
            argv = ["--mode", "worker", "--coordinator", self.url, "--worker-id", f"w{i}",
                    "--data-dir", str(self.data_dir / "workers" / f"w{i}")]
            self.children.append(Child(f"worker w{i}", argv, logs / f"worker-w{i}.log", _child_env(worker_key)))

    async def before_stop(self) -> None:
        from dtf_app.up import stop_children

        if self.children:
            import asyncio

            await asyncio.get_running_loop().run_in_executor(None, stop_children, self.children)
            self.children = []


def setup_file_logging(data_dir: Path) -> Path:
    """Send log records to ``<data_dir>/logs/dashboard.log``: the terminal belongs to the TUI."""
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "dashboard.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("hypercorn.error", "quart.app", "quart.serving", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path
