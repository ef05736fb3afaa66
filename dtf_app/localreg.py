"""Which coordinators run on this machine, for same-user commands that were given no key.

A coordinator records ``{"url", "data_dir", "pid"}`` in ``$DTF_STATE_DIR`` (default
``$XDG_STATE_HOME/dtf/coordinators`` or ``~/.local/state/dtf/coordinators``; folders 0700), mode 0600, and removes
the record when it stops. A CLI command or worker that has no API key and talks to a loopback URL looks
the URL up here and reads the key file from that coordinator's data dir (``admin.key`` for the CLI,
``worker.key`` for workers). Nothing is weakened: those files are 0600, so only a process that could
already read them gets in; remote callers and other users still need a key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dtf_app import fsutil

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def registry_dir() -> Path:
    """Where the records live."""
    explicit = os.environ.get("DTF_STATE_DIR")
    if explicit:
        return Path(explicit) / "coordinators"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dtf" / "coordinators"


def _port(url: str) -> int | None:
    try:
        parts = urlsplit(url)
        return parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    except ValueError:
        return None


def is_loopback(url: str) -> bool:
    """True for http(s)://127.0.0.1|localhost|[::1]:port URLs."""
    try:
        return (urlsplit(url).hostname or "") in LOOPBACK_HOSTS
    except ValueError:
        return False


def register(url: str, data_dir: str | os.PathLike[str]) -> Path | None:
    """Record a serving coordinator; returns the record's path (None when the registry is not writable)."""
    port = _port(url)
    if port is None:
        return None
    folder = registry_dir()
    try:
        # The dtf state dir and its registry: 0700 (created so, or tightened), whatever the umask.
        fsutil.private_dir(folder.parent)
        fsutil.private_dir(folder)
        path = folder / f"{port}.json"
        tmp = path.with_suffix(".tmp")
        fd = fsutil.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w") as handle:
            json.dump({"url": url, "data_dir": str(Path(data_dir).resolve()), "pid": os.getpid()}, handle)
        os.replace(tmp, path)
        return path
    except OSError:
        return None  # a read-only home must not stop a coordinator


def unregister(path: Path | None) -> None:
    """Remove a record written by :func:`register` (only if it is still ours)."""
    if path is None:
        return
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_entries() -> list[dict[str, Any]]:
    """Records of coordinators whose process is still alive."""
    entries = []
    try:
        paths = sorted(registry_dir().glob("*.json"))
    except OSError:
        return []
    for path in paths:
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and _alive(entry.get("pid")) and isinstance(entry.get("url"), str):
            entries.append(entry)
    return entries


def lookup(url: str) -> dict[str, Any] | None:
    """The live local coordinator serving ``url`` (loopback URLs only), or None."""
    if not is_loopback(url):
        return None
    port = _port(url)
    for entry in live_entries():
        if _port(entry["url"]) == port:
            return entry
    return None


def local_key(url: str, filename: str) -> tuple[str, str] | None:
    """(key, path) from the data dir of the local coordinator at ``url``, when readable."""
    entry = lookup(url)
    if entry is None:
        return None
    path = Path(entry["data_dir"]) / filename
    try:
        key = path.read_text().strip()
    except OSError:
        return None
    return (key, str(path)) if key else None
