"""A fault-injecting TCP proxy for integration tests: real sockets on 127.0.0.1, cut and healed on demand.

One :class:`TcpProxy` forwards every connection it accepts to one target port, byte for byte, in two
threads per connection. :meth:`TcpProxy.cut` makes it a black hole, as a network partition is: bytes
already in flight and bytes sent later are held (not read any more, so the sender's socket buffers fill
and its writes eventually block), new connections are accepted but go nowhere, and nothing is closed, so
neither end learns of the partition from the socket: Raft must notice it from missing messages (that is
what CheckQuorum is for). :meth:`TcpProxy.heal` lets everything held flow again.

:class:`ProxyMesh` puts one proxy on every directed pair of nodes (``a->b`` is how node ``a`` reaches
node ``b``), so node ``a``'s peer URLs point at its own proxies and a partition is a set of cut pairs,
while clients and workers can still reach every node directly on its real port.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

CHUNK = 64 * 1024


class TcpProxy:
    """Listens on an ephemeral port of 127.0.0.1 and forwards to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int, name: str = "") -> None:
        self.target_port = target_port
        self.name = name
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, name=f"proxy-{name}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return not self._flowing.is_set()

    def cut(self) -> None:
        """Partition: hold every byte, both ways, on every connection (new ones included)."""
        self._flowing.clear()

    def heal(self) -> None:
        """End the partition: what was held flows on, new connections reach the target again."""
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()  # release the pumps so they notice the close
        self._listener.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _close(sock)

    # ------------------------------------------------------------------ threads
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._track(client)
        # A connection made during a partition goes nowhere until it heals (or its client gives up).
        self._wait_flowing()
        if self._closed.is_set():
            _close(client)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            upstream.settimeout(None)
        except OSError:
            _close(client)  # the target is down: the client sees a refused/closed connection
            return
        self._track(upstream)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._wait_flowing()
                if self._closed.is_set():
                    break
                data = src.recv(CHUNK)
                if not data:
                    break
                # Read during a cut: keep it until the partition heals, and read nothing more meanwhile.
                self._wait_flowing()
                if self._closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._untrack(src)

    def _wait_flowing(self) -> None:
        while not self._flowing.wait(0.2):
            if self._closed.is_set():
                return

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class ProxyMesh:
    """One :class:`TcpProxy` per directed pair of nodes; ``ports`` maps node id -> its real API port."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = dict(ports)
        self.proxies = {(a, b): TcpProxy(ports[b], f"{a}->{b}") for a in ports for b in ports if a != b}

    def peers_for(self, node_id: str) -> str:
        """The ``--peers`` value for ``node_id``: every other node, reached through this node's proxies."""
        return ",".join(f"{b}={self.proxies[(node_id, b)].url}" for b in self.ports if b != node_id)

    def isolate(self, node_id: str) -> None:
        """Cut ``node_id`` off from every other node (both directions); clients still reach it directly."""
        for (a, b), proxy in self.proxies.items():
            if node_id in (a, b):
                proxy.cut()

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every pair whose nodes are in different groups."""
        side = {node: i for i, group in enumerate(groups) for node in group}
        for (a, b), proxy in self.proxies.items():
            if side.get(a) != side.get(b):
                proxy.cut()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
