"""Run one node: coordinator, worker, or peer (both in one process) under ``trio.run``.

SIGINT/SIGTERM cancel the node's nursery, so every service shuts down through its ``finally`` blocks:
the coordinator flushes its DuckDB writer and closes its log, the worker kills running process groups
and closes its outbox.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from dtf_app.config import ConfigError, Settings

log = logging.getLogger("dtf.node")


def setup_logging(settings: Settings) -> None:
    """Logs on stderr (stdout is for data) and, with ``log_path``, in a file that survives logrotate."""
    from dtf_app.logsetup import log_file_name
    from dtf_app.logsetup import setup_logging as configure

    name = settings.worker_id if settings.mode == "worker" else settings.node_id
    path = configure(settings.log_level, fmt=settings.log_format, log_dir=settings.log_path,
                     file_name=log_file_name(settings.mode, name))
    if path is not None:
        log.info("logging to %s (%s format)", path, settings.log_format)
    for level, message in settings.notices:
        getattr(log, level, log.info)("%s", message)


async def _watch_signals(signals: AsyncIterator[int], services: trio.CancelScope) -> None:
    """The first SIGINT/SIGTERM stops the services; later ones are logged and ignored until they stop.

    A terminal's Ctrl-C reaches every process of the group and a supervisor may follow with SIGTERM: a
    second signal must not cut the shutdown (store flush, log close) short. SIGKILL still works.
    """
    async for signum in signals:
        name = signal.Signals(signum).name
        if services.cancel_called:
            log.info("received %s while shutting down; finishing the shutdown first", name)
        else:
            log.info("received %s, shutting down", name)
            services.cancel()


async def _serve(settings: Settings) -> None:
    async with trio.open_nursery() as nursery:
        if settings.mode in ("coordinator", "peer"):
            from dtf_app.coordinator.server import serve_coordinator

            url = await nursery.start(serve_coordinator, settings)
            if settings.mode == "peer":
                settings = settings.replace(coordinator=[url])
        if settings.mode in ("worker", "peer"):
            if not settings.api_key:
                settings = settings.replace(api_key=_local_worker_key(settings))
            await nursery.start(_worker_service, settings)


_restart_requested = False


async def _worker_service(settings: Settings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """The worker of this node, and what it does when the coordinator says stop or restart.

    stop: the worker ends (a worker-mode process then exits 0; a peer keeps its coordinator). restart: a
    worker-mode process starts again as a new program image with the same arguments (run_mode, after the
    trio run has closed everything); a peer starts a fresh agent in-process.
    """
    global _restart_requested
    from dtf_app.worker.agent import run_worker

    action = await run_worker(settings, task_status=task_status)
    while action == "restart" and settings.mode == "peer":
        log.warning("restarting the local worker")
        action = await run_worker(settings)
    if action == "restart":
        _restart_requested = True


async def run_node(settings: Settings) -> None:
    """Serve the chosen mode until a signal arrives, then shut down completely."""
    if settings.mode not in ("coordinator", "worker", "peer"):
        raise ConfigError(f"mode must be coordinator, worker or peer, got {settings.mode!r}")
    # The signal receiver outlives the services, so signals during their shutdown are absorbed.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            services = trio.CancelScope()
            outer.start_soon(_watch_signals, signals, services)
            try:
                with services:
                    await _serve(settings)
            finally:
                outer.cancel_scope.cancel()


def _local_worker_key(settings: Settings) -> str | None:
    """A worker given no key may use the worker key of a coordinator on this machine (same user)."""
    from dtf_app import localreg

    for url in settings.coordinator:
        found = localreg.local_key(url, "worker.key")
        if found is not None:
            log.info("no API key given; using the local coordinator's worker key %s", found[1])
            return found[0]
    return None


def run_mode(settings: Settings) -> int:
    """Blocking entry point for ``dtf --mode ...``; returns the process exit code."""
    try:
        setup_logging(settings)
    except OSError as exc:
        print(f"dtf: error: cannot write logs under {settings.log_path}: {exc.strerror or exc} "
              "(set logging.path / log_path to a writable directory, or --log-path)", file=sys.stderr)
        return 2
    pid_file = _write_pid_file(settings.pid_file)
    from dtf_app import fsutil

    # Everything the node creates (data dirs, logs, DuckDB files and their .wal) is private to its owner.
    fsutil.use_private_umask()
    try:
        trio.run(run_node, settings)
        if _restart_requested:
            _exec_self()
    except ConfigError:
        raise
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:  # noqa: BLE001 - map known failures to exit codes, re-raise the rest
        code = _exit_code_for(exc)
        if code is None:
            raise
        return code
    finally:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
    return 0


def _exec_self() -> None:
    """Replace this process with a fresh start of the same command line (same pid: the pid file holds)."""
    argv = [sys.executable, *(sys.argv[1:] if getattr(sys, "frozen", False) else sys.orig_argv[1:])]
    log.warning("restarting: %s", " ".join(argv))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _write_pid_file(path: str | None) -> Path | None:
    """Write this process's id for service managers and scripts (``--pid-file``)."""
    if not path:
        return None
    pid_path = Path(path)
    try:
        pid_path.parent.mkdir(parents=True, exist_ok=True)
        pid_path.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        raise ConfigError(f"--pid-file {path}: cannot write it: {exc.strerror or exc}") from None
    return pid_path


def _exit_code_for(exc: BaseException) -> int | None:
    """Worker errors carry their exit code (3 unreachable, 4 auth); bind errors are config errors."""
    errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
    for err in errors:
        nested = _exit_code_for(err) if isinstance(err, BaseExceptionGroup) else None
        if nested is not None:
            return nested
        code = getattr(err, "exit_code", None)
        if isinstance(code, int):
            log.error("%s", err)
            return code
        if isinstance(err, OSError) and err.errno in (98, 99):
            log.error("cannot listen: %s", err)
            return 2
        if isinstance(err, OSError):
            # An unusable data dir, db path or port: a setting to fix, not a crash to report.
            log.error("cannot start: %s", err)
            return 2
        if type(err).__name__ in ("StoreError", "OutboxError", "ConfigError", "LogCorruptionError"):
            log.error("%s", err)
            return 2
    return None
