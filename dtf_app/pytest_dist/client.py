"""``dtf pytest [PYTEST ARGS...]``: run a pytest suite over the cluster's workers, report it as pytest.

The client is pytest itself with one more plugin, :class:`DistPlugin` (the part pytest-xdist's
``dsession.py`` plays): ``pytest.main(ARGS, plugins=[DistPlugin])`` parses the arguments, loads the
rootdir's configuration and runs pytest's reporting plugins (terminal, junitxml, cacheprovider ...), but
collects and runs nothing locally. Instead the plugin

1. bundles the rootdir (content-addressed, see :mod:`.bundle`) and uploads it, unless ``--pyargs``
   names installed packages, which then run from each worker's environment;
2. plans chunks: from the suite's duration history in DuckDB, longest first (:mod:`.schedule`), or, on
   the first run of a suite, as shards of the collection that each worker session computes itself;
3. submits the chunks as ``test`` tasks of one run id (durable, visible in ``dtf tasks``, routed like
   any task), and as chunks finish replays their serialized reports through pytest's own hooks
   (``pytest_report_from_serializable`` then ``pytest_runtest_logreport``), so the terminal summary,
   ``-v``/``-q``, ``--junitxml``, ``-x``, ``--lf`` and the exit code are pytest's own.

The run lives in the cluster: if this process dies, the chunks still finish, and
``dtf pytest --attach RUN [ARGS]`` replays the whole run (waiting for what is left).

Options of dtf itself (the rest goes to pytest): ``--coordinator``, ``--api-key``, ``--data-dir``,
``--config`` (as for every dtf command), ``--attach RUN``, ``--reruns N`` (a failing test runs again, on
another worker when there is one; one that passes there is reported flaky), ``--dtf-group file|class|test`` (what must stay
in one chunk; default file), ``--dtf-no-history`` (plan as on a first run), ``--dtf-timeout S`` (per chunk), ``--dtf-client-plugins auto|all`` (see :func:`needs_plugins`).

Reports stream: workers post each finished test to the coordinator's run stream
(:mod:`dtf_app.coordinator.pytest_stream`), which this client long-polls and replays at once; a chunk's
stored result, fetched when it finishes, fills in whatever the stream missed (each test once). When a
worker goes idle with no chunk left to take, the client asks a running chunk to give up its tail; the
worker's session answers with the tests it dropped and the coordinator submits them as a new chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from dtf_app.protocol import TERMINAL_STATES
from dtf_app.pytest_dist import bundle as bundlemod
from dtf_app.pytest_dist.chunks import expand_reports, suite_key
from dtf_app.pytest_dist.schedule import GROUPS, capacity, plan_chunks

POLL_MAX = 0.25
LISTING_INTERVAL = 0.25
"""The chunks' states are looked at at most this often (events in between are replayed at once)."""
FULL_VIEW_BATCH = 200
STREAM_WAIT_MS = 250
"""Long poll of the run's live events: answered at once when there are some, else after this."""
STEAL_MIN_SECONDS = 1.0
"""A chunk's tail is only worth stealing when it is estimated to take longer than a new chunk costs."""
UNKNOWN_TEST_SECONDS = 0.05
CLIENT_PLUGIN_MODES = ("auto", "all")
SHARDS_PER_SLOT = 3
DEFAULT_CHUNK_TIMEOUT = 3600
# pytest options that only concern reporting: they stay on the client and are not sent to workers, so
# `-v` or `--junitxml` neither change the suite's history key nor start new worker sessions.
_CLIENT_FLAGS = frozenset({"-v", "-vv", "-vvv", "-q", "-qq", "--verbose", "--quiet", "-x", "--exitfirst",
                           "--lf", "--last-failed", "--ff", "--failed-first", "--nf", "--new-first", "--sw",
                           "--stepwise", "--sw-skip", "--stepwise-skip", "--no-header", "--no-summary",
                           "--cache-clear", "--co", "--collect-only", "--strict-markers"})
_CLIENT_VALUED = frozenset({"--maxfail", "--junitxml", "--junit-xml", "--junit-prefix", "--durations",
                            "--durations-min", "--color", "--code-highlight", "-r", "--lfnf",
                            "--last-failed-no-failures", "--report-log"})
_SHORT_CLIENT = frozenset("xvq")
_SHORT_ANY = frozenset("xvqsl")
_REFUSED = {"--pdb": "a debugger needs the test in this process: run it with plain pytest",
            "--trace": "a debugger needs the test in this process: run it with plain pytest",
            "-n": "dtf pytest distributes over the cluster itself: drop pytest-xdist's -n",
            "--numprocesses": "dtf pytest distributes over the cluster itself: drop pytest-xdist's -n",
            "--co": "collection happens on the workers: run --collect-only with plain pytest",
            "--collect-only": "collection happens on the workers: run --collect-only with plain pytest"}


HELP = """usage: dtf pytest [DTF OPTIONS] [PYTEST ARGS...]

Runs a pytest suite on the cluster's workers; the output, --junitxml, -x, -k/-m, --lf and the exit code
are pytest's own. dtf options (everything else goes to pytest):
  --coordinator URL[,URL...]  --api-key K  --data-dir D  --config FILE   where the cluster is
  --attach RUN           replay run RUN (waiting for what is left) instead of starting one
  --reruns N             run a failing test again, on another worker when there is one (flaky if it passes)
  --dtf-group G          what stays in one chunk: file (default), class or test; xdist_group marks always
  --dtf-no-history       plan as on a first run (shards by file) instead of from the duration history
  --dtf-timeout S        timeout of each chunk in seconds (default 3600)
  --dtf-client-plugins M auto (default): this process loads the environment's pytest plugins only when
                         the arguments or the ini file use an option only a plugin knows; all: always
Workers run chunks with their test_python setting (DTF_TEST_PYTHON): the Python with pytest and the
suite's dependencies. Refused: -n (use the cluster), --pdb/--trace, --collect-only.
"""


class DistUsageError(Exception):
    """Bad ``dtf pytest`` arguments (exit code 2)."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split dtf's own options from pytest's. Raises DistUsageError."""
    parser = argparse.ArgumentParser(prog="dtf pytest", add_help=False, allow_abbrev=False)
    parser.add_argument("--coordinator")
    parser.add_argument("--api-key")
    parser.add_argument("--data-dir")
    parser.add_argument("--config")
    parser.add_argument("--attach", metavar="RUN")
    parser.add_argument("--dtf-group", default="file")
    parser.add_argument("--dtf-no-history", action="store_true")
    parser.add_argument("--dtf-timeout", type=float, default=DEFAULT_CHUNK_TIMEOUT)
    parser.add_argument("--reruns", type=int, default=0)
    parser.add_argument("--dtf-client-plugins", default="auto")
    try:
        opts, rest = parser.parse_known_args(argv)
    except SystemExit:
        raise DistUsageError("bad dtf pytest option (see dtf pytest --help)") from None
    if opts.dtf_group not in GROUPS:
        raise DistUsageError(f"--dtf-group must be one of {', '.join(GROUPS)}, got {opts.dtf_group!r}")
    if opts.dtf_client_plugins not in CLIENT_PLUGIN_MODES:
        raise DistUsageError(f"--dtf-client-plugins must be one of {', '.join(CLIENT_PLUGIN_MODES)}, "
                             f"got {opts.dtf_client_plugins!r}")
    if not 0 <= opts.reruns <= 10:
        raise DistUsageError(f"--reruns must be from 0 to 10, got {opts.reruns}")
    if not opts.dtf_timeout > 0:
        raise DistUsageError("--dtf-timeout must be a positive number of seconds")
    for token in rest:
        name = token.split("=", 1)[0]
        if name in _REFUSED:
            raise DistUsageError(f"{name} cannot be used with dtf pytest: {_REFUSED[name]}")
    return opts, rest


def worker_args(args: list[str]) -> list[str]:
    """The pytest arguments a worker session gets: ``args`` without the reporting-only options."""
    out: list[str] = []
    skip_next = False
    for token in args:
        if skip_next:
            skip_next = False
            continue
        name = token.split("=", 1)[0]
        if token in _CLIENT_FLAGS:
            continue
        if name in _CLIENT_VALUED:
            skip_next = "=" not in token
            continue
        if token.startswith("-r") and len(token) > 2 and not token.startswith("--"):
            continue  # -rA, -rfE: the summary's report chars
        if token.startswith("-") and not token.startswith("--") and len(token) > 2 and set(token[1:]) <= _SHORT_ANY:
            kept = "".join(c for c in token[1:] if c not in _SHORT_CLIENT)
            if kept:
                out.append("-" + kept)
            continue
        out.append(token)
    return out


def _rewrite_paths(args: list[str], invocation: Path, rootdir: Path) -> list[str]:
    """Path arguments relative to the rootdir (where the worker starts pytest inside the bundle)."""
    out = []
    has_path = False
    for token in args:
        prefix, value = "", token
        for option in ("--ignore=", "--ignore-glob=", "--deselect="):
            if token.startswith(option):
                prefix, value = option, token[len(option):]
        if value.startswith("-") and not prefix:
            out.append(token)
            continue
        path_part, sep, rest = value.partition("::")
        candidate = (invocation / path_part)
        if path_part and candidate.exists():
            rel = os.path.relpath(candidate.resolve(), rootdir)
            if rel == ".." or rel.startswith(".." + os.sep):
                raise DistUsageError(f"{path_part} is outside pytest's rootdir {rootdir}, which is what gets "
                                     "bundled; run dtf pytest from a directory that contains it")
            rel = Path(rel).as_posix()
            out.append(prefix + rel + sep + rest)
            has_path = has_path or not prefix
        else:
            out.append(token)
    if not has_path and invocation.resolve() != rootdir.resolve():
        # Plain pytest collects the invocation directory when no path is given.
        rel = Path(os.path.relpath(invocation.resolve(), rootdir)).as_posix()
        if not rel.startswith(".."):
            out.append(rel)
    return out


class DistPlugin:
    """The client-side pytest plugin: run the session's tests on the cluster, replay their reports."""

    def __init__(self, opts: argparse.Namespace, target: Any, raw_args: list[str]) -> None:
        self.opts = opts
        self.target = target
        self.client: Any = None
        self.raw_args = raw_args
        self.run_id = opts.attach or uuid.uuid4().hex[:12]
        self.error: Exception | None = None
        self.exit_code: int | None = None
        self._replayed_collect: set[str] = set()
        self._deselected_done = False
        self._processed: set[str] = set()
        self._planned: set[str] = set()
        self._chunk_no = 0
        self._base: dict[str, Any] = {}
        # Per chunk: (its worker's bundle root, this rootdir); workers unpack bundles in different places.
        self._task_paths: dict[str, tuple[str, str] | None] = {}
        self._session_warnings: set[tuple[Any, Any, Any]] = set()
        self._collect_failures = 0
        self._worker_ids: list[str] = []
        self._attempts: dict[str, int] = {}
        self._held: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        self.flaky: list[tuple[str, str, str]] = []
        self.rootdir = Path.cwd()
        # Streaming and stealing (see _follow).
        self._event_seq = 0
        self._tasks: dict[str, dict[str, Any]] = {}
        self._ready: set[str] = set()
        self._seen: set[tuple[str, str]] = set()
        self._reported: dict[str, set[str]] = {}
        self._stream_attempt: dict[str, Any] = {}
        self._running_since: dict[str, float] = {}
        self._rerun_wanted: dict[str, list[str]] = {}
        self._rerun_tasks: set[str] = set()
        self._steal_out: dict[str, str] = {}
        self._steal_none: set[str] = set()
        self._slots: dict[str, int] = {}
        self._durations: dict[str, float] = {}

    # -- pytest hooks
    def pytest_configure(self, config: Any) -> None:
        try:
            from _pytest.unraisableexception import gc_collect_iterations_key
        except ImportError:
            return
        # No test code runs in this process, so nothing here can leave an unraisable exception behind;
        # pytest's five full collections at the end (over every replayed report) would only delay exit.
        config.stash[gc_collect_iterations_key] = 0

    def pytest_report_teststatus(self, report: Any, config: Any) -> Any:
        if getattr(report, "outcome", None) == "rerun":
            return "rerun", "R", ("RERUN", {"yellow": True})
        return None

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.flaky:
            terminalreporter.write_sep("=", "flaky tests (failed, then passed on a rerun)", yellow=True)
            for nodeid, failed_on, passed_on in self.flaky:
                terminalreporter.write_line(f"FLAKY {nodeid} - failed on {failed_on}, passed on {passed_on}")

    # tryfirst: before the terminal reporter's own pytest_collection (it would print "collecting ...").
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: Any) -> bool:
        return True  # the workers collect; nothing is imported here

    def pytest_runtestloop(self, session: Any) -> bool:
        config = session.config
        self.rootdir = Path(config.rootpath)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        try:
            self._connect()
            if self.opts.attach:
                task_ids = self._attach(session, reporter)
            else:
                task_ids = self._submit(session, reporter)
            self._follow(session, reporter, task_ids)
        except KeyboardInterrupt:
            self._say(reporter, f"dtf: interrupted; run {self.run_id} goes on in the cluster: "
                                f"dtf pytest --attach {self.run_id} shows it")
            raise
        except (bundlemod.BundleError, DistUsageError) as exc:
            self.error, self.exit_code = exc, 2
            raise pytest.UsageError(str(exc)) from None
        except Exception as exc:
            from dtf_app.client import ClientError

            if not isinstance(exc, ClientError):
                raise
            self.error, self.exit_code = exc, exc.exit_code
            self._say(reporter, f"dtf: error: {exc.message}")
            raise session.Interrupted(f"dtf: {exc.message}") from None
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def _connect(self) -> None:
        # httpx (and anyio with it) is imported only now: imported before pytest.main, pytest would warn
        # that the anyio plugin "cannot be rewritten", a warning plain pytest does not print.
        from dtf_app.client import Client

        origin = self.target.url_source if self.target.url_source.endswith("node.json") else None
        self.client = Client(self.target.urls, self.target.api_key, origin=origin)
        self.client.status()  # unreachable (3) or refused (4): say so before submitting anything

    def pytest_unconfigure(self, config: Any) -> None:
        if self.client is not None:
            self.client.close()

    # -- planning and submission
    def _submit(self, session: Any, reporter: Any) -> list[str]:
        config = session.config
        invocation = Path(config.invocation_params.dir)
        rootdir = Path(config.rootpath)
        pyargs = bool(config.getoption("pyargs", False))
        args = worker_args(self.raw_args)
        bundle_hash = None
        if pyargs:
            where = "pyargs"
        else:
            args = _rewrite_paths(args, invocation, rootdir)
            bundle_hash, data, files = bundlemod.make_bundle(rootdir)
            self._upload(bundle_hash, data)
            where = f"bundle {bundle_hash[:12]} ({files} files, {len(data) // 1024} KiB)"
        suite = suite_key(None, pyargs, str(rootdir), args)
        workers = [w for w in self.client.workers("online") if w]
        if not workers:
            from dtf_app.client import ClientError

            raise ClientError("no worker is online to run the suite (start some: dtf up --workers 2)", 3)
        slot_counts = [(w["worker_id"], int(w.get("max_concurrent_tasks") or 1)) for w in workers]
        slots = sum(n for _, n in slot_counts)
        self._worker_ids = [w["worker_id"] for w in workers]
        self._slots = dict(slot_counts)
        history = {} if self.opts.dtf_no_history else self.client.request(
            "GET", "/api/pytest/history", params={"suite": suite})
        # Durations come normalised to an average worker; the capacity counts each slot by its worker's
        # measured speed factor (1.0 for a worker without enough history), see schedule.worker_speeds.
        durations: dict[str, float] = dict(history.get("tests") or {})
        self._durations = durations
        speeds: dict[str, float] = {w: float(f) for w, f in (history.get("worker_speeds") or {}).items()
                                    if isinstance(f, int | float) and f > 0}
        effective = capacity(slot_counts, speeds)
        marks: dict[str, str] = dict(history.get("groups") or {})
        lastfailed = self._lastfailed(config)
        self._base = {"run_id": self.run_id, "suite": suite, "args": args, "bundle": bundle_hash, "workdir": "",
                      "verbose": _verbosity(config)}
        complete = durations and int(history.get("collected") or 0) == len(durations)
        if lastfailed is not None:
            nodeids = sorted(lastfailed)
            chunks = [self._chunk(nodeids=c, digest=history.get("digest") if complete else None)
                      for c in plan_chunks(nodeids, durations, effective, self.opts.dtf_group, marks)]
            self._planned = set(nodeids)
            how = f"{len(nodeids)} last-failed tests"
            session.testscollected = len(nodeids)
        elif complete:
            nodeids = list(durations)
            chunks = [self._chunk(nodeids=c, digest=history["digest"])
                      for c in plan_chunks(nodeids, durations, effective, self.opts.dtf_group, marks)]
            self._planned = set(nodeids)
            how = f"{len(nodeids)} tests planned from history, longest first"
            known = {w: speeds[w] for w in self._worker_ids if w in speeds}
            if known:
                how += " (worker speed factors " + ", ".join(f"{w} {f:.2f}" for w, f in sorted(known.items())) + ")"
            session.testscollected = len(nodeids)
        else:
            count = max(1, slots * SHARDS_PER_SLOT)
            chunks = [self._chunk(shard=[i, count]) for i in range(count)]
            how = "no history yet: shards by file"
        created = self.client.submit(chunks)
        self._say(reporter, f"dtf: run {self.run_id}: {len(chunks)} chunks on {len(workers)} workers "
                            f"({slots} slots), {where}; {how}")
        return [t["task_id"] for t in created]

    def _chunk(self, *, nodeids: list[str] | None = None, shard: list[int] | None = None,
               digest: str | None = None) -> dict[str, Any]:
        self._chunk_no += 1
        spec = dict(self._base, chunk=self._chunk_no, nodeids=nodeids, shard=shard, digest=digest)
        return {"type": "test", "name": f"pytest {self.run_id} #{self._chunk_no}",
                "config": {"pytest_dist": spec}, "timeout_seconds": self.opts.dtf_timeout, "max_retries": 2}

    @staticmethod
    def _lastfailed(config: Any) -> set[str] | None:
        if not config.getoption("lf", False) or config.cache is None:
            return None
        failed = config.cache.get("cache/lastfailed", {})
        return set(failed) or None

    def _upload(self, digest: str, data: bytes) -> None:
        import httpx

        from dtf_app.client import ClientError

        headers = {"X-API-Key": self.client.api_key} if self.client.api_key else {}
        url = f"{self.client.url}/api/bundles/{digest}"
        try:
            with httpx.Client(timeout=120, headers=headers) as http:
                if http.head(url).status_code == 200:
                    return
                response = http.put(url, content=data)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot upload the suite bundle to {self.client.url}: {exc}", 3) from None
        if response.status_code in (401, 403):
            raise ClientError(f"the coordinator refused the bundle upload ({response.status_code}): "
                              f"{response.text[:300]}", 4)
        if response.status_code != 201:
            raise ClientError(f"the coordinator refused the bundle upload ({response.status_code}): "
                              f"{response.text[:300]}", 2)

    def _attach(self, session: Any, reporter: Any) -> list[str]:
        run = self.client.request("GET", f"/api/pytest/runs/{self.run_id}")
        tasks = run["tasks"]
        spec = tasks[0]["config"]["pytest_dist"]
        self._base = {k: spec.get(k) for k in ("run_id", "suite", "args", "bundle", "workdir")}
        self._base["verbose"] = _verbosity(session.config)
        self._chunk_no = max(t["config"]["pytest_dist"].get("chunk", 0) for t in tasks)
        for task in tasks:
            self._planned.update(task["config"]["pytest_dist"].get("nodeids") or [])
        if self._planned:
            session.testscollected = len(self._planned)
        self._say(reporter, f"dtf: attached to run {self.run_id}: {len(tasks)} chunks")
        return [t["task_id"] for t in tasks]

    # -- following the run
    def _follow(self, session: Any, reporter: Any, task_ids: list[str]) -> None:
        """Replay tests as their chunks stream them; a finished chunk's stored result fills any gap.

        Each loop: a long poll of the run's live events (per-test reports, steal answers), then the run's
        task list (finished chunks, new ones such as a stolen tail), then, when a worker has gone idle
        while chunks still run, a steal request for the tail of the chunk with the most work left."""
        pending = set(task_ids)
        finished: set[str] = set()
        last_listing = -LISTING_INTERVAL
        while pending:
            try:
                batch = self.client.request("GET", f"/api/pytest/runs/{self.run_id}/events",
                                            params={"after": self._event_seq, "wait_ms": STREAM_WAIT_MS})
            except Exception as exc:
                from dtf_app.client import ClientError

                if not isinstance(exc, ClientError) or exc.exit_code != 2:
                    raise
                batch = {"events": [], "next": self._event_seq}  # an older coordinator: results only
                time.sleep(POLL_MAX)
            self._event_seq = int(batch.get("next") or self._event_seq)
            for event in _expand(batch.get("events") or []):
                self._on_event(session, event)
                if session.shouldfail or session.shouldstop:
                    self._cancel([t for t in pending if t not in finished])
                    return
            now = time.monotonic()
            if now - last_listing < LISTING_INTERVAL:
                continue  # events came at once: replay them, look at the chunks' states a little later
            last_listing = now
            tasks = self._listing(finished)
            for task in tasks:
                if task["task_id"] not in finished and task["task_id"] not in pending:
                    pending.add(task["task_id"])  # a stolen tail (or a chunk another client added)
            done = [t for t in tasks if t["task_id"] in pending and t["status"] in TERMINAL_STATES]
            if done:
                reports: dict[str, list[dict[str, Any]]] = {}
                # The stored reports are fetched only for chunks the stream did not deliver whole (a
                # chunk's node ids are unique, so its count of streamed tests tells).
                completed = [t for t in done if t["status"] == "completed" and not self._streamed_whole(t)]
                if completed:
                    rows = self.client.request("GET", "/api/pytest/reports",
                                               params={"task_ids": ",".join(t["task_id"] for t in completed)})
                    for row in rows["tests"]:
                        reports.setdefault(row["task_id"], []).append(row)
                for task in done:
                    pending.discard(task["task_id"])
                    finished.add(task["task_id"])
                    self._steal_out.pop(task["task_id"], None)
                    pending.update(self._replay_task(session, task, reports.get(task["task_id"], [])))
                    if session.shouldfail or session.shouldstop:
                        self._cancel([t for t in pending if t not in finished])
                        return
            self._maybe_steal(tasks)

    def _listing(self, finished: set[str]) -> list[dict[str, Any]]:
        """The run's chunks: their states from the brief listing, polled several times a second; each
        chunk's config (its node ids) and its result fetched once, when first seen and when finished."""
        brief = self.client.request("GET", f"/api/pytest/runs/{self.run_id}", params={"view": "brief"})["tasks"]
        need: list[str] = []
        for task in brief:
            task_id = task["task_id"]
            cached = self._tasks.get(task_id)
            if "config" in task:
                self._tasks[task_id] = task  # a coordinator without the brief view answered in full
            elif cached is None or (task["status"] in TERMINAL_STATES and task_id not in finished
                                    and cached.get("status") != task["status"]):
                need.append(task_id)
        for i in range(0, len(need), FULL_VIEW_BATCH):
            ids = ",".join(need[i:i + FULL_VIEW_BATCH])
            for task in self.client.request("GET", f"/api/pytest/runs/{self.run_id}",
                                            params={"task_ids": ids})["tasks"]:
                self._tasks[task["task_id"]] = task
        # The brief fields are at least as new as a cached full view (fetched just now or earlier).
        return [dict(self._tasks[t["task_id"]], **t) if t["task_id"] in self._tasks else t for t in brief]

    def _streamed_whole(self, task: dict[str, Any]) -> bool:
        metrics = (task.get("result") or {}).get("metrics") or {}
        total = metrics.get("tests_total")
        streamed = self._reported.get(task["task_id"], set())
        return (task["task_id"] in self._ready and isinstance(total, int) and total == len(streamed)
                and (task.get("attempts") or 1) == self._stream_attempt.get(task["task_id"]))

    def _on_event(self, session: Any, event: dict[str, Any]) -> None:
        kind, task_id = event.get("kind"), str(event.get("task_id"))
        if kind == "ready":
            self._running_since.setdefault(task_id, time.monotonic())
            self._task_paths[task_id] = self._paths_for(event.get("working_dir"))  # this attempt's worker
            if task_id not in self._ready:
                self._ready.add(task_id)
                raw = {k: event.get(k) for k in ("collect_errors", "collected", "deselected", "warnings")}
                self._on_ready(session, raw, self._task_paths[task_id])
        elif kind == "test" and task_id in self._ready:
            row = event.get("row")
            if isinstance(row, dict) and isinstance(row.get("nodeid"), str):
                if self._stream_attempt.get(task_id) != event.get("attempt"):
                    # Another attempt (a retry): count only its tests towards "streamed whole".
                    self._stream_attempt[task_id] = event.get("attempt")
                    self._reported[task_id] = set()
                self._reported[task_id].add(row["nodeid"])
                task = {"task_id": task_id, "worker_id": event.get("worker_id")}
                if self._replay_row(session, task, row):
                    self._rerun_wanted.setdefault(task_id, []).append(row["nodeid"])
        elif kind == "stolen":
            self._steal_out.pop(task_id, None)
            moved = event.get("nodeids") or []
            if not moved:
                self._steal_none.add(task_id)
            elif _verbosity(session.config) > 0:
                self._say(session.config.pluginmanager.get_plugin("terminalreporter"),
                          f"dtf: {len(moved)} tests moved from chunk {task_id} to {event.get('new_task')}")

    def _maybe_steal(self, tasks: list[dict[str, Any]]) -> None:
        """Work stealing at the end of a run: a worker with a free slot and nothing of this run left to
        take asks the running chunk with the most estimated work left to give up its tail."""
        if not self._slots or any(t["status"] in ("pending", "blocked", "assigned") for t in tasks):
            return
        running = [t for t in tasks if t["status"] == "running"]
        busy: dict[str, int] = {}
        for task in running:
            busy[task.get("worker_id") or ""] = busy.get(task.get("worker_id") or "", 0) + 1
        asked_for = set(self._steal_out.values())
        idle = [w for w, n in self._slots.items() if busy.get(w, 0) < n and w not in asked_for]
        if not idle:
            return
        now = time.monotonic()
        candidates = []
        for task in running:
            spec = (task.get("config") or {}).get("pytest_dist") or {}
            ids = spec.get("nodeids")
            if task["task_id"] in self._steal_out or task["task_id"] in self._steal_none or not ids \
                    or task["task_id"] not in self._ready:
                continue
            done = self._reported.get(task["task_id"], set())
            left = [n for n in ids if n not in done]
            if len(left) < 2:
                continue
            by_history = sum(self._durations.get(n, UNKNOWN_TEST_SECONDS) for n in left)
            elapsed = now - self._running_since.get(task["task_id"], now)
            by_rate = elapsed / len(done) * len(left) if done else elapsed + by_history
            estimate = max(by_history, by_rate)
            if estimate >= STEAL_MIN_SECONDS:
                candidates.append((estimate, task))
        candidates.sort(key=lambda c: -c[0])
        for worker, (_, task) in zip(idle, candidates, strict=False):
            from dtf_app.client import ClientError

            try:
                self.client.request("POST", f"/api/pytest/runs/{self.run_id}/steal", needs="submit",
                                    body={"task_id": task["task_id"], "for_worker": worker,
                                          "group": self.opts.dtf_group})
            except ClientError:
                continue  # finished meanwhile
            self._steal_out[task["task_id"]] = worker

    def _paths_for(self, working_dir: Any) -> tuple[str, str] | None:
        if not working_dir or not self._base.get("bundle"):
            return None
        return str(working_dir).rstrip("/") + "/", str(self.rootdir).rstrip("/") + "/"

    def _on_ready(self, session: Any, raw: dict[str, Any], paths: tuple[str, str] | None) -> None:
        """A chunk's collection facts (errors, deselected, warnings), each shown once per run."""
        config = session.config
        for data in raw.get("collect_errors") or []:
            nodeid = data.get("nodeid", "")
            if nodeid in self._replayed_collect:
                continue
            self._replayed_collect.add(nodeid)
            if data.get("outcome") == "failed":
                self._collect_failures += 1
            config.hook.pytest_collectreport(report=_deserialize(config, data, paths))
        if self._collect_failures and not config.getoption("continue_on_collection_errors", False):
            count = self._collect_failures
            session.shouldstop = f"{count} error{'s' if count != 1 else ''} during collection"
            return
        if not self._deselected_done:
            self._deselected_done = True
            if not self._planned and raw.get("collected") is not None:
                session.testscollected = int(raw["collected"])
            if raw.get("deselected"):
                config.hook.pytest_deselected(items=[_Deselected()] * int(raw["deselected"]))
        for warning in raw.get("warnings") or []:
            # Each worker session reports its configuration/collection warnings once: show each once.
            key = (warning.get("message"), warning.get("filename"), warning.get("lineno"))
            if key not in self._session_warnings:
                self._session_warnings.add(key)
                _replay_warning(config, warning)

    def _replay_row(self, session: Any, task: dict[str, Any], row: dict[str, Any]) -> bool:
        """Replay a test's row unless it was already (streamed, or run by another chunk); True: rerun it."""
        task_id = task["task_id"]
        key = (task_id if task_id in self._rerun_tasks else "", row["nodeid"])
        if key in self._seen:
            return False
        self._seen.add(key)
        return self._replay_or_hold(session, task, row)

    def _replay_task(self, session: Any, task: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
        """Finish one chunk from its stored result (what the stream missed); returns new chunks' ids."""
        if task["status"] != "completed":
            self._chunk_failed(session, task, task.get("error") or task["status"])
            return []
        result = task.get("result") or {}
        raw = ((result.get("raw_data") or {}).get("pytest_dist")) or {}
        if task["task_id"] not in self._ready:
            self._ready.add(task["task_id"])
            self._on_ready(session, raw, self._bundle_paths(result))
        else:
            # Streamed already; but warnings raised outside any test came only with the result.
            self._on_ready(session, {"warnings": raw.get("warnings")}, self._bundle_paths(result))
        if session.shouldstop:
            return []
        self._task_paths[task["task_id"]] = self._bundle_paths(result)
        rerun: list[str] = list(self._rerun_wanted.pop(task["task_id"], []))
        for row in rows:
            if self._replay_row(session, task, row):
                rerun.append(row["nodeid"])
            if session.shouldfail or session.shouldstop:
                return []
        extra: list[str] = []
        if rerun:
            # --reruns: the failures run again, on another worker when there is one.
            others = [w for w in self._worker_ids if w != task.get("worker_id")]
            spec = self._chunk(nodeids=rerun, digest=None)
            if others and task.get("worker_id"):
                spec["requirements"] = {"exclude_workers": [task["worker_id"]]}
            created = [t["task_id"] for t in self.client.submit([spec])]
            self._rerun_tasks.update(created)
            extra += created
        if raw.get("nodeids") is not None and self._planned:
            # The workers' collection differs from the history the plan came from: run what it missed.
            new = [n for n in raw["nodeids"] if n not in self._planned]
            if new:
                self._planned.update(new)
                session.testscollected = len(self._planned)
                spec = self._chunk(nodeids=new, digest=raw.get("digest"))
                created = self.client.submit([spec])
                extra += [t["task_id"] for t in created]
        return extra

    def _bundle_paths(self, result: dict[str, Any]) -> tuple[str, str] | None:
        """(the worker's bundle root, this rootdir), to map paths in reports back; None for --pyargs."""
        worker_root = (result.get("raw_data") or {}).get("working_dir") if self._base.get("bundle") else None
        if not worker_root:
            return None
        return worker_root.rstrip("/") + "/", str(self.rootdir).rstrip("/") + "/"

    def _replay_or_hold(self, session: Any, task: dict[str, Any], row: dict[str, Any]) -> bool:
        """Replay a test's reports, or hold a failure back for a rerun (True: rerun it)."""
        nodeid = row["nodeid"]
        failed = row.get("outcome") in ("failed", "error")
        earlier = self._held.get(nodeid, [])
        if failed and self._attempts.get(nodeid, 0) < self.opts.reruns:
            self._attempts[nodeid] = self._attempts.get(nodeid, 0) + 1
            self._held[nodeid] = [*earlier, (row, task.get("worker_id"))]
            return True
        self._held.pop(nodeid, None)
        for previous, _worker in earlier:
            self._replay_test(session, previous, as_rerun=True, paths=self._task_paths.get(task["task_id"]))
        if earlier and not failed:
            self.flaky.append((nodeid, str(earlier[-1][1]), str(task.get("worker_id"))))
        self._replay_test(session, row, paths=self._task_paths.get(task["task_id"]))
        return False

    def _replay_test(self, session: Any, row: dict[str, Any], *, as_rerun: bool = False,
                     paths: tuple[str, str] | None = None) -> None:
        config = session.config
        packed = row.get("report") or {}
        reports = expand_reports(row["nodeid"], packed.get("r") or [])
        if as_rerun:
            # An earlier failing attempt shows as pytest-rerunfailures shows it: one "rerun" report.
            reports = [dict(r, outcome="rerun") for r in reports if r.get("outcome") == "failed"][:1]
        if not reports:
            return
        location = tuple(reports[0].get("location") or (row["nodeid"], None, row["nodeid"]))
        config.hook.pytest_runtest_logstart(nodeid=row["nodeid"], location=location)
        for warning in packed.get("w") or []:
            _replay_warning(config, warning)
        for data in reports:
            config.hook.pytest_runtest_logreport(report=_deserialize(config, data, paths))
        config.hook.pytest_runtest_logfinish(nodeid=row["nodeid"], location=location)

    def _chunk_failed(self, session: Any, task: dict[str, Any], why: str) -> None:
        """A chunk that could not run is an error in pytest's own summary, never a silent "0 tests"."""
        from _pytest.reports import CollectReport

        config = session.config
        name = f"dtf chunk {task.get('name') or task['task_id']} on {task.get('worker_id') or 'no worker'}"
        report = CollectReport(name, "failed", f"{name} could not run: {why}", [])
        config.hook.pytest_collectreport(report=report)

    def _cancel(self, task_ids: list[str]) -> None:
        from dtf_app.client import ClientError

        for task_id in task_ids:
            try:
                self.client.cancel(task_id)
            except ClientError:
                pass  # finished meanwhile

    @staticmethod
    def _say(reporter: Any, text: str) -> None:
        if reporter is not None:
            reporter.write_line(text)
        else:
            print(text, file=sys.stderr)


def _expand(events: list[dict[str, Any]]) -> Any:
    """The run stream's entries, a worker's batch (its events as one JSON string) opened up."""
    for entry in events:
        if entry.get("kind") != "batch":
            yield entry
            continue
        try:
            inner = json.loads(entry.get("events") or "[]")
        except ValueError:
            continue  # best effort: the chunk's stored result has these tests
        base = {k: entry.get(k) for k in ("task_id", "attempt", "worker_id")}
        for event in inner if isinstance(inner, list) else []:
            if isinstance(event, dict):
                yield dict(event, **base)


def _verbosity(config: Any) -> int:
    """The client's -v/-q level, for the workers' assertion explanations (clamped to what a chunk takes)."""
    level = config.getoption("verbose", 0)
    return max(-5, min(5, int(level))) if isinstance(level, int) else 0


class _Deselected:
    """Stands for a test deselected on a worker (-k/-m): the terminal reporter only counts them."""

    nodeid = ""


def _deserialize(config: Any, data: dict[str, Any], paths: tuple[str, str] | None = None) -> Any:
    """A report from its JSON form; JSON turned pytest's tuples into lists, which reporters assert on.

    ``paths`` (worker's bundle root, client's rootdir) maps the absolute paths a worker put in a skip
    reason or a crash location back to the files on this machine, as plain pytest would show them.
    """
    if paths is not None:
        # Anywhere: a skip reason, a crash location, a FixtureLookupError's text, captured output.
        text = json.dumps(data)
        old, new = json.dumps(paths[0])[1:-1], json.dumps(paths[1])[1:-1]
        if old in text:
            data = json.loads(text.replace(old, new))
    report = config.hook.pytest_report_from_serializable(config=config, data=data)
    if isinstance(report.longrepr, list):
        report.longrepr = tuple(report.longrepr)  # a skip: (path, lineno, reason)
    if isinstance(getattr(report, "location", None), list):
        report.location = tuple(report.location)
    return report


def _replay_warning(config: Any, data: dict[str, Any]) -> None:
    import builtins

    category = getattr(builtins, str(data.get("category")), None)
    if not (isinstance(category, type) and issubclass(category, Warning)):
        category = UserWarning
    message = warnings.WarningMessage(category(data.get("message", "")), category,
                                      data.get("filename") or "", int(data.get("lineno") or 0))
    config.hook.pytest_warning_recorded.call_historic(kwargs={
        "warning_message": message, "when": data.get("when") or "runtest", "nodeid": data.get("nodeid") or "",
        "location": None})


def needs_plugins(args: list[str], invocation: Path) -> bool:
    """Whether an invocation needs the environment's pytest plugins on the client: True when an argument
    (or ``addopts``, ``PYTEST_ADDOPTS``) is an option, or the ini file has a key, that core pytest does
    not define, or when that cannot be told. Plugins named with ``-p`` load either way."""
    import shlex

    try:
        from _pytest.config import get_config
        from _pytest.config.findpaths import determine_setup

        parser = get_config([])._parser
        known = {name for group in [parser._anonymous, *parser._groups] for opt in group.options
                 for name in opt.names()}
        inifile = rootdir = None
        for i, token in enumerate(args):
            for flag in ("-c", "--config-file", "--rootdir"):
                value = args[i + 1] if token == flag and i + 1 < len(args) else (
                    token.split("=", 1)[1] if token.startswith(flag + "=") else None)
                if value is not None:
                    inifile, rootdir = (inifile, value) if flag == "--rootdir" else (value, rootdir)
        _, _, inicfg = determine_setup(inifile=inifile, args=[a for a in args if not a.startswith("-")],
                                       rootdir_cmd_arg=rootdir, invocation_dir=invocation)
        # addopts and minversion are declared late, by pytest's own start-up; required_plugins is
        # unknown on purpose: the plugins it names must be loaded.
        if set(inicfg) - set(parser._inidict) - {"addopts", "minversion"}:
            return True
        addopts = inicfg.get("addopts", "")
        addopts = shlex.split(addopts) if isinstance(addopts, str) else list(addopts)
        tokens = [*args, *addopts, *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
        for token in tokens:
            if token.startswith("--"):
                if token != "--" and token.split("=", 1)[0] not in known:
                    return True
            elif token.startswith("-") and len(token) > 1 and token[:2] not in known:
                return True
        return False
    except Exception:  # any surprise (another pytest's internals): load them, as plain pytest does
        return True


def main(argv: list[str]) -> int:
    """Entry point of ``dtf pytest``; returns pytest's exit code (or dtf's: 2 usage, 3 unreachable, 4 auth)."""
    from dtf_app.client import resolve_target

    opts, pytest_args = parse_args(argv)
    if "-h" in pytest_args or "--help" in pytest_args:
        print(HELP)  # then pytest's own help, from pytest.main below
    target = resolve_target(argparse.Namespace(coordinator=opts.coordinator, api_key=opts.api_key,
                                               data_dir=opts.data_dir, config=opts.config))
    plugin = DistPlugin(opts, target, pytest_args)
    # The client runs no test code, so it needs no assertion rewriting: without --assert=plain pytest
    # rewrites (and, with no writable bytecode cache, recompiles from source) every installed plugin's
    # modules at each start, seconds of CPU before the first chunk is submitted. It goes first, so an
    # explicit --assert of the user's still wins here, and it is not among what workers get.
    autoload_was = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    if opts.dtf_client_plugins == "auto" and autoload_was is None and not needs_plugins(pytest_args, Path.cwd()):
        # The client runs no test code: the plugins that collect, parametrize or run tests (hypothesis,
        # anyio, asyncio, ...) have nothing to do here, and importing them is most of its start-up.
        os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        code = pytest.main(["--assert=plain", *pytest_args], plugins=[plugin])
    finally:
        if autoload_was is None:
            os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    if plugin.exit_code is not None:
        return plugin.exit_code
    return int(code)
