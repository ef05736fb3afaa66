"""Backups of a running coordinator, restores into a new single-node cluster, and result exports.

A backup is taken inside the coordinator process (``POST /api/admin/backup``), because the DuckDB file is
locked by it and because only it knows a moment when the file and the state agree:

1. ``begin_index``: the last committed index when the backup starts. Every task acknowledged before
   the backup began is at or below it.
2. The store writer is held with everything applied so far committed (:meth:`Store.held`); in that same
   instant, with no await in between, the state machine is snapshotted, so the snapshot and the DuckDB
   file describe exactly the same index (>= ``begin_index``). Submissions keep being acknowledged meanwhile:
   the command log is not paused, only the DuckDB writer, whose events queue in memory.
3. DuckDB ``CHECKPOINT`` folds the WAL into the file, which is then copied while the writer is still held
   (checkpoint-and-copy: never a torn file), and the copy is opened read-only to check it.
4. A ``backup.json`` manifest records the index, the files and their SHA-256.

A restore (``dtf restore``, offline) writes that snapshot and DuckDB file into a new, empty data dir with a
new cluster identity (``cluster.json``: a new cluster id, this node its only member, term 0, no vote):
nothing of the old cluster's membership or Raft state is carried, so a restored node can never rejoin
its old cluster with a stale term and vote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from dtf_app import __version__
from dtf_app.coordinator.legacy_log import LOG_NAME, SNAPSHOT_NAME

if TYPE_CHECKING:
    from dtf_app.coordinator.service import Coordinator

log = logging.getLogger("dtf.coordinator.backup")

MANIFEST = "backup.json"
DB_NAME = "dtf.duckdb"
CLUSTER_FILE = "cluster.json"
BACKUP_FORMAT = 1
KEY_FILES = ("admin.key", "worker.key")
EXPORT_TABLES = ("results", "test_results", "benchmark_results", "distributed_tasks", "worker_nodes",
                 "task_execution_history")
EXPORT_FORMATS = ("parquet", "csv")


class BackupError(Exception):
    """A backup or restore cannot be done as asked; the message says why and what to do (exit 2)."""

    exit_code = 2


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def prepare_target(target: str | os.PathLike[str]) -> Path:
    """The backup directory: absolute, new or empty (a backup never mixes with another)."""
    path = Path(target).expanduser()
    if not path.is_absolute():
        raise BackupError(f"the backup directory must be an absolute path, got {str(target)!r}")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BackupError(f"{path} exists and is not an empty directory; give a new directory for the backup")
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise BackupError(f"cannot create the backup directory {path}: {exc.strerror or exc}") from None
    return path


async def take_backup(coord: Coordinator, target: str) -> dict[str, Any]:
    """Write a consistent backup of ``coord`` into ``target``; returns the manifest."""
    directory = await trio.to_thread.run_sync(prepare_target, target)
    begin_index = coord.state.applied_index
    started = time.time()
    async with coord.store.held() as store_index:
        # No await between the hold and the snapshot: nothing can be applied in between, so the state
        # snapshot and the DuckDB file are at the same index.
        snapshot = coord.state.snapshot()
        index = coord.state.applied_index
        task_count = len(coord.state.tasks)
        if store_index != index:
            raise BackupError(f"internal: the store is at index {store_index}, the state at {index}")
        await trio.to_thread.run_sync(_checkpoint_and_copy, coord.store, directory / DB_NAME)
    manifest = await trio.to_thread.run_sync(_finish, coord, directory, snapshot, index, begin_index, started,
                                             task_count)
    log.info("backup at index %d (began at %d) written to %s", index, begin_index, directory)
    return manifest


def _checkpoint_and_copy(store: Any, destination: Path) -> None:
    """Copy the held DuckDB file; its WAL too when a reader's open transaction keeps CHECKPOINT waiting."""
    import duckdb

    for _ in range(50):
        try:
            store.checkpoint_sync()
            break
        except duckdb.TransactionException:  # a concurrent read is finishing: try again shortly
            time.sleep(0.02)
    shutil.copyfile(store.db_path, destination)
    wal = Path(str(store.db_path) + ".wal")
    if wal.exists():
        # Nothing writes while the store is held, so file + WAL are one consistent database.
        shutil.copyfile(wal, Path(str(destination) + ".wal"))
    _fsync_file(destination)


def _finish(coord: Coordinator, directory: Path, snapshot: bytes, index: int, begin_index: int,
            started: float, task_count: int) -> dict[str, Any]:
    import duckdb

    (directory / SNAPSHOT_NAME).write_bytes(snapshot)
    _fsync_file(directory / SNAPSHOT_NAME)
    for name in KEY_FILES:
        source = coord.data_dir / name
        if source.exists():
            shutil.copyfile(source, directory / name)
            os.chmod(directory / name, 0o600)
    # The copy must open on its own and say it is at the snapshot's index; opening it also folds a copied
    # WAL into the file, so the backup is one self-contained database file.
    con = duckdb.connect(str(directory / DB_NAME))
    try:
        row = con.execute("SELECT value FROM store_meta WHERE key = 'last_applied_index'").fetchone()
        con.execute("CHECKPOINT")
    finally:
        con.close()
    Path(str(directory / DB_NAME) + ".wal").unlink(missing_ok=True)
    copied_index = int(row[0]) if row else 0
    if copied_index != index:
        raise BackupError(f"the DuckDB copy is at index {copied_index}, the snapshot at {index}; the backup "
                          f"in {directory} is not usable")
    manifest = {
        "format": BACKUP_FORMAT, "dtf_version": __version__, "node_id": coord.node_id,
        # A restore writes the snapshot where a coordinator imports a state it did not make itself: the
        # pre-Raft command log's place (legacy_log.import_into_raft), starting a fresh Raft log from it.
        "log_dir": "log",
        "applied_index": index, "begin_index": begin_index, "tasks": task_count,
        "started": started, "finished": time.time(),
        "files": {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file()},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync_file(directory / MANIFEST)
    return manifest


def restore(source: str, data_dir: str, node_id: str | None = None) -> dict[str, Any]:
    """Restore the backup in ``source`` into the new, empty ``data_dir`` as a new one-member cluster."""
    backup = Path(source).expanduser()
    try:
        manifest = json.loads((backup / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{backup} is not a DTF backup (no {MANIFEST}); give the directory dtf backup "
                          "--to wrote") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BackupError(f"cannot read {backup / MANIFEST}: {exc}") from None
    if manifest.get("format") != BACKUP_FORMAT:
        raise BackupError(f"{backup} has backup format {manifest.get('format')!r}; this dtf reads format "
                          f"{BACKUP_FORMAT}")
    for name, digest in (manifest.get("files") or {}).items():
        path = backup / name
        if not path.exists() or _sha256(path) != digest:
            raise BackupError(f"{path} is missing or does not match the backup's checksum; the backup is "
                              "damaged")
    target = Path(data_dir).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} exists and is not empty; restore into a new data directory (a restore "
                          "never overwrites a coordinator's data)")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(backup / DB_NAME, target / DB_NAME)
    # The command log's directory inside a data dir, as the backed-up coordinator had it.
    log_dir = target / str(manifest.get("log_dir") or "log")
    log_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(backup / SNAPSHOT_NAME, log_dir / SNAPSHOT_NAME)
    (log_dir / LOG_NAME).write_bytes(b"")
    for name in KEY_FILES:
        if (backup / name).exists():
            shutil.copyfile(backup / name, target / name)
            os.chmod(target / name, 0o600)
    cluster = {
        "cluster_id": uuid.uuid4().hex, "members": [node_id] if node_id else [], "term": 0, "voted_for": None,
        "restored_from": {"node_id": manifest.get("node_id"), "applied_index": manifest.get("applied_index"),
                          "backup": str(backup.resolve()), "finished": manifest.get("finished")},
    }
    (target / CLUSTER_FILE).write_text(json.dumps(cluster, indent=2) + "\n")
    for path in [*target.iterdir(), *log_dir.iterdir()]:
        if path.is_file():
            _fsync_file(path)
    return {"data_dir": str(target.resolve()), "applied_index": manifest.get("applied_index"),
            "tasks": manifest.get("tasks"), "cluster_id": cluster["cluster_id"]}


def export_sql(table: str, fmt: str, destination: str) -> str:
    """The DuckDB ``COPY`` statement exporting ``table`` as ``fmt`` (both checked against fixed lists)."""
    if table not in EXPORT_TABLES:
        raise BackupError(f"unknown table {table!r}; export one of {', '.join(EXPORT_TABLES)}")
    if fmt not in EXPORT_FORMATS:
        raise BackupError(f"unknown format {fmt!r}; export as {' or '.join(EXPORT_FORMATS)}")
    options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
    escaped = destination.replace("'", "''")
    return f"COPY (SELECT * FROM {table}) TO '{escaped}' ({options})"


def export_file(db_path: str, table: str, fmt: str, destination: str) -> int:
    """Export from a DuckDB file no coordinator holds (a backup copy, a stopped node); returns the rows."""
    import duckdb

    sql = export_sql(table, fmt, destination)
    try:
        con = duckdb.connect(db_path, read_only=True)
    except duckdb.Error as exc:
        raise BackupError(f"cannot open {db_path}: {exc} (a running coordinator holds its file: export "
                          "through it with --coordinator / --data-dir instead of --db)") from None
    try:
        con.execute(sql)
        (count,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    finally:
        con.close()
    return int(count)
