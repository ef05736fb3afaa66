"""Headless paths never load the TUI, and ``dtf --version`` loads nothing heavy.

Each check runs in a fresh interpreter (a subprocess), because this test process has imported plenty
already; ``sys.modules`` of a fresh process is the only honest witness.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("trio", "quart", "hypercorn", "duckdb", "httpx", "textual", "psutil", "numpy", "trio_websocket")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args, "-c", code] if code else [sys.executable, *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def _loaded_after(code: str) -> list[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = run_python(probe)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _top_level(modules: list[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("mode", ["worker", "coordinator", "peer"])
def test_parsing_node_modes_never_imports_textual(mode: str) -> None:
    modules = _top_level(_loaded_after(f"""
from dtf_app.cli import build_parser
from dtf_app.config import load_settings
args = build_parser().parse_args(["--mode", "{mode}", "--port", "0", "--tags", "a,b"])
settings = load_settings(args, mode=args.mode)
assert settings.mode == "{mode}"
"""))
    assert "textual" not in modules
    # Parsing alone must not pay for the server or the database either.
    assert not {"quart", "hypercorn", "duckdb", "httpx"} & modules


def _existing(*names: str) -> list[str]:
    found = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except ModuleNotFoundError:
            pass
    return found


def test_node_modules_do_not_import_textual() -> None:
    names = _existing("dtf_app.node", "dtf_app.coordinator.service", "dtf_app.worker.agent")
    if not names:
        pytest.skip("node modules are not written yet")
    modules = _top_level(_loaded_after("\n".join(f"import {n}" for n in names)))
    assert "textual" not in modules


def test_worker_path_imports_neither_textual_nor_the_web_server() -> None:
    names = _existing("dtf_app.node", "dtf_app.worker.agent")
    if len(names) < 2:
        pytest.skip("worker modules are not written yet")
    modules = _top_level(_loaded_after("import dtf_app.node, dtf_app.worker.agent"))
    assert not {"textual", "quart", "hypercorn"} & modules


def test_version_imports_nothing_heavy() -> None:
    proc = run_python("", "-X", "importtime", "-m", "dtf_app", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("dtf ")
    # -X importtime writes one line per imported module on stderr: "import time: self | cumulative | name".
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:") and "|" in line}
    assert "dtf_app" in imported, "importtime output was not parsed: the check would be empty"
    assert not set(HEAVY) & imported, sorted(set(HEAVY) & imported)


def test_client_commands_import_no_tui_and_no_server() -> None:
    modules = _top_level(_loaded_after("""
from dtf_app.cli import build_parser
import dtf_app.client, dtf_app.output, dtf_app.up
build_parser().parse_args(["submit", "--type", "custom", "--", "python3", "-c", "print(1)"])
"""))
    assert not {"textual", "quart", "hypercorn", "duckdb", "trio"} & modules


def test_live_data_layer_never_imports_textual() -> None:
    # The dashboard's data layer is usable (and tested) without a screen: Textual stays on the TUI side.
    modules = _top_level(_loaded_after("import dtf_app.live"))
    assert "textual" not in modules
    assert "dtf_app.tui" not in _loaded_after("import dtf_app.live")
