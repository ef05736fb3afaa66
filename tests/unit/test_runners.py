"""The three task runners, for real: pytest runs the sample suite, the benchmark measures a real workload,
commands and callables really execute, and a timeout really kills a whole process group.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest
import trio

from dtf_app.worker.runners import RunContext, TaskError, environment_info, get_runner, run_process
from dtf_plugins.runners.benchmark import BenchmarkRunner, parse_config
from dtf_plugins.runners.custom import CustomRunner
from dtf_plugins.runners.test_runner import TestRunner

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "assets" / "sample_suite"


def make_ctx(tmp_path: Path, lines: list[str] | None = None) -> RunContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    sink = lines if lines is not None else []
    return RunContext(task_id="t-1", attempt=1, work_dir=work, log=sink.append, env={"DTF_TASK_ID": "t-1"})


def task(kind: str, config: dict) -> dict:
    return {"task_id": "t-1", "attempt": 1, "type": kind, "name": None, "config": config,
            "timeout_seconds": 60, "priority": 1}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- plugin lookup ----------------------------------------------------------------------------------------------


def test_get_runner_finds_builtins_and_caches() -> None:
    assert isinstance(get_runner("test"), TestRunner)
    assert isinstance(get_runner("benchmark"), BenchmarkRunner)
    assert get_runner("custom") is get_runner("custom")


def test_get_runner_unknown_type() -> None:
    with pytest.raises(TaskError, match=r"cannot run 'quantum' tasks: .*available: benchmark, custom, test"):
        get_runner("quantum")


def test_environment_is_reported_and_cached() -> None:
    env = environment_info()
    assert env["python"] == sys.version.split()[0]
    assert "trio" in env["packages"] and "pytest" in env["packages"]
    assert environment_info() is env


# -- test runner --------------------------------------------------------------------------------------------------


async def test_pytest_sample_suite_passes(tmp_path: Path) -> None:
    lines: list[str] = []
    result = await TestRunner().run(
        task("test", {"test_file": ["test_math.py", "test_strings.py"], "working_dir": str(SUITE)}),
        make_ctx(tmp_path, lines))
    assert result["status"] == "success"
    assert result["metrics"]["tests_total"] == result["metrics"]["passed"] == 13
    assert result["metrics"]["failed"] == 0
    nodeids = {t["nodeid"] for t in result["tests"]}
    assert "test_math.py::TestPrimes::test_small_primes" in nodeids
    assert "test_math.py::test_factorial[5-120]" in nodeids
    assert all(t["outcome"] == "passed" and t["duration"] >= 0 for t in result["tests"])
    assert any("13 passed" in line for line in lines)  # output streamed line by line
    assert "13 passed" in result["output"]
    assert (tmp_path / "work" / "junit.xml").exists()


async def test_pytest_failure_is_reported_per_test(tmp_path: Path) -> None:
    result = await TestRunner().run(
        task("test", {"test_file": ["assets/sample_suite/test_strings.py", "assets/sample_suite/test_with_failure.py"],
                      "working_dir": str(REPO), "test_args": ["-q"]}),
        make_ctx(tmp_path))
    assert result["status"] == "failure"
    assert result["raw_data"]["return_code"] == 1
    rows = {t["nodeid"]: t for t in result["tests"]}
    failed = [t for t in result["tests"] if t["outcome"] == "failed"]
    assert [t["nodeid"] for t in failed] == ["test_with_failure.py::test_deliberately_fails"]
    assert "this test fails on purpose" in failed[0]["message"]
    assert rows["test_with_failure.py::test_skipped"]["outcome"] == "skipped"
    assert result["metrics"] | {"duration": 0} == {"tests_total": 7, "passed": 5, "failed": 1, "errors": 0,
                                                   "skipped": 1, "duration": 0}


async def test_pytest_node_id_and_env(tmp_path: Path) -> None:
    result = await TestRunner().run(
        task("test", {"test_file": "test_math.py::TestPrimes", "working_dir": str(SUITE),
                      "env": {"DTF_SAMPLE": "1"}}),
        make_ctx(tmp_path))
    assert result["status"] == "success"
    assert sorted(t["nodeid"] for t in result["tests"]) == ["test_math.py::TestPrimes::test_composite",
                                                            "test_math.py::TestPrimes::test_small_primes"]


async def test_pytest_no_tests_collected_is_partial(tmp_path: Path) -> None:
    result = await TestRunner().run(
        task("test", {"test_file": "test_math.py", "working_dir": str(SUITE), "test_args": ["-k", "nothing_matches"]}),
        make_ctx(tmp_path))
    assert result["status"] == "partial"
    assert "no tests" in result["metrics"]["message"]


async def test_pytest_missing_file_is_task_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"config.test_file 'tests/nope.py' does not exist"):
        await TestRunner().run(task("test", {"test_file": "tests/nope.py::test_x", "working_dir": str(REPO)}),
                               make_ctx(tmp_path))


@pytest.mark.parametrize(("config", "message"), [
    ({}, "config.test_file must be"),
    ({"test_file": []}, "config.test_file must be"),
    ({"test_file": "test_math.py", "test_args": "-x"}, "config.test_args must be a list"),
    ({"test_file": "test_math.py", "working_dir": "/no/such/dir"}, "is not an existing directory"),
    ({"test_file": "test_math.py", "env": {"A": ["x"]}}, "config.env must be an object"),
])
async def test_pytest_bad_config(tmp_path: Path, config: dict, message: str) -> None:
    config.setdefault("working_dir", str(SUITE))
    with pytest.raises(TaskError, match=message):
        await TestRunner().run(task("test", config), make_ctx(tmp_path))


async def test_pytest_usage_error_is_task_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"pytest exited with code 4: usage error") as info:
        await TestRunner().run(task("test", {"test_file": "test_math.py", "working_dir": str(SUITE),
                                             "test_args": ["--no-such-option"]}), make_ctx(tmp_path))
    assert "--no-such-option" in str(info.value)  # the output tail says what pytest disliked


# -- benchmark runner -------------------------------------------------------------------------------------------------


async def test_benchmark_measures_every_configuration(tmp_path: Path) -> None:
    lines: list[str] = []
    result = await BenchmarkRunner().run(
        task("benchmark", {"model": "prajjwal1/bert-tiny", "batch_sizes": [1, 2], "precision": ["fp32", "fp16"],
                           "iterations": 4, "warmup": 1, "sequence_length": 16}),
        make_ctx(tmp_path, lines))
    assert result["status"] == "success"
    rows = result["benchmarks"]
    assert sorted((r["batch_size"], r["precision"]) for r in rows) == [(1, "fp16"), (1, "fp32"), (2, "fp16"),
                                                                       (2, "fp32")]
    for row in rows:
        assert row["model"] == "prajjwal1/bert-tiny" and row["iterations"] == 4
        assert row["backend"] == result["environment"]["backend"]
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p90"] <= row["latency_ms_p99"]
        assert row["latency_ms_mean"] > 0 and row["throughput"] > 0 and row["memory_peak_mb"] > 0
        # items/s is batch size over mean latency
        assert row["throughput"] == pytest.approx(row["batch_size"] / (row["latency_ms_mean"] / 1000))
    assert result["metrics"]["configurations"] == 4
    assert result["metrics"]["best_throughput"] == max(r["throughput"] for r in rows)
    assert "random weights" in result["environment"]["weights"]
    assert len([line for line in lines if "items/s" in line]) == 4  # progress streamed, result line consumed
    assert "@@DTF_BENCH_RESULT@@" not in result["output"]


async def test_benchmark_emulated_precisions_say_so(tmp_path: Path) -> None:
    result = await BenchmarkRunner().run(
        task("benchmark", {"model": "bert-tiny", "precision": "bf16,int8", "iterations": 2, "warmup": 0,
                           "sequence_length": 8, "backend": "numpy", "functions": ["latency"]}),
        make_ctx(tmp_path))
    notes = {r["precision"]: r["precision_note"] for r in result["benchmarks"]}
    assert "emulated" in notes["bf16"] and "emulated" in notes["int8"]
    assert all(r["memory_peak_mb"] is None and r["throughput"] is None for r in result["benchmarks"])


async def test_benchmark_pure_python_backend(tmp_path: Path) -> None:
    result = await BenchmarkRunner().run(
        task("benchmark", {"model": "t5-small", "batch_sizes": [1], "iterations": 2, "warmup": 0,
                           "backend": "python"}),
        make_ctx(tmp_path))
    row = result["benchmarks"][0]
    assert row["backend"] == "python" and row["latency_ms_mean"] > 0 and "pure-Python" in row["precision_note"]


@pytest.mark.parametrize(("config", "message"), [
    ({"batch_sizes": [1]}, "config.model must be"),
    ({"model": "resnet50"}, "names no known model family"),
    ({"model": "bert", "batch_sizes": [0]}, "config.batch_sizes must be"),
    ({"model": "bert", "batch_sizes": "1,2"}, "config.batch_sizes must be"),
    ({"model": "bert", "precision": "fp64"}, "config.precision must be one of"),
    ({"model": "bert", "iterations": 0}, "config.iterations must be an integer from 1"),
    ({"model": "bert", "warmup": -1}, "config.warmup must be"),
    ({"model": "bert", "functions": ["speed"]}, "config.functions must be"),
    ({"model": "bert", "backend": "jax"}, "config.backend must be one of"),
])
def test_benchmark_bad_config(config: dict, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        parse_config(config)


def test_benchmark_defaults() -> None:
    spec = parse_config({"model": "bert-base-uncased"})
    assert (spec["batch_sizes"], spec["precisions"], spec["iterations"], spec["warmup"], spec["sequence_length"]) == \
        ([1], ["fp32"], 20, 3, 128)
    assert spec["hidden"] == 768 and parse_config({"model": "TinyLlama/TinyLlama-1.1B"})["causal"] is True


# -- custom runner: commands ---------------------------------------------------------------------------------------


async def test_command_success_with_env_and_working_dir(tmp_path: Path) -> None:
    lines: list[str] = []
    result = await CustomRunner().run(
        task("custom", {"command": ["sh", "-c", "echo hello $GREETING $DTF_TASK_ID; pwd; echo to-stderr >&2"],
                        "env": {"GREETING": "world"}, "working_dir": str(tmp_path)}),
        make_ctx(tmp_path, lines))
    assert result["status"] == "success" and result["raw_data"]["return_code"] == 0
    assert lines == ["hello world t-1", str(tmp_path.resolve()), "to-stderr"]
    assert result["output"] == "hello world t-1\n" + str(tmp_path.resolve()) + "\nto-stderr"


async def test_command_failure_is_completed_with_failure_status(tmp_path: Path) -> None:
    result = await CustomRunner().run(task("custom", {"command": ["sh", "-c", "echo oops; exit 3"]}),
                                      make_ctx(tmp_path))
    assert result["status"] == "failure"
    assert result["metrics"]["return_code"] == 3 and result["output"] == "oops"


async def test_command_not_found_is_task_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"command not found: 'dtf-no-such-command-xyz'"):
        await CustomRunner().run(task("custom", {"command": ["dtf-no-such-command-xyz", "--x"]}), make_ctx(tmp_path))


async def test_command_string_is_refused_with_advice(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r'must be an argv list .* use \["sh", "-c", \'echo hi\'\]'):
        await CustomRunner().run(task("custom", {"command": "echo hi"}), make_ctx(tmp_path))


async def test_custom_needs_exactly_one_kind(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="exactly one of"):
        await CustomRunner().run(task("custom", {"command": ["true"], "name": "noop"}), make_ctx(tmp_path))


async def test_leftover_background_processes_end_with_the_task(tmp_path: Path) -> None:
    lines: list[str] = []
    with trio.fail_after(10):
        result = await CustomRunner().run(task("custom", {"command": ["sh", "-c", "sleep 30 & echo $!"]}),
                                          make_ctx(tmp_path, lines))
    assert result["status"] == "success"
    assert not alive(int(lines[0]))


# -- timeouts and cancellation ---------------------------------------------------------------------------------------


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    lines: list[str] = []
    runner = CustomRunner()
    with trio.move_on_after(1.0) as scope:
        await runner.run(task("custom", {"command": ["sh", "-c", "echo $$; sleep 30 & echo $!; sleep 30"]}),
                         make_ctx(tmp_path, lines))
    assert scope.cancelled_caught
    shell_pid, background_pid = int(lines[0]), int(lines[1])
    # Both the shell and its backgrounded child (same process group) are gone, not orphaned.
    with trio.fail_after(5):
        while alive(shell_pid) or alive(background_pid):
            await trio.sleep(0.05)


async def test_cancel_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    lines: list[str] = []
    ctx = make_ctx(tmp_path, lines)
    started = trio.current_time()
    with trio.move_on_after(0.5):
        await run_process(["sh", "-c", "trap '' TERM; echo $$; sleep 30 & echo $!; wait"], ctx, kill_grace=0.3)
    assert trio.current_time() - started < 5
    for pid in map(int, lines[:2]):
        with trio.fail_after(5):
            while alive(pid):
                await trio.sleep(0.05)


# -- custom runner: callables and named tasks -------------------------------------------------------------------------


async def test_callable_success(tmp_path: Path) -> None:
    runner = CustomRunner()
    result = await runner.run(task("custom", {"callable": "dtf_plugins.runners.builtin_tasks:echo",
                                              "args": [1, "a"], "kwargs": {"k": True}}), make_ctx(tmp_path))
    assert result["status"] == "success"
    assert result["raw_data"]["return_value"] == {"args": [1, "a"], "kwargs": {"k": True}}
    noop = await runner.run(task("custom", {"callable": "dtf_plugins.runners.builtin_tasks:noop"}), make_ctx(tmp_path))
    assert noop["status"] == "success" and noop["raw_data"]["return_value"] is None


async def test_callable_exception_is_failure_with_traceback(tmp_path: Path) -> None:
    result = await CustomRunner().run(task("custom", {"callable": "dtf_plugins.runners.builtin_tasks:fail",
                                                      "args": ["kaput"]}), make_ctx(tmp_path))
    assert result["status"] == "failure"
    assert "Traceback" in result["output"] and "RuntimeError: kaput" in result["output"]
    assert result["raw_data"]["exception"] == "RuntimeError: kaput"


async def test_callable_in_thread_and_coroutine(tmp_path: Path) -> None:
    runner = CustomRunner()
    threaded = await runner.run(task("custom", {"callable": "os:getpid", "thread": True}), make_ctx(tmp_path))
    assert threaded["raw_data"]["return_value"] == os.getpid()  # in the worker process, not a subprocess
    slept = await runner.run(task("custom", {"callable": "dtf_plugins.runners.builtin_tasks:sleep",
                                             "kwargs": {"seconds": 0.01}}), make_ctx(tmp_path))
    assert slept["raw_data"]["return_value"] == {"slept_seconds": 0.01}


async def test_callable_non_json_return_is_stored_as_repr(tmp_path: Path) -> None:
    result = await CustomRunner().run(task("custom", {"callable": "builtins:object"}), make_ctx(tmp_path))
    assert result["raw_data"]["return_value_is_repr"] is True
    assert result["raw_data"]["return_value"].startswith("<object object")


@pytest.mark.parametrize(("spec", "message"), [
    ("no_colon", "must be 'module:function'"),
    ("dtf_no_such_module:f", "cannot import 'dtf_no_such_module'"),
    ("dtf_plugins.runners.builtin_tasks:missing", "has no 'missing'"),
    ("dtf_plugins.runners.builtin_tasks:__doc__", "is not callable"),
])
async def test_callable_bad_spec(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        await CustomRunner().run(task("custom", {"callable": spec}), make_ctx(tmp_path))


async def test_builtin_named_tasks(tmp_path: Path) -> None:
    runner = CustomRunner()
    echo = await runner.run(task("custom", {"name": "echo", "args": ["x"]}), make_ctx(tmp_path))
    assert echo["raw_data"] == {"name": "echo", "return_value": {"args": ["x"], "kwargs": {}}}
    burn = await runner.run(task("custom", {"name": "cpu_burn", "args": {"seconds": 0.05}}), make_ctx(tmp_path))
    assert burn["status"] == "success" and burn["raw_data"]["return_value"]["iterations"] > 0
    with pytest.raises(TaskError, match=r"custom task 'nope': .*available: .*noop"):
        await runner.run(task("custom", {"name": "nope"}), make_ctx(tmp_path))


async def test_named_sleep_honours_timeout(tmp_path: Path) -> None:
    with trio.move_on_after(0.2) as scope:
        await CustomRunner().run(task("custom", {"name": "sleep", "args": {"seconds": 30}}), make_ctx(tmp_path))
    assert scope.cancelled_caught


async def test_plugin_registered_named_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real installed distribution (dist-info with entry_points.txt) registering a custom task.
    site = tmp_path / "site"
    dist = site / "dtf_fake_tasks-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dtf-fake-tasks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dtf.custom_tasks]\nsquare = dtf_fake_tasks_mod:square\n")
    (site / "dtf_fake_tasks_mod.py").write_text("def square(x):\n    return x * x\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        result = await CustomRunner().run(task("custom", {"name": "square", "args": [7]}), make_ctx(tmp_path))
    finally:
        sys.modules.pop("dtf_fake_tasks_mod", None)
    assert result["status"] == "success" and result["raw_data"]["return_value"] == 49


async def test_pytest_with_an_explicit_interpreter(tmp_path: Path) -> None:
    result = await TestRunner().run(
        task("test", {"test_file": "test_strings.py", "working_dir": str(SUITE), "python": sys.executable}),
        make_ctx(tmp_path))
    assert result["status"] == "success" and result["raw_data"]["command"][0] == sys.executable
    with pytest.raises(TaskError, match=r"config.python 'no-such-python3\.99' is not an executable"):
        await TestRunner().run(task("test", {"test_file": "test_strings.py", "working_dir": str(SUITE),
                                             "python": "no-such-python3.99"}), make_ctx(tmp_path))


def test_broken_runner_plugin_is_a_task_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    dist = site / "dtf_fake_runner-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dtf-fake-runner\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dtf.runners]\nbroken = dtf_fake_runner_mod:Runner\n")
    (site / "dtf_fake_runner_mod.py").write_text("import dtf_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(TaskError, match=r"'broken' runner is broken on this worker: .*ModuleNotFoundError"):
        get_runner("broken")
    # The built-ins still work next to it.
    assert isinstance(get_runner("test"), TestRunner)


async def test_relative_work_dir_with_another_working_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The agent's work dirs live under a data dir that may be relative ("./dtf-data"); pytest runs elsewhere.
    monkeypatch.chdir(tmp_path)
    Path("rel-work").mkdir()
    ctx = RunContext(task_id="t-2", attempt=1, work_dir=Path("rel-work"))
    result = await TestRunner().run(task("test", {"test_file": "test_strings.py", "working_dir": str(SUITE)}), ctx)
    assert result["metrics"]["passed"] == 4
    assert (tmp_path / "rel-work" / "junit.xml").exists()
    bench = await BenchmarkRunner().run(task("benchmark", {"model": "bert-tiny", "iterations": 1, "warmup": 0,
                                                           "sequence_length": 4}), ctx)
    assert bench["benchmarks"][0]["latency_ms_mean"] > 0


async def test_benchmark_uses_torch_when_it_is_installed(tmp_path: Path) -> None:
    """Runs only where torch is importable (`pip install -e '.[torch]'`); CI's default set has no torch."""
    pytest.importorskip("torch")
    result = await BenchmarkRunner().run(
        task("benchmark", {"model": "prajjwal1/bert-tiny", "batch_sizes": [1, 2], "precision": ["fp32"],
                           "iterations": 2, "warmup": 0, "sequence_length": 8}),
        make_ctx(tmp_path))
    assert result["status"] == "success" and result["environment"]["backend"] == "torch"
    assert "random weights" in result["environment"]["weights"]
    assert [r["backend"] for r in result["benchmarks"]] == ["torch", "torch"]
    assert all(r["throughput"] > 0 and r["latency_ms_p50"] > 0 for r in result["benchmarks"])
