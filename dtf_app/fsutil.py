"""Private files and directories: DTF's state on disk is for its owner only.

A coordinator's data dir holds every API key hash and task config (``state.snapshot``, ``dtf.duckdb``),
a worker's holds outcomes not yet acknowledged: directories are 0700 and files 0600 whatever the umask
the node was started under. Two mechanisms, because neither alone covers everything:

- :func:`use_private_umask` sets the process umask to 0o077 at node start, so whatever the process
  creates later (DuckDB's ``.wal`` appears and disappears on its own schedule) is private from birth;
  :func:`task_umask` gives subprocesses that run user tasks the umask the node was started with, so a
  task's own files keep the permissions its author expects.
- :func:`private_dir` / :func:`private_file` create paths with those modes and tighten paths that
  already exist with looser ones (a data dir made by an older version or by hand), saying so in the log.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("dtf.fs")

DIR_MODE = 0o700
FILE_MODE = 0o600
PRIVATE_UMASK = 0o077

_original_umask: int | None = None


def use_private_umask() -> None:
    """Make everything this process creates from now on private (remembering the umask it had)."""
    global _original_umask
    previous = os.umask(PRIVATE_UMASK)
    if _original_umask is None:
        _original_umask = previous


def task_umask() -> int:
    """The umask for processes that run user tasks: the one the node was started with."""
    if _original_umask is not None:
        return _original_umask
    current = os.umask(0)
    os.umask(current)
    return current


def _tighten(path: Path, mode: int, what: str) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current != mode:
        os.chmod(path, mode)
        log.info("%s %s was mode %04o; set to %04o (DTF state is private to its owner)", what, path, current, mode)


def private_dir(path: str | os.PathLike[str], *, tighten: bool = True) -> Path:
    """Create ``path`` (and missing parents) as 0700 directories, or tighten an existing one to 0700.

    ``tighten=False`` leaves an existing directory as it is: for folders that may be the user's (the
    parent of an explicit ``--db-path``), where only what DTF creates is DTF's.
    """
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        else:
            os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask
    if tighten:
        _tighten(path, DIR_MODE, "directory")
    return path


def private_file(path: str | os.PathLike[str]) -> Path:
    """Tighten an existing file to 0600 (nothing happens when it does not exist)."""
    path = Path(path)
    _tighten(path, FILE_MODE, "file")
    return path


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` that creates the file 0600 and tightens it if it already existed with another mode."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        current = stat.S_IMODE(os.fstat(fd).st_mode)
        if current != FILE_MODE and hasattr(os, "fchmod"):  # POSIX; Windows has no such modes
            os.fchmod(fd, FILE_MODE)
            log.info("file %s was mode %04o; set to %04o (DTF state is private to its owner)", path, current,
                     FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_files(folder: str | os.PathLike[str], *patterns: str) -> None:
    """Tighten the files in ``folder`` matching the glob ``patterns`` (e.g. a DuckDB file and its .wal)."""
    for pattern in patterns:
        for path in Path(folder).glob(pattern):
            if path.is_file():
                private_file(path)
