"""Disk probe: size and free space of the filesystem holding the DTF data directory."""

from __future__ import annotations

import os
from pathlib import Path


def probe() -> dict:
    """``{"disk": {"path", "total_gb", "free_gb", "percent"}}`` for ``DTF_DATA_DIR`` (or the cwd)."""
    import psutil

    path = Path(os.environ.get("DTF_DATA_DIR", ".")).resolve()
    # The data dir may not exist yet on first start; its nearest existing parent is on the same disk.
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = psutil.disk_usage(str(path))
    gib = 1024**3
    return {"disk": {"path": str(path), "total_gb": round(usage.total / gib, 2),
                     "free_gb": round(usage.free / gib, 2), "percent": usage.percent}}
