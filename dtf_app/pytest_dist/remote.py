"""The worker-side pytest plugin of ``dtf pytest``: one long-lived pytest session fed node ids on stdin.

This file is standalone on purpose (standard library + pytest only): the worker copies it next to its
cache as ``dtf_pytest_remote.py`` and starts ``PYTHON -m pytest -p dtf_pytest_remote ARGS`` with the
worker's configured test Python, which has the suite's dependencies but need not have DTF installed
(a frozen worker has no pytest of its own at all). It plays the part of pytest-xdist's ``remote.py``.

The session collects once (the suite is imported once per process), then replaces
``pytest_runtestloop`` with a loop over commands read from stdin, one JSON object per line:

    {"cmd": "run", "id": str, "nodeids": [str] | null, "shard": [i, n] | null, "digest": str | null,
     "verbose": int}   # the client's -v/-q level: a failed assertion's explanation depends on it
    {"cmd": "steal", "group": "file" | "class" | "test"}   # give up the tail of the running chunk
    {"cmd": "exit"}

and answers on a private copy of the original stdout (fd 1 itself is pointed at stderr, so whatever a
test or plugin prints cannot corrupt the protocol), one JSON object per line:

    {"ev": "ready", "collected": n, "deselected": n, "digest": str, "errors": [report], "python": str,
     # errors: the failed and the skipped collection reports
     "pytest": str, "collect_seconds": float}
    {"ev": "test", "nodeid": str, "reports": [serialized TestReport, ...],      # per test, in order
     "group": str | None}                                                    # its xdist_group mark
    {"ev": "warning", "nodeid": str, "when": str, "message": str, "category": str, "filename": str,
     "lineno": int}
    {"ev": "stolen", "id": str, "nodeids": [str]}   # the answer to a steal: exactly the ids given up
    {"ev": "done", "id": str, "missing": [nodeid], "nodeids": [str] | null}

Work stealing: between two tests of a chunk the session looks (without blocking) for a ``steal``
command. The test about to run was already named as the previous one's ``nextitem`` (its fixtures'
teardown depended on it), so it stays; of the tests after it, whole groups (file, class or test, as the
client groups; an ``xdist_group`` mark always wins), those of the next test's group excepted, are given
up from the end, about half of what is left. The ``stolen`` answer names them, and they are dropped from
this chunk before anything else runs: the answer, not the request, decides what moved. A steal that
arrives when no chunk runs (the chunk just ended) gets no answer; the caller reads ``done`` as "none".

``nodeids`` in ``done`` is the whole collection, sent only when the caller's ``digest`` (of the
collection it planned from) differs from this session's, so the caller can schedule what it missed.
A ``shard`` [i, n] runs the collected test files whose CRC-32 of the path is i modulo n (the first run
of a suite, before there is any history to plan from).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import select
import sys
import time
import zlib

import pytest

# The protocol channel: a private duplicate of the stdout we were started with. fd 1 then points at
# stderr, so prints (with -s, or from plugins outside capture) land in the worker's task log instead.
_PROTO = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
os.dup2(2, 1)
# Commands come on a private copy of stdin too (pytest's capture replaces sys.stdin); a test that reads
# fd 0 gets end-of-file instead of our commands.
_COMMANDS_FD = os.dup(0)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)


def _send(message: dict) -> None:
    _PROTO.write(json.dumps(message, separators=(",", ":"), default=str) + "\n")
    _PROTO.flush()


class _Commands:
    """Command lines from the worker, read blocking (between chunks) or polled (between tests)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False
        self.pending: list[dict] = []

    def _read(self) -> None:
        data = os.read(self.fd, 1 << 16)
        if not data:
            self.eof = True
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        self.pending.extend(json.loads(line) for line in lines if line.strip())

    def poll(self) -> list[dict]:
        """The commands that have arrived, without waiting."""
        try:
            while not self.eof and select.select([self.fd], [], [], 0)[0]:
                self._read()
        except (OSError, ValueError):
            pass  # no select on this pipe (a platform without it): no stealing, nothing else changes
        out, self.pending = self.pending, []
        return out

    def next(self) -> dict | None:
        """The next command, waiting for it; None at end of input."""
        while not self.pending and not self.eof:
            self._read()
        return self.pending.pop(0) if self.pending else None


_COMMANDS = _Commands(_COMMANDS_FD)


def steal_key(nodeid: str, group_mode: str, mark: str | None) -> str:
    """What must stay together when a chunk gives up its tail (schedule.group_key, xdist_group first)."""
    if mark:
        return "group:" + mark
    if group_mode == "test":
        return nodeid
    parts = nodeid.split("::")
    if group_mode == "class" and len(parts) > 2:
        return "::".join(parts[:2])
    return parts[0]


def give_up(keys: list[str], committed: int) -> int:
    """Where to cut a chunk's remaining tests (``keys``: their group keys, in run order) when asked for
    its tail: the index from which they are given up (``len(keys)``: nothing).

    ``keys[:committed + 1]`` stay (started, or about to start); so does the rest of the group of
    ``keys[committed]``; of what is left about half is given up, in whole groups, from the end."""
    start = committed + 1
    while start < len(keys) and keys[start] == keys[committed]:
        start += 1
    left = len(keys) - start
    if left <= 0:
        return len(keys)
    cut = len(keys)
    while cut > start and len(keys) - cut < (left + 1) // 2:
        group = keys[cut - 1]
        while cut > start and keys[cut - 1] == group:
            cut -= 1
    return cut


def collection_digest(nodeids: list[str]) -> str:
    """The digest of a collection (order-free): equal collections give equal digests."""
    return hashlib.sha256("\n".join(sorted(nodeids)).encode()).hexdigest()[:32]


def shard_of(nodeid: str, count: int, group: str | None = None) -> int:
    """Which of ``count`` first-run shards a test belongs to: by its ``xdist_group`` mark when it has
    one, else by its file, so a module (or a group) stays in one process."""
    key = f"group:{group}" if group else nodeid.split("::", 1)[0]
    return zlib.crc32(key.encode()) % count


def group_of(item: pytest.Item) -> str | None:
    """The name of a test's ``xdist_group`` mark (tests that must share a process), if any."""
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return None
    name = mark.args[0] if mark.args else mark.kwargs.get("name")
    return str(name) if name is not None else None


class _Remote:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.errors: list[dict] = []
        self.deselected = 0
        self.collect_started = time.perf_counter()
        self.current: list[dict] | None = None
        self.current_nodeid: str | None = None

    # -- configuration: this process is a worker, the client does the reporting
    def prepare(self, config: pytest.Config) -> None:
        # Plugins (junitxml, pytest-cov, ...) check for ``workerinput`` to behave as xdist workers do:
        # no XML file or combined report here; the client writes those from the replayed reports.
        config.workerinput = {"workerid": os.environ.get("DTF_WORKER_ID", "dtf"), "workercount": 1,  # type: ignore[attr-defined]
                              "testrunuid": os.environ.get("DTF_RUN_ID", "dtf")}
        config.workeroutput = {}  # type: ignore[attr-defined]
        config.option.xmlpath = None
        config.option.maxfail = 0  # -x is the client's decision, over the whole run
        for name in ("lf", "failedfirst", "newfirst", "stepwise", "stepwise_skip"):
            if hasattr(config.option, name):
                setattr(config.option, name, False)
        config.option.usepdb = False

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        # The terminal output of a worker is noise (the client prints pytest's own), but the reporter
        # must stay registered: since pytest 8.4 the assertion comparison (``assert a == b``) asks
        # ``config.get_terminal_writer()`` for its highlighter, which asserts the reporter exists, so
        # without it every rewritten comparison that fails raised an internal AssertionError and the
        # report's message was the bare "AssertionError" instead of the assertion's explanation.
        # Its writer goes to /dev/null instead (never a terminal: no markup, as in plain pytest's
        # JUnit messages when output is not a tty).
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            from _pytest.config import create_terminal_writer

            reporter._tw = create_terminal_writer(config, open(os.devnull, "w", encoding="utf-8"))
            reporter.hasmarkup = False

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.collect_started = time.perf_counter()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # Failed collections are errors; skipped ones (a module-level importorskip) count as skips.
        if report.failed or report.skipped:
            self.errors.append(self._serialize(report))

    def pytest_deselected(self, items: list) -> None:
        self.deselected += len(items)

    # -- reports
    def _serialize(self, report: object) -> dict:
        return self.config.hook.pytest_report_to_serializable(config=self.config, report=report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.current is not None:
            self.current.append(self._serialize(report))

    def pytest_warning_recorded(self, warning_message: object, when: str, nodeid: str, location: object) -> None:
        message = getattr(warning_message, "message", "")
        _send({"ev": "warning", "nodeid": nodeid, "when": when, "message": str(message),
               "category": type(message).__name__ if isinstance(message, Warning) else "UserWarning",
               "filename": str(getattr(warning_message, "filename", "")),
               "lineno": int(getattr(warning_message, "lineno", 0) or 0)})

    # -- the loop
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        items = {item.nodeid: item for item in session.items}
        nodeids = list(items)
        # The suite's modules and the collected items live as long as this session: out of the cyclic
        # collector's sight, every later full collection (during tests, chunk after chunk) skips them.
        gc.freeze()
        digest = collection_digest(nodeids)
        _send({"ev": "ready", "collected": len(nodeids), "deselected": self.deselected, "digest": digest,
               "errors": self.errors, "python": sys.version.split()[0], "pytest": pytest.__version__,
               "collect_seconds": time.perf_counter() - self.collect_started, "pid": os.getpid()})
        while True:
            command = _COMMANDS.next()
            if command is None or command.get("cmd") == "exit":
                break
            if command.get("cmd") != "run":
                continue  # a steal that came after its chunk ended: "done" already answered it
            wanted, missing = self._select(command, items, nodeids)
            # -v/-q stay off the session's arguments (they would start a new session), but the assertion
            # explanation reads the verbosity when an assertion fails: set it for this chunk.
            self.config.option.verbose = int(command.get("verbose") or 0)
            index = -1
            while index + 1 < len(wanted):
                index += 1
                item = wanted[index]
                polled = _COMMANDS.poll()
                while polled:
                    other = polled.pop(0)
                    if other.get("cmd") != "steal":
                        # "exit", or a later chunk (the commands after it are its own): read when this one is done.
                        _COMMANDS.pending[:0] = [other, *polled]
                        break
                    if other.get("cmd") == "steal":
                        mode = str(other.get("group") or "file")
                        keys = [steal_key(i.nodeid, mode, group_of(i)) for i in wanted]
                        cut = give_up(keys, index)
                        given, wanted = wanted[cut:], wanted[:cut]
                        _send({"ev": "stolen", "id": command.get("id"), "nodeids": [i.nodeid for i in given]})
                nextitem = wanted[index + 1] if index + 1 < len(wanted) else None
                self.current, self.current_nodeid = [], item.nodeid
                # Captured sections of an earlier run of the same item must not repeat in this one.
                item._report_sections = []
                item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                _send({"ev": "test", "nodeid": item.nodeid, "reports": self.current, "group": group_of(item)})
                self.current = self.current_nodeid = None
                if session.shouldstop:
                    # pytest.exit() or a KeyboardInterrupt inside a test: this process is done.
                    _send({"ev": "done", "id": command.get("id"), "missing": missing, "stopped": str(session.shouldstop)})
                    return True
                session.shouldfail = False
            self._forget_reports()
            mismatch = command.get("digest") not in (None, digest)
            _send({"ev": "done", "id": command.get("id"), "missing": missing,
                   "nodeids": nodeids if mismatch else None})
        return True

    def _forget_reports(self) -> None:
        """Drop what pytest's terminal reporter kept of the chunk (every report, for a summary nobody
        reads): a session that runs the suite run after run would otherwise grow, and its collections
        slow down, with each run."""
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is None:
            return
        stats = getattr(reporter, "stats", None)
        if isinstance(stats, dict):
            stats.clear()
        reported = getattr(reporter, "_progress_nodeids_reported", None)
        if isinstance(reported, set):
            reported.clear()

    @staticmethod
    def _select(command: dict, items: dict, nodeids: list[str]) -> tuple[list, list[str]]:
        shard = command.get("shard")
        if shard:
            index, count = int(shard[0]), int(shard[1])
            return [items[n] for n in nodeids if shard_of(n, count, group_of(items[n])) == index], []
        wanted, missing = set(), []
        for nodeid in command.get("nodeids") or []:
            if nodeid in items:
                wanted.add(nodeid)
            else:
                missing.append(nodeid)
        # Collection order, whatever order the chunk named them in: module and class fixtures are set up
        # once per run of neighbours, and order-dependent suites behave as under plain pytest.
        return [items[n] for n in nodeids if n in wanted], missing


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # Before any pytest_configure: junitxml, cacheprovider and friends read their options there.
    remote = _Remote(config)
    remote.prepare(config)
    config.pluginmanager.register(remote, "dtf_remote")
