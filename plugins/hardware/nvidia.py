"""NVIDIA probe through NVML (package nvidia-ml-py, imported as ``pynvml``).

No driver, no library or no device is the normal case on most machines: the probe then returns an
empty device list and a note saying why, never an error.
"""

from __future__ import annotations


def probe() -> dict:
    """``{"gpu": {"devices": [...]}, "hardware": ["cuda"] if any, "notes": [...]}``."""
    try:
        import pynvml
    except ImportError:
        return {"gpu": {"devices": []}, "notes": ["nvidia: nvidia-ml-py (pynvml) is not installed"]}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver / libnvidia-ml.so: simply no NVIDIA GPU here
        return {"gpu": {"devices": []}, "notes": [f"nvidia: NVML unavailable ({exc})"]}
    notes: list[str] = []
    devices: list[dict] = []
    try:
        driver = _text(_optional(pynvml.nvmlSystemGetDriverVersion))
        cuda_version = _optional(pynvml.nvmlSystemGetCudaDriverVersion)
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                devices.append(_device(pynvml, index, driver, cuda_version))
            except pynvml.NVMLError as exc:
                # One broken or lost device (e.g. fallen off the bus) must not hide the others.
                notes.append(f"nvidia: device {index} could not be queried ({exc})")
    except pynvml.NVMLError as exc:
        notes.append(f"nvidia: NVML query failed ({exc})")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    result: dict = {"gpu": {"devices": devices}, "notes": notes}
    if devices:
        result["hardware"] = ["cuda"]
    return result


def _device(pynvml: object, index: int, driver: str | None, cuda_version: int | None) -> dict:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)  # type: ignore[attr-defined]
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)  # type: ignore[attr-defined]
    device = {
        "index": index,
        "name": _text(pynvml.nvmlDeviceGetName(handle)),  # type: ignore[attr-defined]
        "type": "cuda",
        "vendor": "nvidia",
        "memory_gb": round(memory.total / 1024**3, 2),
        "compute_capability": f"{major}.{minor}",
        "driver": driver,
    }
    if cuda_version:
        # NVML encodes CUDA 12.4 as 12040.
        device["cuda_version"] = f"{cuda_version // 1000}.{(cuda_version % 1000) // 10}"
    return device


def _optional(fn: object) -> object:
    import pynvml

    try:
        return fn()  # type: ignore[operator]
    except pynvml.NVMLError:
        return None


def _text(value: object) -> str | None:
    # Old NVML bindings return bytes, new ones str.
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return None if value is None else str(value)
