"""Plugin discovery for DTF: hardware probes, task runners and named custom tasks.

Plugins are importlib.metadata entry points in the groups ``dtf.hardware``, ``dtf.runners`` and
``dtf.custom_tasks``. The built-in plugins (package ``dtf_plugins``) are declared in pyproject.toml like
any third-party plugin; :data:`BUILTIN_PLUGINS` repeats them so a frozen build or an uninstalled checkout
(no package metadata) still finds them. Built-ins travel the same path as third-party plugins: both are
``module:attribute`` values loaded by the same code (what ``EntryPoint.load`` does), in the manner of
pluggy's eggsample host and harlequin's adapter registry.

Listing never imports a plugin; loading imports each one separately and reports a broken plugin (import
error, missing attribute, exception at import time) as a message instead of failing the whole group.

A frozen build skips the metadata scan: it can only import what was frozen into it, so no plugin can be
installed beside it, and scanning (importlib.metadata, email, zipfile, every bundled dist-info) costs a
frozen worker start-up time for nothing. A source install imports importlib.metadata only when it lists.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

HARDWARE_GROUP = "dtf.hardware"
RUNNERS_GROUP = "dtf.runners"
CUSTOM_TASKS_GROUP = "dtf.custom_tasks"

BUILTIN_PLUGINS: dict[str, dict[str, str]] = {
    HARDWARE_GROUP: {
        "platform": "dtf_plugins.hardware.platform_probe:probe",
        "cpu": "dtf_plugins.hardware.cpu:probe",
        "memory": "dtf_plugins.hardware.memory:probe",
        "disk": "dtf_plugins.hardware.disk:probe",
        "container": "dtf_plugins.hardware.container:probe",
        "nvidia": "dtf_plugins.hardware.nvidia:probe",
        "amd": "dtf_plugins.hardware.amd:probe",
        "apple": "dtf_plugins.hardware.apple:probe",
        "accelerators": "dtf_plugins.hardware.accelerators:probe",
    },
    RUNNERS_GROUP: {
        "test": "dtf_plugins.runners.test_runner:TestRunner",
        "benchmark": "dtf_plugins.runners.benchmark:BenchmarkRunner",
        "custom": "dtf_plugins.runners.custom:CustomRunner",
    },
    CUSTOM_TASKS_GROUP: {
        "noop": "dtf_plugins.runners.builtin_tasks:noop",
        "sleep": "dtf_plugins.runners.builtin_tasks:sleep",
        "cpu_burn": "dtf_plugins.runners.builtin_tasks:cpu_burn",
        "echo": "dtf_plugins.runners.builtin_tasks:echo",
        "fail": "dtf_plugins.runners.builtin_tasks:fail",
    },
}
"""The built-in plugins per group: the fallback when package metadata is absent (frozen build)."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One discoverable plugin, described without importing it."""

    group: str
    name: str
    value: str
    """``module:attribute`` the plugin loads from."""
    source: str
    """``installed`` (package metadata) or ``builtin`` (the fallback table)."""


def list_plugins(group: str) -> list[PluginInfo]:
    """The plugins of ``group``, installed ones first, then built-ins that metadata did not provide.

    An installed entry point wins over a built-in of the same name, so a third-party package can replace
    a built-in probe or runner on purpose. Nothing is imported.
    """
    found: dict[str, PluginInfo] = {}
    for ep in _installed_entry_points(group):
        # Duplicate names (the same package on sys.path twice, e.g. an editable install plus a checkout)
        # resolve to the first one found, which is the one Python would import anyway.
        found.setdefault(ep.name, PluginInfo(group, ep.name, ep.value, "installed"))
    for name, value in BUILTIN_PLUGINS.get(group, {}).items():
        found.setdefault(name, PluginInfo(group, name, value, "builtin"))
    return list(found.values())


def load_plugins(group: str) -> tuple[dict[str, object], list[str]]:
    """Import every plugin of ``group``: (name -> loaded object, error messages for those that failed)."""
    loaded: dict[str, object] = {}
    errors: list[str] = []
    for info in list_plugins(group):
        try:
            loaded[info.name] = _load(info)
        except Exception as exc:  # a broken plugin must never take the worker down: report and skip
            errors.append(_describe_failure(info, exc))
    return loaded, errors


def load_plugin(group: str, name: str) -> object:
    """Import one plugin by name; raises LookupError naming the available plugins, or ImportError."""
    infos = {info.name: info for info in list_plugins(group)}
    info = infos.get(name)
    if info is None:
        available = ", ".join(sorted(infos)) or "none"
        raise LookupError(f"no {group} plugin named {name!r} (available: {available})")
    try:
        return _load(info)
    except Exception as exc:
        raise ImportError(_describe_failure(info, exc)) from exc


def _installed_entry_points(group: str) -> list[Any]:
    if getattr(sys, "frozen", False):
        return []
    from importlib.metadata import entry_points

    return list(entry_points(group=group))


def _load(info: PluginInfo) -> object:
    # What EntryPoint.load does (module, then attributes), without importing importlib.metadata for it.
    module_name, _, attributes = info.value.partition(":")
    loaded: object = importlib.import_module(module_name.strip())
    for attribute in filter(None, attributes.strip().split(".")):
        loaded = getattr(loaded, attribute)
    return loaded


def _describe_failure(info: PluginInfo, exc: BaseException) -> str:
    return f"{info.group} plugin {info.name!r} ({info.value}, {info.source}) failed to load: " \
        f"{type(exc).__name__}: {exc}"
