"""Logging of a node: stderr always, plus a log file under ``logging.path`` that survives logrotate.

The deployment guide rotates ``/var/log/distributed-testing/*.log`` with logrotate. Its default recipe
renames the file and expects the program to open a new one: :class:`logging.handlers.WatchedFileHandler`
does that by checking, before each record, whether the path still names the file it has open (device and
inode), so a renamed or deleted log file is reopened at its path without any signal. SIGHUP is not needed,
and ``copytruncate`` recipes work too (the handler writes in append mode).

``logging.format = json`` writes one JSON object per line (time, level, logger, message, exception) for
log shippers; ``text`` is the readable form.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``{"time", "level", "logger", "message"[, "exception"]}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def log_file_name(mode: str, name: str | None = None) -> str:
    """``coordinator.log``, ``worker.log`` (or ``worker-<id>.log``), ``peer.log``."""
    return f"{mode}-{name}.log" if name else f"{mode}.log"


def setup_logging(level: str = "info", *, fmt: str = "text", log_dir: str | None = None,
                  file_name: str = "dtf.log") -> Path | None:
    """Configure the root logger: stderr (stdout is for data) and, with ``log_dir``, a watched log file.

    Returns the log file's path (None without ``log_dir``). Raises OSError when the directory cannot be
    created or the file cannot be opened: the caller reports that as a configuration error.
    """
    # Logged values (task names, worker errors, frames) can never start a fake log line (logsafe.py).
    from dtf_app.logsafe import EscapingFilter, EscapingFormatter

    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else \
        EscapingFormatter(TEXT_FORMAT, "%H:%M:%S")
    handlers: list[logging.Handler] = []
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    handlers.append(stderr)
    path: Path | None = None
    if log_dir:
        directory = Path(log_dir).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / file_name
        file_handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        file_formatter = JsonFormatter() if fmt == "json" else EscapingFormatter(TEXT_FORMAT, None)
        file_handler.setFormatter(file_formatter)
        handlers.append(file_handler)
        try:
            os.chmod(path, 0o640)  # logs may name hosts and key files; not world-readable
        except OSError:
            pass
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.addFilter(EscapingFilter())
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Hypercorn/quart chatter at INFO is not useful to an operator.
    for noisy in ("hypercorn.error", "quart.app", "quart.serving", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path
