"""CPU probe: model name, physical cores, logical threads and architecture."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def probe() -> dict:
    """``{"cpu": {"model", "cores", "threads", "arch", "frequency_mhz"}, "hardware": ["cpu"]}``."""
    import psutil  # lazy: keeps `import dtf_plugins.hardware.cpu` free for listings

    threads = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    cores = psutil.cpu_count(logical=False) or threads
    cpu: dict = {"model": _model_name(), "cores": cores, "threads": threads, "arch": platform.machine()}
    try:
        freq = psutil.cpu_freq()
    except (OSError, RuntimeError):  # some VMs and containers expose no frequency (psutil raises)
        freq = None
    if freq is not None and freq.max:
        cpu["frequency_mhz"] = round(freq.max)
    return {"cpu": cpu, "hardware": ["cpu"]}


def _model_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            # x86 says "model name", many ARM kernels only "Hardware" or "Model".
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"
