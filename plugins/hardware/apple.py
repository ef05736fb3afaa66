"""Apple probe: on macOS, the chip (sysctl) and its GPU (system_profiler); Apple silicon means ``mps``."""

from __future__ import annotations

import json
import platform
import subprocess


def probe() -> dict:
    """``{"gpu": {"devices": [...]}, "hardware": ["mps"]}`` on Apple silicon; nothing elsewhere."""
    if platform.system() != "Darwin":
        return {}
    chip = _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "Apple"
    memsize = _run(["sysctl", "-n", "hw.memsize"])
    profiler = _run(["system_profiler", "SPDisplaysDataType", "-json"])
    return devices_from(platform.machine(), chip, memsize, profiler)


def devices_from(machine: str, chip: str, memsize: str | None, profiler_json: str | None) -> dict:
    """Build the partial capabilities from raw macOS answers (pure, so tests run it on Linux)."""
    if machine != "arm64":
        # Intel Macs have no MPS-capable unified GPU worth routing benchmarks to; report nothing.
        return {"notes": [f"apple: {machine} Mac, no Apple-silicon GPU"]}
    memory_gb = round(int(memsize) / 1024**3, 2) if memsize and memsize.isdigit() else None
    name, cores = chip, None
    if profiler_json:
        try:
            displays = json.loads(profiler_json).get("SPDisplaysDataType", [])
        except (ValueError, AttributeError):
            displays = []
        for display in displays:
            if isinstance(display, dict) and display.get("sppci_model"):
                name = display["sppci_model"]
                cores = display.get("sppci_cores")
                break
    device = {"index": 0, "name": name, "type": "mps", "vendor": "apple",
              # Unified memory: the GPU can address (most of) system RAM.
              "memory_gb": memory_gb, "compute_capability": None, "driver": None}
    if cores:
        device["gpu_cores"] = int(cores) if str(cores).isdigit() else cores
    return {"gpu": {"devices": [device]}, "hardware": ["mps"]}


def _run(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
