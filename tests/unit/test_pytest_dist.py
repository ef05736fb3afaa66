"""dtf pytest pieces without a cluster: chunk shape, planning, argument handling, bundles, the remote plugin.

The remote plugin is exercised in a real pytest subprocess speaking its stdin/stdout protocol.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from dtf_app.coordinator import scheduler
from dtf_app.pytest_dist import bundle as bundlemod
from dtf_app.pytest_dist.chunks import (
    ChunkError,
    compact_reports,
    expand_reports,
    suite_key,
    summarize,
    validate_chunk,
)
from dtf_app.pytest_dist.client import DistUsageError, _rewrite_paths, parse_args, worker_args
from dtf_app.pytest_dist.schedule import capacity, normalised_durations, plan_chunks, worker_speeds

REMOTE = Path(__file__).resolve().parents[2] / "dtf_app" / "pytest_dist" / "remote.py"


def chunk(**over: object) -> dict:
    return {"run_id": "r1", "chunk": 1, "suite": "s", "args": ["-q"], "bundle": None, "workdir": "",
            "nodeids": ["t.py::a"], "shard": None, "digest": None, **over}


# ------------------------------------------------------------------------------------------ chunk shape
def test_validate_chunk_accepts_nodeids_or_shard_and_names_what_is_wrong() -> None:
    assert validate_chunk(chunk())["run_id"] == "r1"
    assert validate_chunk(chunk(nodeids=None, shard=[0, 3]))["shard"] == [0, 3]
    bad = [(chunk(nodeids=None), "exactly one of nodeids"), (chunk(shard=[0, 2]), "exactly one of nodeids"),
           (chunk(nodeids=None, shard=[3, 3]), "shard must be"), (chunk(bundle="xyz"), "bundle must be"),
           (chunk(workdir="../up"), "workdir"), (chunk(run_id=""), "run_id"), (chunk(extra=1), "unknown keys"),
           (chunk(args="-q"), "args must be an array"), (chunk(verbose=9), "verbose must be"),
           (chunk(verbose=True), "verbose must be")]
    for doc, message in bad:
        with pytest.raises(ChunkError, match=message):
            validate_chunk(doc)


def test_task_validation_takes_chunks_in_place_of_test_file() -> None:
    task = scheduler.validate_task({"type": "test", "config": {"pytest_dist": chunk()}})
    assert task["config"]["pytest_dist"]["nodeids"] == ["t.py::a"]
    with pytest.raises(scheduler.TaskValidationError, match=r"task.config.pytest_dist needs exactly one"):
        scheduler.validate_task({"type": "test", "config": {"pytest_dist": chunk(nodeids=None)}})
    with pytest.raises(scheduler.TaskValidationError, match="test_file is required"):
        scheduler.validate_task({"type": "test", "config": {}})
    assert scheduler.not_prefetched(task) and not scheduler.not_prefetched({"config": {"test_file": "x"}})


def test_suite_key_depends_on_what_is_collected_and_how() -> None:
    assert suite_key(None, True, "/r", ["-q"]) == suite_key(None, True, "/r", ["-q"])
    assert suite_key(None, True, "/r", ["-q"]) != suite_key(None, True, "/r", ["-k", "x"])
    assert suite_key(None, False, "/r", []) != suite_key(None, False, "/other", [])


def test_reports_compact_and_expand_back() -> None:
    setup = {"$report_type": "TestReport", "nodeid": "t.py::a", "location": ["t.py", 1, "a"], "keywords": {"a": 1},
             "outcome": "passed", "longrepr": None, "when": "setup", "user_properties": [], "sections": [],
             "duration": 0.1, "start": 1.0, "stop": 1.1}
    call = dict(setup, when="call", outcome="failed", longrepr={"reprcrash": {"message": "boom"}})
    teardown = dict(setup, when="teardown", sections=[["Captured stdout teardown", "bye"]])
    packed = compact_reports([setup, call, teardown])
    assert packed[0] == {"when": "setup", "duration": 0.1, "start": 1.0, "stop": 1.1}
    assert "keywords" not in packed[1] and packed[2]["sections"]
    full = expand_reports("t.py::a", packed)
    assert [r["when"] for r in full] == ["setup", "call", "teardown"]
    assert full[0]["location"] == ["t.py", 1, "a"] and full[0]["outcome"] == "passed"
    row = summarize("t.py::a", full)
    assert row["outcome"] == "failed" and row["message"] == "boom" and row["duration"] == pytest.approx(0.3)


# ------------------------------------------------------------------------------------------- planning
def test_plan_is_longest_first_keeps_files_together_and_shrinks() -> None:
    durations = {f"f{i}.py::t{j}": float(i + 1) for i in range(20) for j in range(3)}
    nodeids = list(durations)
    chunks = plan_chunks(nodeids, durations, slots=2)
    flat = [n for c in chunks for n in c]
    assert sorted(flat) == sorted(nodeids)  # every test exactly once
    files = [{n.split("::")[0] for n in c} for c in chunks]
    for i, a in enumerate(files):  # a file never straddles two chunks
        assert all(not (a & b) for b in files[i + 1:])
    weights = [sum(durations[n] for n in c) for c in chunks]
    assert chunks[0][0].startswith("f19.py")  # the longest file goes first
    assert weights[-1] < weights[0]
    assert len(plan_chunks(nodeids, durations, slots=2, group="test")) >= len(chunks)
    # Tests sharing an xdist_group mark share a chunk, across files.
    marked = plan_chunks(nodeids, durations, slots=2, group="test", marks={"f19.py::t0": "db", "f0.py::t1": "db"})
    assert any({"f19.py::t0", "f0.py::t1"} <= set(c) for c in marked)
    with pytest.raises(ValueError, match="group must be"):
        plan_chunks(nodeids, durations, 2, group="module")


# ------------------------------------------------------------------------------------------- arguments
def test_worker_speed_factors_come_from_the_same_tests_on_different_workers() -> None:
    # "slow" takes 2x as long as "fast" on every shared test (and one outlier); "new" shares too few.
    rows = [(f"t.py::t{i}", w, base * f) for i, base in enumerate([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
            for w, f in (("fast", 1.0), ("slow", 2.0))]
    rows += [("t.py::t0", "new", 0.3), ("t.py::outlier", "fast", 0.1), ("t.py::outlier", "slow", 5.0)]
    rows += [("t.py::only_slow", "slow", 4.0), ("t.py::tiny", "fast", 0.0001), ("t.py::tiny", "slow", 0.01)]
    speeds = worker_speeds(rows)
    assert set(speeds) == {"fast", "slow"}  # "new" has one shared test: no factor
    assert speeds["slow"] / speeds["fast"] == pytest.approx(2.0, rel=1e-3)  # the outlier moves nothing
    durations = normalised_durations(rows, speeds)
    # A test only ever run on the slow worker counts as what an average worker would take.
    assert durations["t.py::only_slow"] == pytest.approx(4.0 / speeds["slow"])
    assert durations["t.py::t3"] == pytest.approx(0.8 / speeds["fast"], rel=1e-3)
    # Two slots on a worker twice as slow as average do the work of one average slot.
    assert capacity([("slow", 2), ("unknown", 1)], {"slow": 2.0}) == pytest.approx(2.0)
    assert worker_speeds([]) == {} and normalised_durations([], {}) == {}


def test_plan_chunk_sizes_follow_the_capacity_in_average_worker_slots() -> None:
    nodeids = [f"f{i}.py::t" for i in range(64)]
    durations = dict.fromkeys(nodeids, 1.0)
    few = plan_chunks(nodeids, durations, 1.0)
    many = plan_chunks(nodeids, durations, 4.0)
    assert sorted(n for c in many for n in c) == sorted(nodeids)
    # More capacity: smaller first chunks, more of them; never a chunk under the minimum at the end.
    assert len(many[0]) < len(few[0]) and len(many) > len(few)
    assert all(len(c) >= 1 for c in many)


def test_reporting_options_stay_on_the_client() -> None:
    args = ["-v", "-x", "--junitxml", "out.xml", "--maxfail=3", "-rA", "-xs", "-k", "foo", "--lf", "tests",
            "--tb=short", "-p", "no:cacheprovider"]
    assert worker_args(args) == ["-s", "-k", "foo", "tests", "--tb=short", "-p", "no:cacheprovider"]


def test_dtf_options_are_split_off_and_unusable_ones_refused() -> None:
    opts, rest = parse_args(["--attach", "abc", "-q", "--dtf-group", "class", "tests"])
    assert (opts.attach, opts.dtf_group, rest) == ("abc", "class", ["-q", "tests"])
    for argv, message in ((["-n", "2"], "-n cannot"), (["--pdb"], "--pdb cannot"), (["--dtf-group", "x"], "--dtf-group"),
                          (["--collect-only"], "--collect-only cannot")):
        with pytest.raises(DistUsageError, match=message):
            parse_args(argv)


def test_path_arguments_become_relative_to_the_rootdir(tmp_path: Path) -> None:
    (tmp_path / "sub" / "tests").mkdir(parents=True)
    (tmp_path / "sub" / "tests" / "test_x.py").write_text("")
    inv = tmp_path / "sub"
    assert _rewrite_paths(["tests/test_x.py::test_a", "-k", "x"], inv, tmp_path) == \
        ["sub/tests/test_x.py::test_a", "-k", "x"]
    assert _rewrite_paths(["-q"], inv, tmp_path) == ["-q", "sub"]  # no path: the invocation dir, as pytest does
    assert _rewrite_paths([f"--ignore={inv / 'tests'}"], tmp_path, tmp_path) == ["--ignore=sub/tests"]
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    with pytest.raises(DistUsageError, match="outside pytest's rootdir"):
        _rewrite_paths([str(outside)], inv, tmp_path)


# ---------------------------------------------------------------------------------------------- bundles
def _tree(root: Path) -> None:
    for name, text in {"a.py": "A", "pkg/b.py": "B", "build/out.bin": "x", "pkg/c.log": "log",
                       ".gitignore": "build/\n*.log\n", "__pycache__/a.pyc": "junk"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_bundle_respects_gitignore_and_is_deterministic(tmp_path: Path) -> None:
    _tree(tmp_path / "one")
    assert bundlemod.list_files(tmp_path / "one") == [".gitignore", "a.py", "pkg/b.py"]
    digest, data, count = bundlemod.make_bundle(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    assert bundlemod.make_bundle(tmp_path / "two")[0] == digest  # content-addressed: same tree, same hash
    (tmp_path / "two" / "a.py").write_text("changed")
    assert bundlemod.make_bundle(tmp_path / "two")[0] != digest
    out = bundlemod.unpack(data, digest, tmp_path / "cache")
    assert (out / "pkg" / "b.py").read_text() == "B" and not (out / "build").exists() and count == 3
    assert bundlemod.unpack(data, digest, tmp_path / "cache") == out  # cached


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_bundle_uses_git_when_the_rootdir_is_a_work_tree(tmp_path: Path) -> None:
    _tree(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert bundlemod.list_files(tmp_path) == [".gitignore", "a.py", "pkg/b.py"]


def test_unpack_refuses_corrupt_or_escaping_bundles(tmp_path: Path) -> None:
    with pytest.raises(bundlemod.BundleError, match="corrupted"):
        bundlemod.unpack(b"not a bundle", "0" * 64, tmp_path)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    import hashlib

    data = raw.getvalue()
    with pytest.raises(bundlemod.BundleError, match="cannot be unpacked"):
        bundlemod.unpack(data, hashlib.sha256(data).hexdigest(), tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists()


# ------------------------------------------------------------------------------------- the remote plugin
def test_remote_session_collects_once_and_runs_what_it_is_fed(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_a.py").write_text(textwrap.dedent("""
        import sys
        import pytest

        def test_one():
            print("to stdout")  # must not break the protocol on fd 1

        def test_two():
            assert sys.stdin.read() == ""  # the commands are not readable by tests

        @pytest.mark.skip(reason="no")
        @pytest.mark.xdist_group("db")
        def test_three():
            pass
    """))
    (tmp_path / "plugin").mkdir()
    shutil.copy(REMOTE, tmp_path / "plugin" / "dtf_pytest_remote.py")
    commands = [{"cmd": "run", "id": "c1", "nodeids": ["test_a.py::test_two", "test_a.py::test_one", "test_a.py::nope"]},
                {"cmd": "run", "id": "c2", "shard": [0, 1], "digest": "not-this-one"},
                {"cmd": "exit"}]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "dtf_pytest_remote", "-s", "-p", "no:cacheprovider"],
                          cwd=suite, input="".join(json.dumps(c) + "\n" for c in commands), capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path / "plugin")})
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["ev"] == "ready" and events[0]["collected"] == 3, proc.stderr
    first = events[1:events.index(next(e for e in events if e["ev"] == "done"))]
    # Collection order, not the order asked; the unknown id is reported missing.
    assert [e["nodeid"] for e in first] == ["test_a.py::test_one", "test_a.py::test_two"]
    assert all(r["outcome"] == "passed" for e in first for r in e["reports"])
    dones = [e for e in events if e["ev"] == "done"]
    assert dones[0]["missing"] == ["test_a.py::nope"] and dones[0]["nodeids"] is None
    # The same items run again in the same process; a stale digest gets the whole collection back.
    assert dones[1]["nodeids"] == ["test_a.py::test_one", "test_a.py::test_two", "test_a.py::test_three"]
    second = [e for e in events if e["ev"] == "test"][2:]
    assert [e["reports"][0]["outcome"] for e in second] == ["passed", "passed", "skipped"]
    assert [e["group"] for e in second] == [None, None, "db"]
    assert "to stdout" in proc.stderr  # prints went to stderr (the worker's task log)


def test_remote_failed_comparison_carries_pytest_s_explanation_at_the_client_s_verbosity(tmp_path: Path) -> None:
    # Regression: the session once unregistered the terminal reporter, and since pytest 8.4 a failing
    # rewritten comparison asks config.get_terminal_writer() for its highlighter: the report's crash
    # message was then an internal bare "AssertionError" instead of the assertion's explanation.
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_cmp.py").write_text(textwrap.dedent("""
        def test_lists():
            assert [1, 2, 3, 4] == [1, 2, 5, 4], "lists differ"
    """))
    (tmp_path / "plugin").mkdir()
    shutil.copy(REMOTE, tmp_path / "plugin" / "dtf_pytest_remote.py")
    commands = [{"cmd": "run", "id": "c1", "nodeids": ["test_cmp.py::test_lists"]},
                {"cmd": "run", "id": "c2", "nodeids": ["test_cmp.py::test_lists"], "verbose": 2},
                {"cmd": "exit"}]
    # pytest never truncates assertion text when it sees a CI (CI or BUILD_NUMBER set): this checks the
    # verbosity's effect, so run the session as on a developer's machine.
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("CI", "BUILD_NUMBER")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "dtf_pytest_remote", "-p", "no:cacheprovider"],
                          cwd=suite, input="".join(json.dumps(c) + "\n" for c in commands), capture_output=True,
                          text=True, timeout=120, env={**env, "PYTHONPATH": str(tmp_path / "plugin")})
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    calls = [r for e in events if e["ev"] == "test" for r in e["reports"] if r["when"] == "call"]
    assert len(calls) == 2, proc.stderr
    quiet, verbose = (c["longrepr"]["reprcrash"]["message"] for c in calls)
    assert quiet.startswith("AssertionError: lists differ\nassert [1, 2, 3, 4] == [1, 2, 5, 4]"), quiet
    assert "Use -v to get more diff" in quiet
    assert "Use -v to get more diff" not in verbose and "Full diff:" in verbose, verbose
    assert calls[0]["longrepr"]["reprcrash"]["path"].endswith("test_cmp.py")
    # The silenced reporter writes nothing on the worker's stderr (its task log).
    assert "test session starts" not in proc.stderr and "1 failed" not in proc.stderr


def test_junit_of_plain_test_rows_is_pytest_s_format_and_valid(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    import xmlschema

    from dtf_app.report import write_junit

    rows = [{"nodeid": "tests/test_x.py::test_ok", "outcome": "passed", "duration": 0.5, "message": None},
            {"nodeid": "tests/test_x.py::TestK::test_bad", "outcome": "failed", "duration": 0.1,
             "message": "AssertionError: nope"},
            {"nodeid": "tests/test_x.py::test_skip", "outcome": "skipped", "duration": 0.0, "message": "later"},
            {"nodeid": "tests/test_x.py::test_err", "outcome": "error", "duration": 0.0, "message": "fixture boom"}]
    out = tmp_path / "out.xml"
    assert write_junit(rows, str(out)) == 4
    xmlschema.XMLSchema(str(Path(__file__).resolve().parents[1] / "fixtures" / "junit-10.xsd")).validate(str(out))
    suite = ET.parse(out).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == ("4", "1", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["test_bad"].get("classname") == "tests.test_x.TestK"
    assert cases["test_bad"].find("failure").get("message") == "AssertionError: nope"
    assert cases["test_skip"].find("skipped").get("message") == "later"


def test_remote_session_gives_up_whole_groups_of_its_tail_and_says_exactly_which(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_a.py").write_text("def test_a1():\n    pass\n\ndef test_a2():\n    pass\n")
    (suite / "test_b.py").write_text("def test_b1():\n    pass\n\ndef test_b2():\n    pass\n")
    (suite / "test_c.py").write_text("def test_c1():\n    pass\n")
    (tmp_path / "plugin").mkdir()
    shutil.copy(REMOTE, tmp_path / "plugin" / "dtf_pytest_remote.py")
    every = ["test_a.py::test_a1", "test_a.py::test_a2", "test_b.py::test_b1", "test_b.py::test_b2",
             "test_c.py::test_c1"]
    # All commands arrive at once, so the steal is already waiting when the first test is about to run.
    commands = [{"cmd": "run", "id": "c1", "nodeids": every}, {"cmd": "steal", "group": "file"},
                {"cmd": "run", "id": "c2", "nodeids": every[2:]}, {"cmd": "steal", "group": "test"},
                {"cmd": "exit"}]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "dtf_pytest_remote", "-p", "no:cacheprovider"],
                          cwd=suite, input="".join(json.dumps(c) + "\n" for c in commands), capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path / "plugin")})
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [(e["ev"], e.get("nodeid") or e.get("id")) for e in events if e["ev"] != "ready"]
    # c1: test_a1 was about to start (committed) and test_a2 shares its file: they stay; the rest went,
    # answered before anything else ran, and none of it runs here.
    assert kinds[:4] == [("stolen", "c1"), ("test", "test_a.py::test_a1"), ("test", "test_a.py::test_a2"),
                         ("done", "c1")], proc.stderr
    assert events[1]["nodeids"] == every[2:]
    # c2, grouped per test: b1 is committed; of b2 and c1 the last one goes.
    assert kinds[4:] == [("stolen", "c2"), ("test", "test_b.py::test_b1"), ("test", "test_b.py::test_b2"),
                         ("done", "c2")]
    assert [e for e in events if e["ev"] == "stolen"][1]["nodeids"] == ["test_c.py::test_c1"]


def test_run_stream_buffers_events_in_order_rotates_and_hands_out_steal_requests() -> None:
    import trio

    from dtf_app.coordinator import pytest_stream

    async def main() -> None:
        streams = pytest_stream.RunStreams()
        assert (await streams.read("r", 0, 0)) == {"events": [], "next": 0, "dropped": False}
        streams.append("r", [{"kind": "test", "n": 1}, {"kind": "test", "n": 2}], [10, 10])
        got = await streams.read("r", 0, 0)
        assert [e["n"] for e in got["events"]] == [1, 2] and got["next"] == 2
        assert (await streams.read("r", 2, 0))["events"] == []

        async def later() -> None:
            await trio.sleep(0.05)
            streams.append("r", [{"kind": "test", "n": 3}], [10])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            waited = await streams.read("r", 2, 30)  # a long poll wakes on the append
        assert [e["n"] for e in waited["events"]] == [3] and waited["events"][0]["seq"] == 2
        old = pytest_stream.MAX_EVENTS_PER_RUN
        pytest_stream.MAX_EVENTS_PER_RUN = 2
        try:
            streams.append("r", [{"kind": "test", "n": 4}], [10])
        finally:
            pytest_stream.MAX_EVENTS_PER_RUN = old
        rotated = await streams.read("r", 0, 0)
        assert rotated["dropped"] and [e["n"] for e in rotated["events"]] == [3, 4]
        assert streams.take_steal("r", "t1") is None
        streams.request_steal("r", "t1", "w2", "file")
        assert streams.take_steal("r", "t1") == {"for_worker": "w2", "group": "file"}
        assert streams.take_steal("r", "t1") is None  # handed out once

    trio.run(main)


def test_client_loads_plugins_only_when_the_invocation_uses_what_only_a_plugin_defines(tmp_path: Path) -> None:
    from dtf_app.pytest_dist.client import needs_plugins

    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\naddopts = -rA\n")
    assert not needs_plugins(["-q", "-k", "not slow", "-p", "no:cacheprovider", f"--junitxml={tmp_path}/x.xml",
                              "--pyargs", "networkx"], tmp_path)
    assert needs_plugins(["--timeout=3"], tmp_path)  # pytest-timeout's option
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")  # pytest-asyncio's ini key
    assert needs_plugins([], tmp_path)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --hypothesis-show-statistics\n")
    assert needs_plugins([], tmp_path)
    with pytest.raises(DistUsageError, match="--dtf-client-plugins must be one of auto, all"):
        parse_args(["--dtf-client-plugins", "some"])
