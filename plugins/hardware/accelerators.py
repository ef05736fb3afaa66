"""Other accelerators: OpenVINO devices when its runtime is importable.

``openvino.Core().available_devices`` lists e.g. ``["CPU", "GPU", "NPU"]``; any of them makes the worker
an ``openvino`` worker. Importing OpenVINO is slow, so the probe first checks it is installed at all.
"""

from __future__ import annotations

import importlib.util


def probe() -> dict:
    """``{"openvino": {"devices": [...], "version"}, "hardware": ["openvino"]}`` or nothing."""
    if importlib.util.find_spec("openvino") is None:
        return {}
    try:
        import openvino

        core = openvino.Core()
        devices = list(core.available_devices)
        names = {dev: _full_name(core, dev) for dev in devices}
        version = getattr(openvino, "__version__", None) or openvino.get_version()
    except Exception as exc:  # a broken OpenVINO install is a note, not a dead worker
        return {"notes": [f"openvino: runtime present but unusable ({type(exc).__name__}: {exc})"]}
    if not devices:
        return {"openvino": {"devices": [], "version": version}}
    return {"openvino": {"devices": devices, "device_names": names, "version": version},
            "hardware": ["openvino"]}


def _full_name(core: object, device: str) -> str | None:
    try:
        return str(core.get_property(device, "FULL_DEVICE_NAME"))  # type: ignore[attr-defined]
    except Exception:
        return None
