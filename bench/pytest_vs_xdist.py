"""``dtf pytest`` against plain pytest and pytest-xdist on a real third-party suite, side by side.

    PYTHONPATH=. .venv/bin/python bench/pytest_vs_xdist.py [--suite networkx] [--skip 1w,aside] [--pairs N]

The suite (default: networkx, ~5,000 tests shipped inside its wheel, run with ``--pyargs``) is installed
into its own virtual environment, ``bench/.venv-pytest``, from ``bench/requirements-pytest.txt`` (pinned:
the suite, pytest and pytest-xdist), never into DTF's runtime dependencies. The workers of the local
clusters run the chunks with that interpreter (their ``test_python`` setting, ``DTF_TEST_PYTHON``).

One run measures, in this order and from the same scratch directory (so node ids are identical):

1. plain pytest; 2. ``pytest -n 2`` (pytest-xdist);
3. ``dtf pytest`` on ``dtf up --workers 2`` (one slot each): the first run (no history, cold worker
   sessions), then the second (history in DuckDB, warm sessions);
4. the same on ``dtf up --workers 1``, against plain pytest;
5. the suite's package copied aside into a rootdir of its own, run without ``--pyargs`` by an
   interpreter that does not have the suite installed: the workers can only get it from the bundle;
   compared with plain pytest on that same directory.

Every dtf run's passed/failed/skipped/... counts and exit code are checked against plain pytest's. Wall
times are printed with their ratios; nothing is asserted about them (DESIGN.md §11).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BENCH_VENV = REPO / "bench" / ".venv-pytest"
REQUIREMENTS = REPO / "bench" / "requirements-pytest.txt"
SUMMARY = re.compile(r"^(?:=+ )?((?:\d+ [a-z]+(?:, )?)+|no tests ran) in [\d.]+s", re.M)


def ensure_venv() -> Path:
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".installed"
    if not stamp.exists() or stamp.read_text() != REQUIREMENTS.read_text():
        if not python.exists():
            venv.create(BENCH_VENV, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], check=True)
        stamp.write_text(REQUIREMENTS.read_text())
    return python


def junit_cases(path: Path) -> list[tuple[str, str, str, str]]:
    """(classname, name, result kind, message) of every testcase, sorted."""
    import xml.etree.ElementTree as ET

    cases = []
    for case in ET.parse(path).iter("testcase"):
        kinds = [(c.tag, c.get("message") or "") for c in case if c.tag in ("failure", "error", "skipped")]
        kind, message = kinds[0] if kinds else ("passed", "")
        cases.append((case.get("classname") or "", case.get("name") or "", kind, message))
    return sorted(cases)


def counts(output: str) -> dict[str, int]:
    found = SUMMARY.findall(output)
    if not found:
        return {"unparsed": 1}
    result = {}
    for part in found[-1].split(", "):
        if part == "no tests ran":
            continue
        number, word = part.split(" ", 1)
        result[word.rstrip("s") if word in ("errors", "warnings") else word] = int(number)
    result.pop("warning", None)  # warnings are not outcomes
    return result


def timed(argv: list[str], cwd: Path, env: dict[str, str] | None = None, label: str = "") -> tuple[float, int, dict]:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=3600)
    took = time.perf_counter() - started
    got = counts(proc.stdout)
    print(f"  {label:<34} {took:7.1f} s  exit {proc.returncode}  {got}", flush=True)
    if "unparsed" in got:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    return took, proc.returncode, got


class LocalCluster:
    """``dtf up --workers N --headless`` in the background, with the bench interpreter for chunks."""

    def __init__(self, workers: int, data_dir: Path, cwd: Path, test_python: Path) -> None:
        self.data_dir = data_dir
        env = dict(os.environ, DTF_TEST_PYTHON=str(test_python), PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "dtf_app", "up", "--workers", str(workers), "--headless",
                                      "--data-dir", str(data_dir), "--max-concurrent-tasks", "1"], cwd=cwd, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                url = json.loads((data_dir / "node.json").read_text())["url"]
                key = (data_dir / "admin.key").read_text().strip()
                online = [w for w in httpx.get(f"{url}/api/workers", headers={"X-API-Key": key}, timeout=5)
                          .json()["workers"] if w["status"] == "online"]
                if len(online) >= workers:
                    return
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"the local cluster in {data_dir} did not come up")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def dtf_argv(data_dir: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "dtf_app", "pytest", "--data-dir", str(data_dir), *args]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="networkx", help="package whose tests run with --pyargs")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: xdist,2w,1w,aside")
    parser.add_argument("--pairs", type=int, default=0,
                        help="after each cluster's first run, alternate its reference and dtf N times "
                             "(2 workers: pytest -n 2 / dtf; 1 worker: plain / dtf) and report the median "
                             "ratio of the pairs: on a shared machine, load drifts between runs minutes apart")
    opts = parser.parse_args()
    skip = set(filter(None, opts.skip.split(",")))
    python = ensure_venv()
    # The dtf client runs in DTF's own (development) environment, with pytest plugins (pytest-trio,
    # hypothesis, schemathesis, textual snapshots: DTF's test extras) the suite's environment does not
    # have. The client imports them only when the invocation needs one (--dtf-client-plugins auto), so
    # they are left in place here: what is measured is what a user with such an environment gets.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    args = ["--pyargs", opts.suite, "-q", "-p", "no:cacheprovider"]
    scratch = Path(tempfile.mkdtemp(prefix="dtf-pytest-bench-"))
    version = subprocess.run([str(python), "-c", f"import {opts.suite}, pytest; print({opts.suite}.__version__, "
                              "pytest.__version__)"], capture_output=True, text=True, check=True).stdout.split()
    print(f"suite {opts.suite} {version[0]} (pytest {version[1]}), {os.cpu_count()} CPUs, scratch {scratch}")
    print(f"command: dtf pytest {' '.join(args)}  (workers: dtf up --workers N --max-concurrent-tasks 1, "
          f"DTF_TEST_PYTHON={python})")
    results: dict[str, tuple[float, int, dict]] = {}
    pair_ratios: dict[int, list[float]] = {}
    junit = {name: scratch / f"{name}.xml" for name in ("plain", "dtf2w-2")}
    results["plain"] = timed([str(python), "-m", "pytest", *args, f"--junitxml={junit['plain']}"], scratch,
                             label="plain pytest")
    if "xdist" not in skip:
        results["xdist"] = timed([str(python), "-m", "pytest", *args, "-n", "2"], scratch, label="pytest -n 2 (xdist)")
    for workers, part in ((2, "2w"), (1, "1w")):
        if part in skip:
            continue
        data_dir = scratch / f"cluster-{workers}"
        cluster = LocalCluster(workers, data_dir, scratch, python)
        try:
            for run in (1, 2):
                extra = [f"--junitxml={junit['dtf2w-2']}"] if (workers, run) == (2, 2) else []
                results[f"dtf{workers}w-{run}"] = timed(dtf_argv(data_dir, [*args, *extra]), scratch, env,
                                                        label=f"dtf pytest, {workers} worker(s), run {run}")
            reference = (["-n", "2"], "pytest -n 2") if workers == 2 else ([], "plain pytest")
            for pair in range(1, opts.pairs + 1):
                ref = timed([str(python), "-m", "pytest", *args, *reference[0]], scratch,
                            label=f"pair {pair}: {reference[1]}")
                mine = timed(dtf_argv(data_dir, args), scratch, env, label=f"pair {pair}: dtf pytest, {workers}w")
                results[f"pair{workers}w-{pair}-ref"], results[f"pair{workers}w-{pair}-dtf"] = ref, mine
                pair_ratios.setdefault(workers, []).append(mine[0] / ref[0])
        finally:
            cluster.stop()
    if "aside" not in skip:
        # The package copied into a rootdir of its own; the project's interpreter has pytest but not the
        # suite, so neither plain pytest nor the workers can import it from anywhere but this copy.
        source = Path(subprocess.run([str(python), "-c", f"import {opts.suite}; print({opts.suite}.__path__[0])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
        aside = scratch / "aside"
        shutil.copytree(source, aside / opts.suite, ignore=shutil.ignore_patterns("__pycache__"))
        (aside / "pytest.ini").write_text("[pytest]\n")
        own = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", opts.suite]
        results["aside-plain"] = timed(own, aside, env, label="plain pytest on the copy")
        data_dir = scratch / "cluster-aside"
        cluster = LocalCluster(2, data_dir, scratch, Path(sys.executable))
        try:
            results["aside-dtf"] = timed(dtf_argv(data_dir, ["-q", "-p", "no:cacheprovider", opts.suite]), aside, env,
                                         label="dtf pytest from the bundle")
        finally:
            cluster.stop()

    print("\nchecks (counts and exit code equal to plain pytest's):")
    for name, (_, code, got) in results.items():
        if name in ("plain", "aside-plain") or name.endswith("-ref"):
            continue
        ref = results["aside-plain" if name.startswith("aside") else "plain"]
        same = (code, got) == (ref[1], ref[2])
        print(f"  {name:<14} {'same' if same else 'DIFFERENT'}  {got} exit {code} vs {ref[2]} exit {ref[1]}")
    if junit["dtf2w-2"].exists():
        same = junit_cases(junit["dtf2w-2"]) == junit_cases(junit["plain"])
        print(f"  junit (ids, classnames, outcomes, messages) of dtf run 2 vs plain: {'same' if same else 'DIFFERENT'}"
              f", {len(junit_cases(junit['plain']))} testcases")
        try:
            import xmlschema

            schema = xmlschema.XMLSchema(str(REPO / "tests" / "fixtures" / "junit-10.xsd"))
            print(f"  junit-10.xsd: plain {'valid' if schema.is_valid(str(junit['plain'])) else 'INVALID'}, "
                  f"dtf {'valid' if schema.is_valid(str(junit['dtf2w-2'])) else 'INVALID'}")
        except ImportError:
            print("  (xmlschema not installed: XSD validation skipped; pip install -e '.[test]')")
    print("\nratios:")
    plain_t = results["plain"][0]
    if "xdist" in results:
        print(f"  pytest -n 2 / plain pytest            {results['xdist'][0] / plain_t:5.2f}")
        for run in (1, 2):
            if f"dtf2w-{run}" in results:
                print(f"  dtf 2 workers run {run} / pytest -n 2      {results[f'dtf2w-{run}'][0] / results['xdist'][0]:5.2f}")
    for run in (1, 2):
        if f"dtf1w-{run}" in results:
            print(f"  dtf 1 worker run {run} / plain pytest      {results[f'dtf1w-{run}'][0] / plain_t:5.2f}")
    for workers, ratios in pair_ratios.items():
        reference = "pytest -n 2" if workers == 2 else "plain pytest"
        print(f"  pairs, dtf {workers}w / {reference}: " + ", ".join(f"{r:.2f}" for r in ratios)
              + f"  (median {statistics.median(ratios):.2f})")
    if "aside-dtf" in results:
        print(f"  dtf from bundle / plain on the copy    {results['aside-dtf'][0] / results['aside-plain'][0]:5.2f}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
