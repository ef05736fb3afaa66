"""The dashboard in a real pseudo-terminal: pexpect runs ``dtf``, pyte renders what it draws.

Pure Python (no tmux, no terminal emulator), so ``make test`` needs nothing beyond Python and make.
The test is what a new user does: open ``dtf``, submit the example tasks from the UI, watch them finish,
open one, go back, quit; the embedded coordinator and its two worker processes stop with it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pyte
import pytest

from tests.integration.harness import Cluster

REPO = Path(__file__).resolve().parents[2]
COLUMNS, LINES = 160, 48


class Terminal:
    """A child process on a pty and the screen it has drawn so far."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)
        self.child = pexpect.spawn(argv[0], argv[1:], cwd=str(cwd), env=env, dimensions=(LINES, COLUMNS),
                                   timeout=5)

    def pump(self, seconds: float = 0.2) -> None:
        """Feed whatever the child wrote within ``seconds`` into the screen."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.stream.feed(data)

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            text = self.text()
            if predicate(text):
                return text
            if not self.child.isalive():
                break
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.text()}")

    def press(self, keys: str) -> None:
        self.child.send(keys)
        self.pump(0.3)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTF_")}
    env.update(TERM="xterm-256color", COLUMNS=str(COLUMNS), LINES=str(LINES), LANG="C.UTF-8",
               DTF_STATE_DIR=str(tmp_path / "state"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TEXTUAL", None)
    return env


@pytest.mark.slow
def test_new_user_runs_the_example_tasks_from_the_dashboard(tmp_path: Path) -> None:
    data_dir = tmp_path / "dtf-data"
    term = Terminal([sys.executable, "-m", "dtf_app", "--data-dir", str(data_dir)], REPO, _env(tmp_path))
    try:
        term.wait(lambda t: "Overview [1]" in t and "embedded cluster" in t, "the dashboard to draw")
        term.press("3")
        term.wait(lambda t: "2 worker(s), 2 connected" in t, "two local workers", timeout=120)
        term.press("s")
        screen = term.wait(lambda t: "Submit a task file" in t, "the submit dialog")
        assert "assets/tasks/demo.json" in screen  # the example workload is the default
        term.press("\r")
        names = ("sample-suite", "bert-latency", "hello-command", "noop-callable")
        term.wait(lambda t: "1-4 of 4 matching" in t and all(n in t for n in names), "the four example tasks")

        def all_done(text: str) -> bool:
            rows = [line for line in text.splitlines() if any(n in line for n in names)]
            return len(rows) == 4 and all("completed" in row and "success" in row for row in rows)

        term.wait(all_done, "every example task to complete with success", timeout=400)
        # Open the test suite's task: its per-test outcomes are there.
        row = next(i for i, line in enumerate(term.screen.display) if "sample-suite" in line)
        first = next(i for i, line in enumerate(term.screen.display) if any(n in line for n in names))
        term.press("\x1b[B" * (row - first) + "\r")
        term.wait(lambda t: "Attempts" in t and "test_math.py::test_addition" in t, "the task detail with tests")
        term.press("\x1b")
        term.wait(lambda t: "1-4 of 4 matching" in t, "back on the task table")
        term.press("q")
        term.child.expect(pexpect.EOF, timeout=60)
        term.child.close()
        assert term.child.exitstatus == 0, term.child.exitstatus
        # The worker processes stopped with the dashboard.
        for log in (data_dir / "logs").glob("worker-*.log"):
            assert "shutting down" in log.read_text()
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)


def test_dash_watches_a_running_cluster(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1", slots=1)
    cluster.wait_workers(1)
    env = dict(_env(tmp_path), DTF_API_KEY=cluster.admin_key, DTF_STATE_DIR=str(cluster.root / "state"))
    term = Terminal([sys.executable, "-m", "dtf_app", "dash", "--coordinator", cluster.url], REPO, env)
    try:
        term.wait(lambda t: cluster.url in t and "Overview [1]" in t, "the dashboard on the cluster")
        term.press("3")
        term.wait(lambda t: "1 worker(s), 1 connected" in t and " w1 " in t, "the worker")
        created = cluster.submit({"type": "custom", "name": "from-outside", "config": {"command": ["true"]}}).json()
        term.press("4")
        term.wait(lambda t: "from-outside" in t and "completed" in t, "a task submitted elsewhere, completed")
        assert created["task_id"][:12] in term.text()
        term.press("q")
        term.child.expect(pexpect.EOF, timeout=60)
        term.child.close()
        assert term.child.exitstatus == 0
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)
