"""What the frozen build (dtf.spec) relies on: the explicit plugin list, and children started frozen-safe.

The build itself is exercised by ``make binary`` + ``packaging/smoke.sh`` (run by .ci/run), not here.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from dtf_app import up
from dtf_app.plugins import BUILTIN_PLUGINS
from dtf_app.worker import runners

REPO = Path(__file__).resolve().parents[2]


def test_builtin_plugin_list_matches_pyproject_entry_points() -> None:
    """A frozen app has no entry-point metadata: the explicit list must be exactly pyproject's."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert {group: dict(entries) for group, entries in declared.items()} == BUILTIN_PLUGINS


def test_children_are_started_as_the_frozen_executable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert up.dtf_command() == [sys.executable, "-m", "dtf_app"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/opt/dtf/dtf")
    assert up.dtf_command() == ["/opt/dtf/dtf"]


def test_no_other_module_spawns_python_dash_m_dtf_app() -> None:
    offenders = []
    for path in [*(REPO / "dtf_app").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]:
        text = path.read_text()
        if re.search(r"""["']-m["'],\s*["']dtf_app["']""", text) and path.name != "up.py":
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_frozen_worker_uses_dtf_python_for_python_tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv("DTF_PYTHON", "/usr/bin/python3-for-tasks")
    assert runners.python_executable() == "/usr/bin/python3-for-tasks"


def test_benchmark_worker_found_as_a_file_beside_an_archived_module(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    """Frozen, bench_worker's __file__ names a .pyc inside the bundle; dtf.spec ships the .py beside it."""
    from dtf_plugins.runners import bench_worker, benchmark

    bundled = tmp_path / "dtf_plugins" / "runners"
    bundled.mkdir(parents=True)
    (bundled / "bench_worker.py").write_text(Path(bench_worker.__file__).read_text())
    monkeypatch.setattr(bench_worker, "__file__", str(bundled / "bench_worker.pyc"))
    assert benchmark._worker_argv()[1:] == [str(bundled / "bench_worker.py")]


def test_frozen_dtf_up_does_not_point_pythonpath_into_the_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert up._child_env()["PYTHONPATH"] == str(REPO)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert "PYTHONPATH" not in up._child_env()


def test_frozen_worker_gives_tasks_the_machine_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/dtf/_internal")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/usr/local/cuda/lib64")
    env = runners.unfrozen_environ()
    assert env["LD_LIBRARY_PATH"] == "/usr/local/cuda/lib64" and "LD_LIBRARY_PATH_ORIG" not in env
    assert env["PYINSTALLER_RESET_ENVIRONMENT"] == "1"
    monkeypatch.delenv("LD_LIBRARY_PATH_ORIG")
    assert "LD_LIBRARY_PATH" not in runners.unfrozen_environ()
    monkeypatch.setattr(sys, "frozen", False)
    assert runners.unfrozen_environ()["LD_LIBRARY_PATH"] == "/opt/dtf/_internal"  # unfrozen: untouched
