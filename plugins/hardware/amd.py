"""AMD GPU probe: ``amd-smi static --json``, else ``rocm-smi --json``, else sysfs.

sysfs (``/sys/class/drm/card*/device`` with vendor 0x1002 and ``mem_info_vram_total``) works without
ROCm installed, so an amdgpu machine is recognised even before its user-space tools are. Devices are
reported with type ``rocm``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

AMD_VENDOR_ID = "0x1002"
_GIB = 1024**3


def probe(sysfs_root: str = "/sys/class/drm", which: Callable[[str], str | None] = shutil.which) -> dict:
    """``{"gpu": {"devices": [...]}, "hardware": ["rocm"] if any, "notes": [...]}``.

    ``sysfs_root`` and ``which`` are seams for tests (a fake sysfs tree, a fake ``amd-smi`` on PATH).
    """
    notes: list[str] = []
    devices: list[dict] = []
    amd_smi = which("amd-smi")
    if amd_smi:
        try:
            devices = parse_amd_smi(_run_json([amd_smi, "static", "--json"]))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            notes.append(f"amd: amd-smi failed ({exc}); trying other sources")
    rocm_smi = which("rocm-smi")
    if not devices and rocm_smi:
        try:
            devices = parse_rocm_smi(_run_json([rocm_smi, "--showproductname", "--showmeminfo", "vram",
                                                "--showdriverversion", "--json"]))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            notes.append(f"amd: rocm-smi failed ({exc}); trying sysfs")
    if not devices:
        devices = scan_sysfs(Path(sysfs_root))
    result: dict = {"gpu": {"devices": devices}, "notes": notes}
    if devices:
        result["hardware"] = ["rocm"]
    return result


def _run_json(argv: list[str]) -> object:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if out.returncode != 0:
        raise ValueError(f"{Path(argv[0]).name} exited with {out.returncode}: {out.stderr.strip()[:200]}")
    return json.loads(out.stdout)


def parse_amd_smi(data: object) -> list[dict]:
    """Devices from ``amd-smi static --json`` (a list of GPUs, or ``{"gpu_data": [...]}`` since ROCm 6.4)."""
    if isinstance(data, dict):
        data = data.get("gpu_data", [data])
    if not isinstance(data, list):
        raise ValueError("amd-smi JSON is neither a list of GPUs nor an object with gpu_data")
    devices = []
    for position, gpu in enumerate(data):
        if not isinstance(gpu, dict):
            continue
        asic = gpu.get("asic") or {}
        vram = gpu.get("vram") or {}
        driver = gpu.get("driver") or {}
        devices.append({
            "index": gpu.get("gpu", position),
            "name": asic.get("market_name") or asic.get("device_id") or "AMD GPU",
            "type": "rocm",
            "vendor": "amd",
            "memory_gb": _size_gb(vram.get("size")),
            "compute_capability": asic.get("target_graphics_version"),
            "driver": driver.get("version") if isinstance(driver, dict) else str(driver),
        })
    return devices


def _size_gb(size: object) -> float | None:
    # amd-smi has printed VRAM size as {"value": 65536, "unit": "MB"}, as "65536 MB" and as a bare MB count.
    if isinstance(size, dict):
        value, unit = size.get("value"), str(size.get("unit", "MB"))
    elif isinstance(size, str):
        match = re.match(r"\s*([\d.]+)\s*([KMGT]?i?B)?", size)
        if not match:
            return None
        value, unit = match.group(1), match.group(2) or "MB"
    elif isinstance(size, int | float):
        value, unit = size, "MB"
    else:
        return None
    factor = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": _GIB, "TB": 1024**4}.get(unit.upper().replace("I", ""))
    try:
        return round(float(value) * (factor or 1024**2) / _GIB, 2)
    except (TypeError, ValueError):
        return None


def parse_rocm_smi(data: object) -> list[dict]:
    """Devices from ``rocm-smi --showproductname --showmeminfo vram --showdriverversion --json``."""
    if not isinstance(data, dict):
        raise ValueError("rocm-smi JSON is not an object keyed by card")
    driver = (data.get("system") or {}).get("Driver version")
    devices = []
    for key, card in sorted(data.items()):
        if not key.startswith("card") or not isinstance(card, dict):
            continue
        vram = card.get("VRAM Total Memory (B)")
        devices.append({
            "index": int(key[4:]) if key[4:].isdigit() else key,
            "name": card.get("Card Series") or card.get("Card series") or card.get("Card model") or "AMD GPU",
            "type": "rocm",
            "vendor": "amd",
            "memory_gb": round(int(vram) / _GIB, 2) if str(vram).isdigit() else None,
            "compute_capability": card.get("GFX Version"),
            "driver": driver,
        })
    return devices


def scan_sysfs(drm_root: Path) -> list[dict]:
    """AMD devices under ``/sys/class/drm/card*/device`` (vendor 0x1002), with VRAM when exposed."""
    devices = []
    # card0, card1 ... only; card0-DP-1 and friends are connectors of the same device.
    cards = sorted((p for p in drm_root.glob("card*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    driver = _read(Path("/sys/module/amdgpu/version"))
    for card in cards:
        dev = card / "device"
        if (_read(dev / "vendor") or "").lower() != AMD_VENDOR_ID:
            continue
        vram = _read(dev / "mem_info_vram_total")
        device_id = _read(dev / "device")
        devices.append({
            "index": int(card.name[4:]),
            "name": _read(dev / "product_name") or f"AMD GPU {device_id or ''}".strip(),
            "type": "rocm",
            "vendor": "amd",
            "memory_gb": round(int(vram) / _GIB, 2) if vram and vram.isdigit() else None,
            "compute_capability": None,
            "driver": driver,
            "source": "sysfs",
        })
    return devices


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None
