"""Hardware detection: run every ``dtf.hardware`` probe plugin and merge them into one capabilities document.

The document (DESIGN.md §8)::

    {"platform": {...}, "cpu": {"model", "cores", "threads", "arch"}, "memory": {"total_gb"},
     "disk": {...}, "gpu": {"count", "devices": [{"name", "type", "memory_gb", "compute_capability",
     "driver"}]}, "hardware": ["cpu", "cuda", ...], "container": {...},
     "probe_errors": [...], "notes": [...], "simulated": bool}

A probe that raises is recorded in ``probe_errors`` and the rest still count. ``detect(simulate_file=...)``
advertises a JSON profile (assets/hardware/*.json) instead of the real accelerators, flagged
``"simulated": True`` so every view can say so.
"""

from __future__ import annotations

import json
from pathlib import Path

from dtf_app.plugins import HARDWARE_GROUP, load_plugins
from dtf_app.protocol import HARDWARE_KINDS

PROFILE_KEYS = frozenset({"description", "platform", "cpu", "memory", "disk", "gpu", "hardware", "container",
                          "tags", "openvino"})
DEVICE_TYPES = tuple(kind for kind in HARDWARE_KINDS if kind != "cpu")


def detect(simulate_file: str | None = None) -> dict:
    """The capabilities document of this machine, or of the profile in ``simulate_file`` over its basics.

    Raises ValueError (naming the file and the problem) when the profile is unreadable or invalid.
    """
    profile = load_profile(simulate_file) if simulate_file else None
    probes, errors = load_plugins(HARDWARE_GROUP)
    caps: dict = {"hardware": ["cpu"], "gpu": {"devices": []}, "notes": [], "probe_errors": list(errors)}
    for name, probe in probes.items():
        try:
            part = probe()  # type: ignore[operator]
            if not isinstance(part, dict):
                raise TypeError(f"returned {type(part).__name__}, expected dict")
        except Exception as exc:  # one broken probe must not hide the others
            caps["probe_errors"].append(f"probe {name!r} failed: {type(exc).__name__}: {exc}")
            continue
        _merge(caps, part)
    if profile is not None:
        # Accelerators come from the profile only: a simulated A100 worker must not also claim the
        # real GPUs of the machine (and vice versa), but platform basics stay real unless overridden.
        caps["gpu"] = {"devices": []}
        caps["hardware"] = ["cpu"]
        caps["notes"] = []  # notes about the real accelerators would contradict the profile
        caps.pop("openvino", None)
        _merge(caps, {k: v for k, v in profile.items() if k != "description"})
        caps["simulated"] = True
        caps["simulated_from"] = str(simulate_file)
        if profile.get("description"):
            caps["simulated_description"] = profile["description"]
    else:
        caps["simulated"] = False
    caps["hardware"] = hardware_kinds(caps)
    caps["gpu"]["count"] = len(caps["gpu"]["devices"])
    return caps


def hardware_kinds(caps: dict) -> list[str]:
    """The hardware kinds a capabilities document offers, in vocabulary order; always includes ``cpu``."""
    kinds = {"cpu"}
    kinds.update(k for k in caps.get("hardware") or [] if isinstance(k, str))
    for device in (caps.get("gpu") or {}).get("devices") or []:
        if isinstance(device, dict) and isinstance(device.get("type"), str):
            kinds.add(device["type"])
    order = {kind: i for i, kind in enumerate(HARDWARE_KINDS)}
    return sorted(kinds, key=lambda k: (order.get(k, len(order)), k))


def _merge(into: dict, part: dict) -> None:
    """Merge one probe's partial document: dicts recursively, lists concatenated without duplicates."""
    for key, value in part.items():
        if key == "gpu" and isinstance(value, dict):
            gpu = into.setdefault("gpu", {"devices": []})
            gpu.setdefault("devices", []).extend(value.get("devices") or [])
            gpu.update({k: v for k, v in value.items() if k not in ("devices", "count")})
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, list) and isinstance(into.get(key), list):
            into[key].extend(v for v in value if v not in into[key])
        else:
            into[key] = value


def load_profile(path: str | Path) -> dict:
    """Read and validate a simulated hardware profile; ValueError says which file and what is wrong."""
    where = f"hardware profile {str(path)!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{where}: file not found (profiles ship in assets/hardware/*.json)") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        profile = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    validate_profile(profile, where)
    return profile


def validate_profile(profile: object, where: str = "hardware profile") -> None:
    """Check a profile's shape; raises ValueError with the offending key and what is accepted."""
    if not isinstance(profile, dict):
        raise ValueError(f"{where}: must be a JSON object, got {type(profile).__name__}")
    unknown = set(profile) - PROFILE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; accepted: {sorted(PROFILE_KEYS)}")
    for key in ("platform", "cpu", "memory", "disk", "gpu", "container", "openvino"):
        if key in profile and not isinstance(profile[key], dict):
            raise ValueError(f"{where}: {key!r} must be an object, got {type(profile[key]).__name__}")
    hardware = profile.get("hardware", [])
    if not isinstance(hardware, list) or not all(isinstance(k, str) for k in hardware):
        raise ValueError(f"{where}: 'hardware' must be a list of strings from {list(HARDWARE_KINDS)}")
    bad_kinds = [k for k in hardware if k not in HARDWARE_KINDS]
    if bad_kinds:
        raise ValueError(f"{where}: 'hardware' has unknown kind(s) {bad_kinds}; accepted: {list(HARDWARE_KINDS)}")
    tags = profile.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{where}: 'tags' must be a list of strings")
    _check_number(profile.get("memory", {}), "total_gb", f"{where}: memory")
    cpu = profile.get("cpu", {})
    for key in ("cores", "threads"):
        if key in cpu and (not isinstance(cpu[key], int) or isinstance(cpu[key], bool) or cpu[key] < 1):
            raise ValueError(f"{where}: cpu.{key} must be a positive integer, got {cpu[key]!r}")
    devices = profile.get("gpu", {}).get("devices", [])
    if not isinstance(devices, list):
        raise ValueError(f"{where}: gpu.devices must be a list of device objects")
    for i, device in enumerate(devices):
        at = f"{where}: gpu.devices[{i}]"
        if not isinstance(device, dict):
            raise ValueError(f"{at} must be an object with name, type, memory_gb")
        if not isinstance(device.get("name"), str) or not device["name"]:
            raise ValueError(f"{at}.name must be a non-empty string")
        if device.get("type") not in DEVICE_TYPES:
            raise ValueError(f"{at}.type is {device.get('type')!r}; accepted: {list(DEVICE_TYPES)}")
        _check_number(device, "memory_gb", at)
        capability = device.get("compute_capability")
        if capability is not None and not isinstance(capability, str | int | float):
            raise ValueError(f"{at}.compute_capability must be a string like '8.0' or a number")
        if device["type"] == "cuda" and capability is not None:
            try:
                float(capability)
            except ValueError:
                raise ValueError(f"{at}.compute_capability {capability!r} is not a version like '8.0'") from None


def _check_number(obj: dict, key: str, where: str) -> None:
    if key not in obj or obj[key] is None:
        return
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{where}.{key} must be a non-negative number, got {value!r}")


def format_table(caps: dict) -> str:
    """A plain-text summary of a capabilities document, for ``dtf hardware``."""
    rows: list[tuple[str, str]] = []
    plat = caps.get("platform") or {}
    cpu = caps.get("cpu") or {}
    mem = caps.get("memory") or {}
    disk = caps.get("disk") or {}
    container = caps.get("container") or {}
    if caps.get("simulated"):
        rows.append(("SIMULATED", f"profile {caps.get('simulated_from')} (not this machine's accelerators)"))
    rows.append(("Host", f"{plat.get('hostname', '?')} ({plat.get('system', '?')} {plat.get('release', '')})".strip()))
    rows.append(("Python", str(plat.get("python", "?"))))
    rows.append(("CPU", f"{cpu.get('model', '?')} - {cpu.get('cores', '?')} cores / "
                        f"{cpu.get('threads', '?')} threads, {cpu.get('arch', '?')}"))
    rows.append(("Memory", f"{mem.get('total_gb', '?')} GB total"))
    if disk:
        rows.append(("Disk", f"{disk.get('free_gb', '?')} GB free of {disk.get('total_gb', '?')} GB "
                             f"({disk.get('path', '?')})"))
    rows.append(("Container", container.get("runtime") or ("yes" if container.get("in_container") else "no")))
    rows.append(("Hardware", ", ".join(hardware_kinds(caps))))
    devices = (caps.get("gpu") or {}).get("devices") or []
    if not devices:
        rows.append(("GPUs", "none"))
    for i, dev in enumerate(devices):
        details = [str(dev.get("type", "?"))]
        if dev.get("memory_gb") is not None:
            details.append(f"{dev['memory_gb']} GB")
        if dev.get("compute_capability"):
            details.append(f"compute {dev['compute_capability']}")
        if dev.get("driver"):
            details.append(f"driver {dev['driver']}")
        rows.append((f"GPU {i}", f"{dev.get('name', '?')} ({', '.join(details)})"))
    openvino = caps.get("openvino") or {}
    if openvino.get("devices"):
        rows.append(("OpenVINO", ", ".join(openvino["devices"])))
    for note in caps.get("notes") or []:
        rows.append(("Note", str(note)))
    for error in caps.get("probe_errors") or []:
        rows.append(("Probe error", str(error)))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


main_table = format_table
"""Alias under the name the CLI brief used."""
