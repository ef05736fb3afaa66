"""The ``dtf`` command line: exit codes, error messages without tracebacks, task building, and a real
local cluster driven through ``dtf up`` and the client commands."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dtf_app import __version__
from dtf_app.cli import build_parser, build_submission
from dtf_app.client import (
    MODEL_FAMILIES,
    Client,
    ClientError,
    TaskFileError,
    batch_failed,
    check_task,
    generate_benchmark_tasks,
    load_task_file,
    resolve_target,
)

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "assets" / "tasks"


# A private registry of local coordinators: another coordinator on this machine (a user's, a parallel
# test run's) must never answer these tests' commands.
STATE_DIR = tempfile.mkdtemp(prefix="dtf-test-state-")


def dtf(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DTF_")}
    full_env["DTF_STATE_DIR"] = STATE_DIR
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "dtf_app", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- basics and usage errors
def test_version_prints_the_version() -> None:
    proc = dtf("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"dtf {__version__}"


def test_dashboard_without_a_terminal_says_what_to_use_instead(tmp_path: Path) -> None:
    # dtf opens the TUI on an embedded cluster; under a pipe (no tty) it refuses before starting anything.
    proc = dtf(cwd=tmp_path)
    assert_clean_error(proc, 2, "needs a terminal", "dtf up --workers 2 --headless")
    assert not (tmp_path / "dtf-data" / "node.json").exists()
    proc = dtf("dash", "--coordinator", "http://127.0.0.1:9", cwd=tmp_path)
    assert_clean_error(proc, 2, "needs a terminal")


@pytest.mark.parametrize(("args", "needles"), [
    (["--bogus"], ["unrecognized arguments: --bogus"]),
    (["--mode", "leader"], ["invalid choice: 'leader'"]),
    (["--mode", "worker", "--port", "x"], ["--port: invalid int value: 'x'"]),
    (["--mode", "worker", "--port", "70000"], ["--port: port must be between 0 and 65535"]),
    (["--mode", "worker", "--heartbeat-interval", "30"], ["worker_timeout (30.0 s) must be longer"]),
    (["--mode", "coordinator", "--config", "/nonexistent/dtf.toml"], ["config file /nonexistent/dtf.toml does not exist"]),
    (["--port", "9000"], ["--port is a node option: add --mode"]),
    (["tasks"], ["the following arguments are required: ACTION"]),
    (["submit", "--type", "test"], ["--type test needs --test-file"]),
    (["submit", "--type", "custom"], ["--type custom needs the command after --"]),
    (["submit", "--generate", "benchmark", "--model", "gpt9"], ["'gpt9' is not a known model family", "bert"]),
    (["submit", "--generate", "benchmark", "--model", "bert", "--precision", "fp8"], ["'fp8' is not supported"]),
    (["submit", "--generate", "benchmark", "--model", "bert", "--batch-sizes", "1,,4"], ["--batch-sizes"]),
    (["submit", "--type", "custom", "--requirements", "{oops", "--", "true"], ["--requirements: invalid JSON"]),
    (["hardware", "--simulate-hardware", "/nonexistent.json"], ["/nonexistent.json"]),
    (["keys", "create", "--name", "x", "--role", "root"], ["invalid choice: 'root'"]),
])
def test_usage_errors_exit_2_with_a_message_and_no_traceback(args: list[str], needles: list[str]) -> None:
    assert_clean_error(dtf(*args), 2, *needles)


def test_malformed_task_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "type": "test",\n  "config": {"test_file": "x.py",}\n}\n')
    proc = dtf("submit", "--task-file", str(bad), "--coordinator", f"http://127.0.0.1:{closed_port()}")
    assert_clean_error(proc, 2, str(bad), "line 3 column")


@pytest.mark.parametrize(("text", "needle"), [
    ("[]", "empty list"),
    ('{"type": "compile"}', "\"type\" must be one of test, benchmark, custom, got 'compile'"),
    ('[{"type": "test"}, 3]', "task 1: a task must be a JSON object, got int"),
    ('{"type": "custom", "config": []}', "\"config\" must be an object"),
])
def test_invalid_task_documents_are_named(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(text)
    assert_clean_error(dtf("submit", "--task-file", str(path)), 2, needle)


def test_missing_task_file() -> None:
    assert_clean_error(dtf("submit", "--task-file", "/nonexistent/tasks.json"), 2,
                       "task file /nonexistent/tasks.json does not exist")


def test_unreachable_coordinator_exits_3_with_advice(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    connection = ["--coordinator", url, "--api-key", "k"]
    # For submit the connection options go before "--": everything after it is the custom command.
    for args in (["tasks", "list", *connection], ["status", "--json", *connection], ["workers", "list", *connection],
                 ["submit", "--type", "custom", *connection, "--", "python3", "-c", "print(1)"]):
        proc = dtf(*args, cwd=tmp_path)
        assert_clean_error(proc, 3, "cannot reach the DTF coordinator", url, "dtf up")


def test_hardware_json_is_valid_and_has_cpu() -> None:
    proc = dtf("hardware", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert "cpu" in data["hardware"] and "cpu" in data["hardware"]["hardware"]
    assert data["hardware"]["cpu"]["cores"] >= 1


def test_hardware_simulated_profile_is_flagged() -> None:
    proc = dtf("hardware", "--json", "--simulate-hardware", str(REPO / "assets" / "hardware" / "nvidia-t4.json"))
    assert proc.returncode == 0, proc.stderr
    caps = json.loads(proc.stdout)["hardware"]
    assert caps["simulated"] is True and "cuda" in caps["hardware"]
    table = dtf("hardware", "--simulate-hardware", str(REPO / "assets" / "hardware" / "nvidia-t4.json"))
    assert "SIMULATED" in table.stdout


# ---------------------------------------------------------------- task building (in process)
def test_generated_benchmarks_one_task_per_model_and_precision() -> None:
    tasks = generate_benchmark_tasks("bert,t5-small", "1,2,4", "fp16,fp32", iterations=3)
    assert [t["name"] for t in tasks] == ["bert-fp16", "bert-fp32", "t5-small-fp16", "t5-small-fp32"]
    assert all(t["type"] == "benchmark" and t["config"]["batch_sizes"] == [1, 2, 4] for t in tasks)
    assert all(t["config"]["iterations"] == 3 for t in tasks)
    assert {t["config"]["precision"] for t in tasks} == {"fp16", "fp32"}


@pytest.mark.parametrize(("model", "sizes", "precision", "needle"), [
    ("gpt9", "1", "fp32", "not a known model family"),
    ("bert", "0", "fp32", "at least 1"),
    ("bert", "two", "fp32", "'two' is not an integer"),
    ("bert", "1", "fp64", "'fp64' is not supported"),
])
def test_generated_benchmarks_validate(model: str, sizes: str, precision: str, needle: str) -> None:
    with pytest.raises(TaskFileError, match=needle) as err:
        generate_benchmark_tasks(model, sizes, precision)
    if "family" in needle:
        assert all(family in str(err.value) for family in MODEL_FAMILIES)


def test_submit_options_apply_to_every_task() -> None:
    args = build_parser().parse_args(["submit", "--generate", "benchmark", "--model", "vit", "--precision",
                                      "fp32,bf16", "--priority", "7", "--name", "nightly", "--hardware", "cuda",
                                      "--tags", "lab", "--requirements", '{"min_memory_gb": 8}', "--timeout", "90"])
    tasks = build_submission(args)
    assert [t["name"] for t in tasks] == ["nightly-1", "nightly-2"]
    for task in tasks:
        assert task["priority"] == 7 and task["timeout_seconds"] == 90
        # The generator's estimate (on the GPU: --hardware cuda) stays beside what the user asked for.
        estimate = task["requirements"].pop("min_gpu_memory_gb")
        assert 0 <= estimate - task["metadata"]["estimated_memory_gb"] < 0.11  # rounded up to 0.1 GB
        assert task["requirements"] == {"min_memory_gb": 8, "hardware": ["cuda"], "tags": ["lab"]}


def test_custom_and_test_tasks_from_flags(tmp_path: Path) -> None:
    args = build_parser().parse_args(["submit", "--type", "custom", "--", "python3", "-c", "print('x')"])
    assert build_submission(args) == [{"type": "custom", "config": {"command": ["python3", "-c", "print('x')"]}}]
    args = build_parser().parse_args(["submit", "--type", "test", "--test-file", "suite/test_a.py::test_one",
                                      "--test-args=-x -q"])
    (task,) = build_submission(args)
    assert task["config"]["test_file"] == os.path.abspath("suite/test_a.py") + "::test_one"
    assert task["config"]["test_args"] == ["-x", "-q"]


def test_task_file_paths_become_absolute_against_the_file() -> None:
    test_task, _bench, custom_task, _callable = load_task_file(TASKS / "demo.json")
    files = test_task["config"]["test_file"]
    assert files == [str(REPO / "assets" / "sample_suite" / "test_math.py"),
                     str(REPO / "assets" / "sample_suite" / "test_strings.py")]
    assert all(Path(f).is_file() for f in files)
    assert custom_task["config"]["command"][0] == "python3"


def test_every_example_task_file_loads() -> None:
    loaded = {path.name: load_task_file(path) for path in sorted(TASKS.glob("*.json"))}
    assert {"demo.json", "benchmark.json", "custom.json", "callable.json"} <= set(loaded)
    bench = loaded["benchmark.json"]
    assert {t["config"]["precision"] for t in bench} == {"fp32", "fp16"}
    assert all(t["config"]["model"] == "bert" and t["config"]["batch_sizes"] == [1, 2, 4] for t in bench)
    assert loaded["callable.json"][0]["config"]["callable"] == "dtf_plugins.runners.builtin_tasks:noop"


def test_callable_shorthand_becomes_a_custom_task() -> None:
    task = check_task({"callable": "m:f", "args": [1], "priority": 2}, "x")
    assert task == {"type": "custom", "config": {"callable": "m:f", "args": [1]}, "priority": 2}


def test_batch_failed_rules() -> None:
    ok = {"status": "completed", "result": {"status": "success"}}
    assert not batch_failed([ok, ok])
    assert batch_failed([ok, {"status": "completed", "result": {"status": "failure"}}])
    assert batch_failed([ok, {"status": "failed", "result": None}])
    assert batch_failed([{"status": "cancelled"}])


def test_target_comes_from_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("DTF_")]:
        monkeypatch.delenv(name)
    (tmp_path / "admin.key").write_text("secret-key\n")
    (tmp_path / "node.json").write_text(json.dumps({"url": "http://127.0.0.1:4567", "node_id": "n", "pid": 1}))
    target = resolve_target({"data_dir": str(tmp_path)})
    assert (target.urls, target.api_key) == (["http://127.0.0.1:4567"], "secret-key")
    # Explicit values win over the data dir's files.
    monkeypatch.setenv("DTF_API_KEY", "env-key")
    target = resolve_target({"data_dir": str(tmp_path), "coordinator": "http://h:1"})
    assert (target.urls, target.api_key) == (["http://h:1"], "env-key")


# ---------------------------------------------------------------- client error mapping
# httpx's MockTransport stands in for answers a single local coordinator never gives (a follower's
# leader hint, a dead first URL); the real answers are exercised against a real cluster below.
def _client(handler, urls=("http://a:1",), key="k") -> Client:  # type: ignore[no-untyped-def]
    import httpx

    return Client(list(urls), key, transport=httpx.MockTransport(handler))


def test_client_fails_over_and_follows_leader_hint() -> None:
    import httpx

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.host))
        if request.url.host == "dead":
            raise httpx.ConnectError("Connection refused", request=request)
        if request.url.host == "follower":
            return httpx.Response(421, json={"error": {"code": "not_leader", "message": "ask the leader",
                                                       "leader_url": "http://leader:8080"}})
        assert request.headers["X-API-Key"] == "k"
        return httpx.Response(200, json={"status": "ok"})

    client = _client(handler, urls=("http://dead:1", "http://follower:2"))
    assert client.open_status() == {"status": "ok"}
    assert seen == ["dead", "follower", "leader"]
    assert client.url == "http://leader:8080"


@pytest.mark.parametrize(("status", "code", "needle"), [
    (401, 4, "unauthorized"), (403, 4, "operator or admin"), (404, 2, "server says no"),
    (409, 2, "server says no"), (422, 2, "server says no"), (503, 3, "server says no"),
])
def test_client_maps_http_errors_to_exit_codes(status: int, code: int, needle: str) -> None:
    import httpx

    client = _client(lambda r: httpx.Response(status, json={"error": {"code": "x", "message": "server says no"}}))
    with pytest.raises(ClientError) as err:
        client.submit({"type": "custom"})
    assert err.value.exit_code == code and needle in err.value.message


# ---------------------------------------------------------------- a real local cluster
def test_up_run_file_runs_the_demo_for_real(tmp_path: Path) -> None:
    proc = dtf("up", "--workers", "1", "--data-dir", str(tmp_path / "data"), "--run-file", str(TASKS / "demo.json"),
               timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "sample-suite" in proc.stdout and "hello" in proc.stdout
    assert proc.stdout.count("success") == 4
    assert "dtf.duckdb" in proc.stderr and (tmp_path / "data" / "dtf.duckdb").exists()
    assert oct((tmp_path / "data" / "worker.key").stat().st_mode & 0o777) == "0o600"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_client_commands_against_dtf_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTF_")}
    env["DTF_STATE_DIR"] = STATE_DIR
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    log = open(tmp_path / "up.log", "w")
    up = subprocess.Popen([sys.executable, "-m", "dtf_app", "up", "--workers", "1", "--headless", "--data-dir",
                           str(data)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = dtf("status", "--json", "--data-dir", str(data))
            if status.returncode == 0 and json.loads(status.stdout)["workers"]["online"] == 1:
                break
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail("cluster did not come up: " + (tmp_path / "up.log").read_text())
        coordinator_pid = json.loads((data / "node.json").read_text())["pid"]

        failing = dtf("submit", "--type", "test", "--test-file",
                      str(REPO / "assets" / "sample_suite" / "test_with_failure.py"), "--wait", "--json",
                      "--data-dir", str(data))
        assert failing.returncode == 1, failing.stderr
        (task,) = json.loads(failing.stdout)
        assert task["status"] == "completed" and task["result"]["status"] == "failure"

        ok = dtf("submit", "--type", "custom", "--wait", "--data-dir", str(data), "--", "python3", "-c",
                 "print('hello from dtf')")
        assert ok.returncode == 0, ok.stderr
        assert "success" in ok.stdout

        listed = json.loads(dtf("tasks", "list", "--json", "--data-dir", str(data)).stdout)
        assert listed["total"] == 2
        shown = dtf("tasks", "show", task["task_id"], "--data-dir", str(data))
        assert shown.returncode == 0 and "failure" in shown.stdout
        assert_clean_error(dtf("tasks", "cancel", task["task_id"], "--data-dir", str(data)), 2, "already completed")
        assert_clean_error(dtf("tasks", "show", "no-such-task", "--data-dir", str(data)), 2, "no-such-task")

        worker_key = (data / "worker.key").read_text().strip()
        refused = dtf("submit", "--type", "custom", "--data-dir", str(data), "--api-key", worker_key, "--", "true")
        assert_clean_error(refused, 4, "forbidden")
        assert_clean_error(dtf("tasks", "list", "--data-dir", str(data), "--api-key", "wrong"), 4, "unauthorized")

        created = dtf("keys", "create", "--name", "viewer1", "--role", "viewer", "--json", "--data-dir", str(data))
        assert created.returncode == 0, created.stderr
        viewer_key = json.loads(created.stdout)["key"]
        assert dtf("workers", "list", "--api-key", viewer_key, "--data-dir", str(data)).returncode == 0
        names = {k["name"] for k in json.loads(dtf("keys", "list", "--json", "--data-dir", str(data)).stdout)["keys"]}
        assert {"viewer1", "dtf-up-workers"} <= names
        assert dtf("keys", "delete", "--name", "viewer1", "--data-dir", str(data)).returncode == 0
        results = json.loads(dtf("results", "--json", "--data-dir", str(data)).stdout)["results"]
        assert {r["status"] for r in results} == {"success", "failure"}
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
        log.close()
    assert up.returncode == 0
    assert not _pid_alive(coordinator_pid), "dtf up left its coordinator running"


def test_client_reads_coordinator_from_config_file(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    config = tmp_path / "dtf.toml"
    config.write_text(f'coordinator = ["{url}"]\napi_key = "k"\n')
    assert_clean_error(dtf("workers", "list", "--config", str(config), cwd=tmp_path), 3, url)


def test_up_reports_a_busy_port_as_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = dtf("up", "--workers", "1", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert_clean_error(proc, 2, "coordinator exited with code 2", "Address already in use")


def test_task_table_explains_failures() -> None:
    from dtf_app.output import tasks_table

    base = {"task_id": "t", "type": "test", "status": "completed"}
    collected_error = dict(base, result={"status": "failure", "metrics": {"failed": 0, "errors": 1}})
    two_failed = dict(base, result={"status": "failure", "metrics": {"failed": 2, "errors": 0}})
    bad_exit = dict(base, type="custom", result={"status": "failure", "metrics": {"return_code": 3}})
    text = tasks_table([collected_error, two_failed, bad_exit])
    assert "1 error(s)" in text and "0 failed" not in text
    assert "2 failed" in text and "exit code 3" in text
