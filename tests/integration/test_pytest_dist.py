"""`dtf pytest` on a real cluster: a coordinator and two workers in their own processes, a real suite.

The suite is written into a directory the workers know nothing about (their cwd is elsewhere): they can
only get it from the bundle. Every comparison is against plain pytest run on the same directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from tests.integration.harness import Cluster, _env, wait_for

SUITE = {
    "pytest.ini": """
        [pytest]
        markers =
            slow: a slow one
    """,
    "test_basic.py": """
        import warnings

        import pytest

        def test_pass():
            assert 1 + 1 == 2

        def test_fail():
            assert [1, 2] == [1, 3], "lists differ"

        @pytest.mark.skip(reason="not today")
        def test_skipped():
            pass

        @pytest.mark.xfail(reason="known bug")
        def test_xfail():
            assert False

        @pytest.mark.parametrize("n", [1, 2, 3])
        def test_param(n):
            assert n < 3

        def test_prints(capsys):
            print("some output")

        def test_warns():
            warnings.warn("careful", UserWarning)
    """,
    "pkg/__init__.py": "",
    "pkg/test_classes.py": """
        import pytest

        @pytest.fixture(scope="module")
        def resource():
            return {"n": 0}

        class TestThing:
            def test_one(self, resource):
                resource["n"] += 1

            def test_two(self, resource):
                assert resource["n"] == 1

            @pytest.mark.slow
            def test_error_in_setup(self, missing_fixture):
                pass
    """,
    "test_importorskip.py": """
        import pytest

        pytest.importorskip("a_module_that_does_not_exist_anywhere")

        def test_never():
            pass
    """,
    "data/ignored.txt": "this folder is in .gitignore",
    ".gitignore": "data/\n",
}
# The final line, with (default) or without (-q) its === frame.
XSD = Path(__file__).resolve().parents[1] / "fixtures" / "junit-10.xsd"
SUMMARY = re.compile(r"^(?:=+ )?((?:\d+ [a-z]+(?:, )?)+|no tests ran) in [\d.]+s", re.M)


def write_suite(root: Path) -> Path:
    for name, text in SUITE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def summary(output: str) -> str:
    """The counts of pytest's final line (without the time), e.g. '1 failed, 5 passed, 1 skipped'."""
    found = SUMMARY.findall(output)
    assert found, f"no pytest summary line in:\n{output[-3000:]}"
    return found[-1]


def plain_pytest(suite: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=suite,
                          capture_output=True, text=True, timeout=300, env=_env())


def dtf_pytest(cluster: Cluster, suite: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dtf_app", "pytest", "--coordinator", cluster.url, "--api-key",
                           cluster.admin_key, "-p", "no:cacheprovider", *args], cwd=suite, capture_output=True,
                          text=True, timeout=timeout, env=_env({"DTF_STATE_DIR": str(cluster.root / "state")}))


def junit_cases(path: Path) -> list[tuple[str, str, str, str]]:
    """(classname, name, kind of result, message) of every testcase, sorted: what must match."""
    cases = []
    for case in ET.parse(path).iter("testcase"):
        kinds = [(child.tag, child.get("message") or "") for child in case
                 if child.tag in ("failure", "error", "skipped")]
        kind, message = kinds[0] if kinds else ("passed", "")
        cases.append((case.get("classname") or "", case.get("name") or "", kind, message))
    return sorted(cases)


def run_ids(output: str) -> str:
    match = re.search(r"dtf: run (\w+):", output)
    assert match, output[-3000:]
    return match.group(1)


@pytest.fixture
def two_workers(cluster: Cluster) -> Cluster:
    cluster.start_coordinator()
    cluster.start_worker("w1", slots=1)
    cluster.start_worker("w2", slots=1)
    cluster.wait_workers(2)
    return cluster


def test_same_counts_exit_code_and_junit_as_plain_pytest(two_workers: Cluster, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "suite")
    plain = plain_pytest(suite, "-rA", f"--junitxml={tmp_path / 'plain.xml'}")
    assert plain.returncode == 1, plain.stdout

    first = dtf_pytest(two_workers, suite, "-rA", f"--junitxml={tmp_path / 'dtf1.xml'}")
    assert first.returncode == plain.returncode, first.stdout + first.stderr
    assert summary(first.stdout) == summary(plain.stdout)
    assert "no history yet" in first.stdout
    assert junit_cases(tmp_path / "dtf1.xml") == junit_cases(tmp_path / "plain.xml")
    # pytest's own reporting: the failure's assertion detail and the captured output of -rA.
    assert "lists differ" in first.stdout and "some output" in first.stdout

    # The second run plans from the history in DuckDB and reuses the workers' sessions; with -v, which
    # stays on the client but still reaches the assertion explanations (a longer diff in the message).
    plain_v = plain_pytest(suite, "-rA", "-v", f"--junitxml={tmp_path / 'plain-v.xml'}")
    if not (os.environ.get("CI") or os.environ.get("BUILD_NUMBER")):
        # Plain pytest itself gives -v a fuller assertion text (on a CI it never truncates, so both agree).
        assert junit_cases(tmp_path / "plain-v.xml") != junit_cases(tmp_path / "plain.xml")
    assert plain_v.returncode == plain.returncode, plain_v.stdout
    second = dtf_pytest(two_workers, suite, "-rA", "-v", f"--junitxml={tmp_path / 'dtf2.xml'}")
    assert second.returncode == plain.returncode, second.stdout + second.stderr
    assert summary(second.stdout) == summary(plain.stdout)
    assert "planned from history" in second.stdout
    assert junit_cases(tmp_path / "dtf2.xml") == junit_cases(tmp_path / "plain-v.xml")
    schema = xmlschema.XMLSchema(str(XSD))
    for name in ("plain.xml", "plain-v.xml", "dtf1.xml", "dtf2.xml"):
        schema.validate(str(tmp_path / name))  # the XSD pytest's own tests validate against
    # The same file again, later, from the results stored in DuckDB.
    again = two_workers.cli("results", "--junitxml", str(tmp_path / "stored.xml"), "--run", run_ids(second.stdout),
                            "--coordinator", two_workers.url, "--api-key", two_workers.admin_key)
    assert again.returncode == 0, again.stderr
    schema.validate(str(tmp_path / "stored.xml"))
    # (Collection reports are not test rows; an error's text names the file where the worker had it.)
    stored = junit_cases(tmp_path / "stored.xml")
    expected = [c for c in junit_cases(tmp_path / "plain-v.xml") if c[0]]
    assert [c[:3] for c in stored] == [c[:3] for c in expected]
    assert [c for c in stored if c[2] != "error"] == [c for c in expected if c[2] != "error"]
    run = two_workers.api("GET", f"/api/pytest/runs/{run_ids(second.stdout)}").json()
    assert run["tasks"] and all(t["status"] == "completed" for t in run["tasks"])
    assert all(t["result"]["raw_data"]["pytest_dist"]["session_reused"] for t in run["tasks"])

    # The chunks are tasks of the cluster like any other.
    tasks = two_workers.api("GET", "/api/tasks", params={"type": "test", "limit": 1000}).json()["tasks"]
    assert {t["config"]["pytest_dist"]["run_id"] for t in tasks} >= {run_ids(first.stdout), run_ids(second.stdout)}
    # .gitignore is respected: the ignored folder is not in the bundle the workers unpacked.
    unpacked = list((two_workers.root / "workers").glob("*/pytest/bundles/*/test_basic.py"))
    assert unpacked and not any((p.parent / "data").exists() for p in unpacked)


def test_selection_and_exitfirst_are_pytest_s_own(two_workers: Cluster, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "suite")
    for args in (["-k", "param or pass"], ["-m", "slow"], ["-q", "pkg/test_classes.py::TestThing"],
                 ["-v", "test_basic.py::test_param"]):
        plain = plain_pytest(suite, *args)
        dist = dtf_pytest(two_workers, suite, *args)
        assert (dist.returncode, summary(dist.stdout)) == (plain.returncode, summary(plain.stdout)), (
            args, dist.stdout + dist.stderr)
    verbose = dtf_pytest(two_workers, suite, "-v", "test_basic.py::test_param")
    assert "test_basic.py::test_param[3] FAILED" in verbose.stdout

    stopped = dtf_pytest(two_workers, suite, "-x", "test_basic.py")
    assert stopped.returncode == 1
    assert "stopping after 1 failures" in stopped.stdout
    assert "1 failed" in summary(stopped.stdout)


def test_worker_without_pytest_fails_the_chunk_clearly(cluster: Cluster, tmp_path: Path) -> None:
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    cluster.start_coordinator()
    worker = cluster.node(["--mode", "worker", "--coordinator", cluster.url, "--worker-id", "bare", "--data-dir",
                           str(tmp_path / "workers" / "bare"), "--max-concurrent-tasks", "1",
                           "--test-python", str(bare / "bin" / "python")], tmp_path / "worker-bare.log",
                          env={"DTF_API_KEY": cluster.worker_key})
    cluster.workers.append(worker)
    cluster.wait_workers(1)
    suite = write_suite(tmp_path / "suite")
    result = dtf_pytest(cluster, suite, "-q", "test_basic.py", "--dtf-timeout", "120")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "has no pytest installed" in result.stdout
    assert "passed" not in summary(result.stdout)  # never a silent success


def test_bad_options_and_unreachable_cluster(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "suite")
    refused = subprocess.run([sys.executable, "-m", "dtf_app", "pytest", "-n", "2"], cwd=suite, capture_output=True,
                             text=True, timeout=60, env=_env())
    assert refused.returncode == 2 and "-n cannot be used with dtf pytest" in refused.stderr
    nowhere = subprocess.run([sys.executable, "-m", "dtf_app", "pytest", "--coordinator", "http://127.0.0.1:9",
                              "--api-key", "x", "-q"], cwd=suite, capture_output=True, text=True, timeout=60,
                             env=_env({"DTF_STATE_DIR": str(tmp_path / "state")}))
    assert nowhere.returncode == 3, nowhere.stdout + nowhere.stderr
    assert "cannot reach" in nowhere.stdout + nowhere.stderr


def test_the_run_outlives_its_client_and_attach_replays_it(two_workers: Cluster, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "suite")
    (suite / "test_slow.py").write_text("import time\n\ndef test_slow():\n    time.sleep(4)\n")
    plain = plain_pytest(suite)
    client = subprocess.Popen([sys.executable, "-m", "dtf_app", "pytest", "--coordinator", two_workers.url,
                               "--api-key", two_workers.admin_key, "-p", "no:cacheprovider"], cwd=suite,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=_env({"DTF_STATE_DIR": str(two_workers.root / "state")}))
    try:
        def chunks() -> list[dict] | None:
            tasks = two_workers.api("GET", "/api/tasks", params={"type": "test"}).json()["tasks"]
            return tasks or None

        tasks = wait_for(chunks, 120, what="the run's chunks to be submitted")
    finally:
        client.kill()  # the client dies (SIGKILL) while the run is under way
        client.wait(30)
    run_id = tasks[0]["config"]["pytest_dist"]["run_id"]
    attached = dtf_pytest(two_workers, suite, "--attach", run_id)
    assert attached.returncode == plain.returncode, attached.stdout + attached.stderr
    assert summary(attached.stdout) == summary(plain.stdout)
    assert f"attached to run {run_id}" in attached.stdout
    bad = dtf_pytest(two_workers, suite, "--attach", "no-such-run")
    assert bad.returncode == 2 and "no dtf pytest run" in bad.stdout + bad.stderr

    # What a following client polls: the brief view (states only) and full views of chosen chunks.
    full = two_workers.api("GET", f"/api/pytest/runs/{run_id}").json()["tasks"]
    brief = two_workers.api("GET", f"/api/pytest/runs/{run_id}", params={"view": "brief"}).json()["tasks"]
    assert brief == [{k: t[k] for k in ("task_id", "status", "worker_id", "attempts")} for t in full]
    chosen = two_workers.api("GET", f"/api/pytest/runs/{run_id}", params={"task_ids": full[-1]["task_id"]}).json()
    assert [t["task_id"] for t in chosen["tasks"]] == [full[-1]["task_id"]] and "result" in chosen["tasks"][0]
    refused = two_workers.api("GET", f"/api/pytest/runs/{run_id}", params={"view": "everything"})
    assert refused.status_code == 400 and "view must be one of full, brief" in refused.text


def test_reruns_go_to_another_worker_and_mark_flaky_tests(two_workers: Cluster, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    flag = tmp_path / "ran-once"
    # Fails the first time it runs anywhere, passes afterwards: flaky by construction.
    (suite / "test_flaky.py").write_text(textwrap.dedent(f"""
        from pathlib import Path

        def test_flaky():
            flag = Path({str(flag)!r})
            if not flag.exists():
                flag.write_text("x")
                assert False, "first attempt fails"

        def test_solid():
            pass

        def test_broken():
            assert False, "always"
    """))
    result = dtf_pytest(two_workers, suite, "-rA", "--reruns", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert summary(result.stdout) == "1 failed, 2 passed, 3 rerun"
    assert "FLAKY test_flaky.py::test_flaky - failed on w" in result.stdout
    run = two_workers.api("GET", f"/api/pytest/runs/{run_ids(result.stdout)}").json()["tasks"]
    reruns = [t for t in run if t["requirements"].get("exclude_workers")]
    assert reruns and all(t["worker_id"] not in t["requirements"]["exclude_workers"] for t in reruns)


def test_an_idle_worker_steals_the_tail_of_a_long_chunk(two_workers: Cluster, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    flag = tmp_path / "second-run"
    # The history the first run leaves says test_a is the long one and the others take nothing; on the
    # second run it is the other way round, so the plan ([a] and [b..g]) leaves one worker idle early.
    (suite / "test_a.py").write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path

        def test_a():
            if not Path({str(flag)!r}).exists():
                time.sleep(3)
    """))
    for name in "bcdefg":
        (suite / f"test_{name}.py").write_text(textwrap.dedent(f"""
            import time
            from pathlib import Path

            import pytest

            def test_{name}():
                if Path({str(flag)!r}).exists():
                    time.sleep(1.0)
                assert {name!r} != "e", "e fails"

            @pytest.mark.skip(reason="never")
            def test_{name}_skipped():
                pass
        """))
    first = dtf_pytest(two_workers, suite)
    assert first.returncode == 1, first.stdout + first.stderr
    flag.write_text("x")
    plain = plain_pytest(suite)
    second = dtf_pytest(two_workers, suite, "-v")
    assert second.returncode == plain.returncode == 1, second.stdout + second.stderr
    assert summary(second.stdout) == summary(plain.stdout)
    assert "planned from history" in second.stdout
    # Each test is reported exactly once (live from the stream, or from the stored result).
    for name in "abcdefg":
        for test in ([f"test_{name}"] if name == "a" else [f"test_{name}", f"test_{name}_skipped"]):
            lines = [ln for ln in second.stdout.splitlines() if ln.startswith(f"test_{name}.py::{test} ")]
            assert len(lines) == 1, (test, second.stdout)
    tasks = two_workers.api("GET", f"/api/pytest/runs/{run_ids(second.stdout)}").json()["tasks"]
    stolen = [t for t in tasks if t["config"]["pytest_dist"].get("stolen_from")]
    assert stolen, [(t["task_id"], t["config"]["pytest_dist"]["nodeids"], t["worker_id"]) for t in tasks]
    by_id = {t["task_id"]: t for t in tasks}
    ran: list[str] = []
    for task in tasks:
        assert task["status"] == "completed"
        rows = two_workers.api("GET", "/api/pytest/reports", params={"task_ids": task["task_id"]}).json()["tests"]
        ran += [r["nodeid"] for r in rows]
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 13  # none twice, none lost
    for tail in stolen:
        victim = by_id[tail["config"]["pytest_dist"]["stolen_from"]]
        assert tail["worker_id"] != victim["worker_id"]  # it ran on the idle worker
        given = victim["result"]["raw_data"]["pytest_dist"]["stolen"]
        # The victim's answer decided: the tail is exactly what it said it gave up, and it ran none of it.
        assert [g["task_id"] for g in given] == [tail["task_id"]]
        assert given[0]["nodeids"] == tail["config"]["pytest_dist"]["nodeids"]
        victim_rows = two_workers.api("GET", "/api/pytest/reports",
                                      params={"task_ids": victim["task_id"]}).json()["tests"]
        assert not set(given[0]["nodeids"]) & {r["nodeid"] for r in victim_rows}


def forged_reports_are_refused(cluster: Cluster, run_id: str) -> None:
    """While a chunk runs, the worker key alone, or another worker's credential, cannot speak for it."""
    before = cluster.api("GET", f"/api/pytest/runs/{run_id}").json()["tasks"]
    running = [t for t in before if t["status"] == "running"]
    assert running, before
    task = running[0]
    other = "w2" if task["worker_id"] == "w1" else "w1"
    body = {"task_id": task["task_id"], "attempt": task["attempts"], "worker_id": task["worker_id"],
            "events_json": json.dumps([{"kind": "report", "nodeid": "test_live.py::test_second"}]),
            "stolen": {"nodeids": ["test_live.py::test_second"], "seq": 0, "exclude": True}}
    for headers in ({}, {"X-Worker-Credential": cluster.credential(other)}):
        refused = cluster.api("POST", f"/api/pytest/runs/{run_id}/progress", key=cluster.worker_key,
                              json=body, headers=headers)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "credential_refused", refused.text
    after = cluster.api("GET", f"/api/pytest/runs/{run_id}").json()["tasks"]
    forged_tail = f"{task['task_id']}-s{task['attempts']}-0"  # the id submit_stolen would have given it
    assert forged_tail not in {t["task_id"] for t in after}, "a refused post must not submit a stolen tail"


def test_reports_stream_live_and_exitfirst_stops_a_running_chunk(two_workers: Cluster, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    go = tmp_path / "go"
    never = tmp_path / "never"
    # test_second cannot finish before the client has shown test_first: only a live stream lets it pass.
    (suite / "test_live.py").write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path

        def test_first():
            pass

        def test_second():
            deadline = time.monotonic() + 120
            while not Path({str(go)!r}).exists():
                assert time.monotonic() < deadline, "the client never showed test_first live"
                time.sleep(0.05)
    """))
    client = subprocess.Popen([sys.executable, "-m", "dtf_app", "pytest", "--coordinator", two_workers.url,
                               "--api-key", two_workers.admin_key, "-p", "no:cacheprovider", "-v"], cwd=suite,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=_env({"DTF_STATE_DIR": str(two_workers.root / "state"), "PYTHONUNBUFFERED": "1"}))
    seen = b""
    try:
        assert client.stdout is not None
        # Not line by line: with -v pytest ends a test's line only when the next one starts.
        while chunk := os.read(client.stdout.fileno(), 65536):
            seen += chunk
            if b"test_live.py::test_first PASSED" in seen and not go.exists():
                forged_reports_are_refused(two_workers, run_ids(seen.decode(errors="replace")))
                go.write_text("x")
        code = client.wait(60)
    finally:
        client.kill()
    output = seen.decode(errors="replace")
    assert code == 0 and summary(output) == "2 passed", output

    # -x: the first failure ends the run while the rest of its chunk is still running (it would wait
    # for a file that never comes), and that chunk is cancelled.
    (suite / "test_live.py").write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path

        def test_fails():
            assert False, "stop here"

        def test_hangs():
            deadline = time.monotonic() + 240
            while not Path({str(never)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
    """))
    stopped = dtf_pytest(two_workers, suite, "-x", timeout=180)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "stopping after 1 failures" in stopped.stdout and summary(stopped.stdout) == "1 failed"
    tasks = two_workers.api("GET", f"/api/pytest/runs/{run_ids(stopped.stdout)}").json()["tasks"]
    assert any(t["status"] == "cancelled" for t in tasks), tasks
