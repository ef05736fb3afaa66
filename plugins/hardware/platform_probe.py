"""Platform probe: operating system, release, hostname and Python, from the standard library only."""

from __future__ import annotations

import platform
import socket
import sys


def probe() -> dict:
    """``{"platform": {"system", "os", "release", "version", "machine", "hostname", "python"}}``."""
    system = platform.system()
    return {
        "platform": {
            "system": system,
            # The task requirements speak of "linux" | "windows" | "macos"; Darwin is macOS to a user.
            "os": {"Darwin": "macos"}.get(system, system.lower()),
            "release": platform.release(),
            "version": platform.version(),
            "machine": platform.machine(),
            "hostname": socket.gethostname(),
            "python": sys.version.split()[0],
            "python_implementation": platform.python_implementation(),
        }
    }
