"""A worker's identity: the id it registers with and the credential bound to that id, both kept across
restarts of the same data dir (see dtf_app/protocol.py, *Worker identity*)."""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

from dtf_app import fsutil
from dtf_app.config import Settings
from dtf_app.worker.errors import WorkerError

logger = logging.getLogger("dtf.worker")


def claim_worker_id(settings: Settings) -> tuple[str, Any]:
    """The worker's id and a held lock file (or None).

    Without ``--worker-id`` the id ``<hostname>-<6 hex>`` is kept in ``<data_dir>/worker-id`` so a
    restarted worker keeps its identity and its outbox. Several workers may share one data dir (``dtf up``):
    the first one holds ``worker-id.lock`` for its lifetime; the others take a fresh id they do not persist.
    """
    data_dir = Path(settings.data_dir)
    try:
        # The data dir holds the outbox (outcomes not yet acknowledged) and task work dirs: owner only.
        fsutil.private_dir(data_dir)
        if (data_dir / "work").is_dir():
            fsutil.private_dir(data_dir / "work")  # the task work dirs' root, left by an earlier run
        if settings.worker_id:
            return settings.worker_id, None
        lock = open(data_dir / "worker-id.lock", "a+")  # held open: the lock lives as long as the worker
        fsutil.private_file(data_dir / "worker-id.lock")
    except OSError as exc:

        raise WorkerError(f"cannot use data dir {data_dir}: {exc}", exit_code=2) from exc
    hostname = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0].lower()) or "worker"
    fresh = f"{hostname}-{secrets.token_hex(3)}"
    if not try_lock(lock):
        lock.close()
        logger.info("data dir %s is used by another running worker; this one is %s (not persisted)", data_dir, fresh)
        return fresh, None
    id_file = data_dir / "worker-id"
    try:
        stored = id_file.read_text().strip() if id_file.exists() else ""
        if re.fullmatch(r"[A-Za-z0-9._-]{1,128}", stored):
            fsutil.private_file(id_file)
            return stored, lock
        with os.fdopen(fsutil.open_private(id_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as handle:
            handle.write(fresh + "\n")
    except OSError as exc:
        lock.close()

        raise WorkerError(f"cannot keep the worker id in {id_file}: {exc}", exit_code=2) from exc
    return fresh, lock


def try_lock(handle: Any) -> bool:
    """False when another live process holds the lock (the OS drops it when that process dies)."""
    if os.name == "nt":
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # a file system without locks (some network mounts): go on unguarded
        logger.debug("cannot lock %s: %s", handle.name, exc)
    return True


def credential_path(settings: Settings, worker_id: str) -> Path:
    """Where a worker keeps the credential bound to its id: ``<data_dir>/worker-<id>.credential``."""
    return Path(settings.data_dir) / f"worker-{re.sub(r'[^A-Za-z0-9._-]', '_', worker_id)}.credential"


def load_credential(path: Path) -> str:
    """The worker's credential, created (mode 0600) before its first connection when there is none.

    Created up front rather than taken from the welcome, so that no crash or lost frame between the
    coordinator's enrolment commit and this file can leave the id enrolled with a secret nobody holds.
    """
    from dtf_app.security.keys import generate_worker_credential

    try:
        if path.exists():
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)  # a secret: never readable by others, whoever copied it here
            credential = path.read_text().strip()
            if len(credential) < 32 or not credential.isascii() or not credential.isprintable():

                raise WorkerError(f"the worker credential in {path} is damaged; remove the file, and ask an admin "
                                  "to run `dtf workers forget <id>` if the id was enrolled with it", exit_code=2)
            return credential
        credential = generate_worker_credential()
        store_credential(path, credential)
        return credential
    except OSError as exc:

        raise WorkerError(f"cannot keep the worker credential in {path}: {exc}", exit_code=2) from exc


def store_credential(path: Path, credential: str) -> None:
    """Write the credential durably (fsync) and atomically, mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover tmp file
        os.write(fd, (credential + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if os.name != "nt":
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
