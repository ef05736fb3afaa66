"""Entry points of the dashboard for the CLI: ``dtf`` (embedded local cluster) and ``dtf dash``.

The checks that can fail (no terminal, a coordinator already running from the data dir) run before
Textual starts, so they end in one clear line and the CLI's exit codes, never in a half-drawn screen.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_USAGE = 2


class DashError(Exception):
    """The dashboard cannot start; ``exit_code`` follows the CLI's convention."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _need_terminal() -> None:
    if os.environ.get("TEXTUAL_DRIVER", "").endswith("web_driver:WebDriver"):
        return  # a browser session of dtf dash --web: textual-serve speaks to it over pipes
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise DashError("the dashboard needs a terminal (stdin and stdout are not a tty); for scripts use "
                        "`dtf up --workers 2 --headless`, `dtf status` or `dtf tasks list`")


def run_embedded(data_dir: Path, workers: int = 2) -> int:
    """Open the TUI on a local coordinator (in this process) and ``workers`` worker processes."""
    from dtf_app.up import UpError, _check_not_running

    _need_terminal()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        _check_not_running(data_dir)
    except UpError as exc:
        raise DashError(f"{exc}; or watch it with `dtf dash --data-dir {data_dir}`", exc.exit_code) from None
    from dtf_app.tui.backend import EmbeddedBackend, setup_file_logging

    log_path = setup_file_logging(data_dir)
    from dtf_app.tui.app import DashApp

    app = DashApp(EmbeddedBackend(data_dir, workers))
    code = app.run()
    print(f"dtf: dashboard closed; the local cluster stopped (logs in {log_path.parent})", file=sys.stderr)
    return int(code or 0)


def run_remote(urls: list[str], api_key: str | None, log_dir: Path | None = None) -> int:
    """Open the TUI against a running cluster."""
    _need_terminal()
    from dtf_app.tui.backend import RemoteBackend, setup_file_logging

    if log_dir is not None:
        try:
            setup_file_logging(log_dir)
        except OSError:
            pass  # logging is a help, not a requirement
    from dtf_app.tui.app import DashApp

    return int(DashApp(RemoteBackend(urls, api_key)).run() or 0)
