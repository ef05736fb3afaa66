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

    app = DashApp(RemoteBackend(urls, api_key))
    _quit_with_web_server(app)
    return int(app.run() or 0)


def _quit_with_web_server(app: object) -> None:
    """A browser session of ``dtf dash --web`` (web.py names its server's pid) ends with that server.

    textual-serve's pipes closing does not stop a Textual app (its input thread just ends), so without
    this a killed or stopped web server leaves its sessions running, orphaned, at full CPU. A thread, so
    that it acts whatever the app's loop is doing; a hard exit if the app does not quit in time.
    """
    import threading
    import time

    raw = os.environ.get("DTF_WEB_SERVER_PID", "")
    if not raw.isdigit():
        return
    server_pid = int(raw)

    def watch() -> None:
        while True:
            time.sleep(2.0)
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                continue  # exists (another user's pid now would be odd, but it is not gone)
        try:
            app.call_from_thread(app.exit)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - the app may already be closing
            pass
        time.sleep(10.0)
        os._exit(0)

    threading.Thread(target=watch, name="dtf-web-server-watch", daemon=True).start()
