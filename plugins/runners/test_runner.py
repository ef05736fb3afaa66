"""The ``test`` runner: pytest in a subprocess, per-test outcomes from its JUnit XML.

Config (DESIGN.md §5): ``test_file`` (a path or pytest node id, or a list of them), ``test_args`` (list),
``working_dir`` (default: the worker's cwd; relative test paths are resolved against it), ``env``.

Exit codes of pytest decide the status: 0 success, 1 failure (tests failed), 5 partial (no tests were
collected). 2, 3 and 4 (interrupted, e.g. by collection errors; internal error; usage error) mean pytest
could not run the suite, which is a TaskError carrying the output tail.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from dtf_app.worker.runners import (
    RunContext,
    TaskError,
    build_env,
    environment_info,
    python_executable,
    resolve_working_dir,
    run_process,
)

_ROOTDIR_LINE = re.compile(r"^rootdir:\s*(.+?)(?:,\s*configfile:.*)?$")
_OUTCOME_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


class TestRunner:
    """Runs ``test`` tasks with pytest."""

    __test__ = False  # the name starts with "Test": keep pytest from collecting it from test modules

    async def run(self, task: dict, ctx: RunContext) -> dict:
        config = task.get("config") or {}
        if not isinstance(config, dict):
            raise TaskError(f"test task config must be an object, got {type(config).__name__}")
        if "pytest_dist" in config:
            # A chunk of a `dtf pytest` run: runs in a long-lived pytest session on this worker.
            from dtf_app.pytest_dist.worker import run_chunk

            return await run_chunk(task, ctx)
        cwd = resolve_working_dir(config.get("working_dir"))
        targets = _targets(config.get("test_file"), cwd)
        test_args = config.get("test_args") or []
        if not isinstance(test_args, list) or not all(isinstance(a, str | int | float) for a in test_args):
            raise TaskError(f"config.test_args must be a list of strings, got {test_args!r}")
        python = python_executable(config.get("python"))
        # Absolute: pytest runs in working_dir, which need not be the worker's cwd.
        junit = ctx.work_dir.resolve() / "junit.xml"
        # xunit1 puts each test's file (relative to pytest's rootdir) in the XML, which gives exact node
        # ids; it goes first so a junit_family in the user's test_args still wins.
        argv = [python, "-m", "pytest", "-o", "junit_family=xunit1", *targets, *map(str, test_args),
                f"--junitxml={junit}", "-p", "no:cacheprovider"]
        env = build_env(ctx, config.get("env"))
        rootdir: list[str] = []

        def watch(line: str) -> bool:
            # pytest prints its rootdir in the header; JUnit class names are relative to it.
            if not rootdir:
                match = _ROOTDIR_LINE.match(line.strip())
                if match:
                    rootdir.append(match.group(1).strip())
            return False

        started = time.perf_counter()
        proc = await run_process(argv, ctx, cwd=cwd, env=env, on_line=watch)
        elapsed = time.perf_counter() - started
        if proc.returncode not in (0, 1, 5):
            meaning = {2: "interrupted (collection errors or a keyboard interrupt)", 3: "internal error",
                       4: "usage error (bad arguments)"}.get(proc.returncode, "did not complete")
            # A usage error is the task's own arguments; an internal error or an interrupt may pass next time.
            raise TaskError(f"pytest exited with code {proc.returncode}: {meaning}; output tail:\n"
                            f"{proc.output[-4000:]}", error_class="bad_config" if proc.returncode == 4 else "crash")
        tests = parse_junit(junit, Path(rootdir[0]) if rootdir else cwd) if junit.exists() else []
        counts = {outcome: sum(1 for t in tests if t["outcome"] == outcome) for outcome in _OUTCOME_RANK}
        metrics = {"tests_total": len(tests), "passed": counts["passed"], "failed": counts["failed"],
                   "errors": counts["error"], "skipped": counts["skipped"], "duration": elapsed}
        if proc.returncode == 0:
            status = "success"
        elif proc.returncode == 5:
            status = "partial"
            metrics["message"] = "pytest collected no tests (exit code 5)"
        else:
            status = "failure"
        return {
            "status": status,
            "metrics": metrics,
            "execution_time": elapsed,
            "environment": environment_info(),
            "raw_data": {"command": argv, "working_dir": str(cwd), "return_code": proc.returncode,
                         "rootdir": rootdir[0] if rootdir else None},
            "output": proc.output,
            "tests": tests,
        }


def _targets(test_file: object, cwd: Path) -> list[str]:
    """Validate ``test_file``: every path part (before ``::``) must exist relative to ``cwd``."""
    if isinstance(test_file, str):
        targets = [test_file]
    elif isinstance(test_file, list) and test_file and all(isinstance(t, str) for t in test_file):
        targets = list(test_file)
    else:
        raise TaskError("config.test_file must be a test path or pytest node id (e.g. 'tests/test_x.py::test_a'), "
                        f"or a non-empty list of them; got {test_file!r}")
    for target in targets:
        path_part = target.split("::", 1)[0]
        if not path_part:
            raise TaskError(f"config.test_file entry {target!r} has no path before '::'")
        if not (cwd / path_part).exists():
            raise TaskError(f"config.test_file {path_part!r} does not exist on this worker "
                            f"(looked in working directory {cwd})", error_class="missing_file")
    return targets


def parse_junit(path: Path, rootdir: Path) -> list[dict]:
    """Per-test rows ``{"nodeid", "outcome", "duration", "message"}`` from a pytest JUnit XML file.

    A test that appears twice (a teardown error reported next to its call) keeps its worst outcome.
    """
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise TaskError(f"pytest wrote an unreadable JUnit XML file {path}: {exc}", error_class="crash") from None
    rows: dict[str, dict] = {}
    for case in tree.iter("testcase"):
        nodeid = _nodeid(case.get("classname", ""), case.get("name", ""), case.get("file"), rootdir)
        outcome, message = "passed", None
        for child in case:
            kind = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(child.tag)
            if kind and _OUTCOME_RANK[kind] > _OUTCOME_RANK[outcome]:
                outcome = kind
                message = (child.get("message") or (child.text or "").strip() or None)
        if message and len(message) > 2000:
            message = message[:2000] + "..."
        row = {"nodeid": nodeid, "outcome": outcome, "duration": float(case.get("time") or 0.0),
               "message": message}
        previous = rows.get(nodeid)
        if previous is None or _OUTCOME_RANK[outcome] > _OUTCOME_RANK[previous["outcome"]]:
            rows[nodeid] = row
    return list(rows.values())


def _nodeid(classname: str, name: str, file: str | None, rootdir: Path) -> str:
    """Turn JUnit's dotted ``classname`` back into a pytest node id (``path/to/test_x.py::Class::name``)."""
    if not classname:
        # Collection errors are reported with an empty classname and the module as the name.
        return name
    parts = classname.split(".")
    if file and file.endswith(".py"):
        # xunit1: the classname is the module's dotted path plus classes; the file names the module exactly.
        module_parts = file[:-3].replace("\\", "/").split("/")
        if parts[:len(module_parts)] == module_parts:
            return "::".join([file.replace("\\", "/"), *parts[len(module_parts):], name])
    # The module path is the longest dotted prefix that names a .py file under rootdir; the rest are
    # classes. Package dirs may contain dots only in theory; pytest's own conversion has the same limit.
    for cut in range(len(parts), 0, -1):
        candidate = "/".join(parts[:cut]) + ".py"
        if (file and file == candidate) or (rootdir / candidate).exists():
            return "::".join([candidate, *parts[cut:], name])
    return f"{classname}::{name}"
