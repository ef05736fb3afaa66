"""Who the members of a coordinator cluster are: one rule for every way of writing it down.

The sources describe a cluster in several forms, and DTF accepts each of them:

* ``--peers id=URL,id=URL,...`` (DTF's CLI; ``DTF_PEERS``), with or without this node;
* ``HIGH_AVAILABILITY_PEERS=host:port,host:port,...`` with ``COORDINATOR_ID`` (the sources' Kubernetes
  StatefulSet: the list includes every pod, this one too, and ``COORDINATOR_ID`` is the pod's name);
* ``high_availability.peers: [{id, host, port}, ...]`` with ``coordinator_id`` (the design's
  coordinator-ha.yaml: the list excludes this node).

The rule, the same for all of them:

1. An entry is ``id=URL``, ``URL``, ``host:port`` or ``{id, host, port}``; a URL without a scheme is
   ``http://``. An entry without an id gets one derived from its host: the first DNS label
   (``dtf-ha-coordinator-0.dtf-ha-coordinator-headless`` -> ``dtf-ha-coordinator-0``, which is the
   StatefulSet pod's name), or ``host:port`` when the host is an IP address. Every node derives the same
   ids from the same list, so they agree on the membership without being told each other's names.
2. This node is the entry whose id is its node id, else the entry whose URL is its advertised URL (then
   the entry's id is its id in the cluster). If no entry is, and the list was written without this node,
   this node is added under its node id and advertised URL.
3. Two entries with one id or one URL, an empty list where peers were asked for, or a node that cannot
   be found in a list that should include it, are configuration errors (:class:`ClusterConfigError`),
   reported in one line.

A single node is a one-member cluster: :func:`resolve` with no peers returns just this node.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dtf_app.errors import ConfigError

if TYPE_CHECKING:
    from dtf_app.config import Settings

__all__ = ["ClusterConfigError", "ClusterSpec", "derive_id", "from_settings", "normalise_url", "parse_peer_entries",
           "peer_secret", "resolve"]


class ClusterConfigError(ValueError):
    """A cluster membership that cannot work; the message says what and where."""


@dataclass(frozen=True)
class ClusterSpec:
    """The resolved membership: this node's id and every member's id -> URL (this node included)."""

    self_id: str
    members: Mapping[str, str]

    @property
    def is_single(self) -> bool:
        return len(self.members) == 1

    @property
    def quorum(self) -> int:
        return len(self.members) // 2 + 1


def normalise_url(text: str, where: str = "peer") -> str:
    """``host:port`` or a URL -> ``scheme://host:port`` (no path, no trailing slash)."""
    raw = text.strip()
    if not raw:
        raise ClusterConfigError(f"{where}: empty address")
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        raise ClusterConfigError(f"{where}: {text!r} is not a URL; expected http(s)://HOST:PORT or HOST:PORT") from None
    if parts.scheme not in ("http", "https"):
        raise ClusterConfigError(f"{where}: {text!r} must be an http:// or https:// URL or host:port")
    try:
        port = parts.port
    except ValueError:
        raise ClusterConfigError(f"{where}: {text!r} has an invalid port") from None
    if not parts.hostname:
        raise ClusterConfigError(f"{where}: {text!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ClusterConfigError(f"{where}: {text!r} must be just scheme://host:port")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is None:
        port = 443 if parts.scheme == "https" else 8080
    return f"{parts.scheme}://{host}:{port}"


def derive_id(url: str) -> str:
    """The id of an entry written without one (see the module docstring, rule 1)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.split(".", 1)[0]
    return f"{host}:{parts.port}"


def parse_peer_entries(value: str | Iterable[Any], where: str = "peers") -> list[tuple[str, str]]:
    """Entries as (id, URL), ids derived where missing; from a comma-separated string or a list of
    strings / ``{id, host, port}`` mappings."""
    items: list[Any]
    if isinstance(value, str):
        items = [part for part in (p.strip() for p in value.split(",")) if part]
    else:
        items = list(value)
    out: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if isinstance(item, Mapping):
            host, port = item.get("host"), item.get("port", 8080)
            if not isinstance(host, str) or not host:
                raise ClusterConfigError(f"{at}: needs a host")
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise ClusterConfigError(f"{at}: port must be an integer from 1 to 65535, got {port!r}")
            scheme = "https" if item.get("tls") else "http"
            url = normalise_url(f"{scheme}://{host}:{port}", at)
            node_id = item.get("id")
            if node_id is not None and (not isinstance(node_id, str) or not node_id):
                raise ClusterConfigError(f"{at}: id must be a non-empty string")
            out.append((node_id or derive_id(url), url))
        elif isinstance(item, str):
            node_id, sep, rest = item.partition("=")
            if sep and "://" not in node_id and node_id.strip():
                url = normalise_url(rest, at)
                out.append((node_id.strip(), url))
            else:
                url = normalise_url(item, at)
                out.append((derive_id(url), url))
        else:
            raise ClusterConfigError(f"{at}: expected 'id=URL', 'host:port' or {{id, host, port}}, got {item!r}")
    return out


def resolve(entries: list[tuple[str, str]], *, node_id: str | None, advertise_url: str,
            includes_self: bool | None = None, where: str = "peers") -> ClusterSpec:
    """Apply rules 2 and 3 to parsed entries; ``includes_self`` False for lists written without this
    node (coordinator-ha.yaml), True for lists that must contain it (HIGH_AVAILABILITY_PEERS), None when
    either is fine (``--peers``)."""
    advertise = normalise_url(advertise_url, "advertised URL")
    if not entries:
        return ClusterSpec(node_id or derive_id(advertise), {node_id or derive_id(advertise): advertise})
    seen_ids: dict[str, str] = {}
    seen_urls: dict[str, str] = {}
    for entry_id, url in entries:
        if entry_id in seen_ids:
            raise ClusterConfigError(f"{where}: node id {entry_id!r} appears twice ({seen_ids[entry_id]} and {url})")
        if url in seen_urls:
            raise ClusterConfigError(f"{where}: {url} appears twice (as {seen_urls[url]!r} and {entry_id!r})")
        seen_ids[entry_id], seen_urls[url] = url, entry_id
    members = dict(entries)
    if node_id is not None and node_id in members:
        self_id = node_id
    elif advertise in seen_urls:
        self_id = seen_urls[advertise]
    elif includes_self:
        raise ClusterConfigError(
            f"{where}: this node ({node_id or 'no node id'}, {advertise}) is not in the list "
            f"{', '.join(f'{i}={u}' for i, u in entries)}; set the node id or the advertised URL to one of them")
    else:
        self_id = node_id or derive_id(advertise)
        if self_id in members:
            raise ClusterConfigError(f"{where}: node id {self_id!r} is listed with another URL ({members[self_id]})")
        members[self_id] = advertise
    return ClusterSpec(self_id, dict(sorted(members.items())))


def from_settings(settings: Settings) -> ClusterSpec:
    """This node's cluster membership from its settings (the rule above); ConfigError when it cannot work."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    # A node with a certificate serves HTTPS (coordinator/tls.py), so its default URL says so.
    scheme = "https" if settings.tls_cert else "http"
    advertise = settings.advertise_url or f"{scheme}://{host}:{settings.port}"
    node_id = settings.node_id
    if not settings.peers:
        return resolve([], node_id=node_id or f"coord-{socket.gethostname()}", advertise_url=advertise)
    where = "HIGH_AVAILABILITY_PEERS" if settings.peers_include_self else "peers"
    try:
        return resolve(list(settings.peers.items()), node_id=node_id, advertise_url=advertise,
                       includes_self=True if settings.peers_include_self else None, where=where)
    except ClusterConfigError as exc:
        raise ConfigError(str(exc)) from None


def peer_secret(settings: Settings) -> bytes:
    """The secret that authenticates peer traffic; a cluster member cannot start without one."""
    secret = settings.cluster_secret
    if settings.cluster_secret_file:
        try:
            secret = Path(settings.cluster_secret_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--cluster-secret-file {settings.cluster_secret_file}: cannot read it: "
                              f"{exc.strerror or exc}") from None
    if not secret:
        raise ConfigError("a coordinator with peers needs the cluster secret that authenticates peer traffic: "
                          "set DTF_CLUSTER_SECRET (the same value on every node) or --cluster-secret-file FILE")
    if len(secret) < 16:
        raise ConfigError("the cluster secret is too short: use at least 16 characters (e.g. `openssl rand -hex 32`)")
    return secret.encode()
