"""Plugin discovery: built-ins always present, third-party entry points found, broken plugins reported.

Third-party plugins here are real distributions: a ``*.dist-info`` directory with ``entry_points.txt``
next to a module, put on ``sys.path``, which is exactly what ``pip install`` leaves behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dtf_app import plugins
from dtf_app.plugins import (
    BUILTIN_PLUGINS,
    CUSTOM_TASKS_GROUP,
    HARDWARE_GROUP,
    RUNNERS_GROUP,
    list_plugins,
    load_plugin,
    load_plugins,
)


def install_fake_distribution(root: Path, name: str, entry_points: dict[str, dict[str, str]],
                              modules: dict[str, str]) -> None:
    """Write a minimal installed distribution (dist-info + modules) under ``root``."""
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = []
    for group, entries in entry_points.items():
        lines.append(f"[{group}]")
        lines.extend(f"{ep_name} = {value}" for ep_name, value in entries.items())
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in [m for m in sys.modules if m.startswith("dtf_fake_")]:
        del sys.modules[module]


def test_builtins_are_listed_without_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    # No metadata at all (a frozen build): the fallback table must still provide every built-in.
    monkeypatch.setattr(plugins, "_installed_entry_points", lambda group: [])
    for group, table in BUILTIN_PLUGINS.items():
        infos = list_plugins(group)
        assert {i.name for i in infos} == set(table)
        assert all(i.source == "builtin" for i in infos)


def test_a_frozen_build_lists_its_builtins_without_scanning_metadata(site: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing can be installed beside a frozen executable, so a dist-info on its path is not a plugin source.
    install_fake_distribution(site, "dtf-fake-frozen", {HARDWARE_GROUP: {"extra": "dtf_fake_frozen:probe"}},
                              {"dtf_fake_frozen": "def probe():\n    return {}\n"})
    assert "extra" in {i.name for i in list_plugins(HARDWARE_GROUP)}
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    infos = list_plugins(HARDWARE_GROUP)
    assert {i.name for i in infos} == set(BUILTIN_PLUGINS[HARDWARE_GROUP])
    assert load_plugin(HARDWARE_GROUP, "cpu")()["cpu"]["threads"] >= 1


def test_listing_does_not_import(site: Path) -> None:
    install_fake_distribution(site, "dtf-fake-lazy", {HARDWARE_GROUP: {"lazy": "dtf_fake_lazy:probe"}},
                              {"dtf_fake_lazy": "raise RuntimeError('imported!')\n"})
    infos = {i.name: i for i in list_plugins(HARDWARE_GROUP)}
    assert infos["lazy"].source == "installed"
    assert "dtf_fake_lazy" not in sys.modules


def test_all_builtin_plugins_load() -> None:
    for group in (HARDWARE_GROUP, RUNNERS_GROUP, CUSTOM_TASKS_GROUP):
        loaded, errors = load_plugins(group)
        assert errors == []
        assert set(BUILTIN_PLUGINS[group]) <= set(loaded)


def test_broken_third_party_plugin_is_reported_and_skipped(site: Path) -> None:
    install_fake_distribution(
        site, "dtf-fake-broken",
        {HARDWARE_GROUP: {"exploding": "dtf_fake_exploding:probe", "missing": "dtf_fake_good:nope",
                          "good": "dtf_fake_good:probe"}},
        {"dtf_fake_exploding": "raise RuntimeError('boom at import')\n",
         "dtf_fake_good": "def probe():\n    return {'hardware': ['qualcomm']}\n"},
    )
    loaded, errors = load_plugins(HARDWARE_GROUP)
    assert "good" in loaded and loaded["good"]() == {"hardware": ["qualcomm"]}
    assert "exploding" not in loaded and "missing" not in loaded
    assert any("'exploding'" in e and "RuntimeError: boom at import" in e for e in errors)
    assert any("'missing'" in e and "AttributeError" in e for e in errors)
    # The built-ins are unaffected by a broken neighbour.
    assert {"cpu", "memory", "nvidia"} <= set(loaded)


def test_installed_entry_point_overrides_builtin(site: Path) -> None:
    install_fake_distribution(site, "dtf-fake-override", {HARDWARE_GROUP: {"amd": "dtf_fake_amd:probe"}},
                              {"dtf_fake_amd": "def probe():\n    return {'overridden': True}\n"})
    assert load_plugin(HARDWARE_GROUP, "amd")() == {"overridden": True}


def test_load_plugin_unknown_name_lists_available() -> None:
    with pytest.raises(LookupError, match=r"no dtf.runners plugin named 'nope' \(available: .*benchmark"):
        load_plugin(RUNNERS_GROUP, "nope")
