"""Memory probe: total and available RAM in GB."""

from __future__ import annotations


def probe() -> dict:
    """``{"memory": {"total_gb", "available_gb", "swap_total_gb"}}``."""
    import psutil

    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    gib = 1024**3
    return {"memory": {"total_gb": round(vm.total / gib, 2), "available_gb": round(vm.available / gib, 2),
                       "swap_total_gb": round(swap.total / gib, 2)}}
