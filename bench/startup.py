"""Start-up and size of the frozen build beside the source checkout (DESIGN.md §11: measured, never asserted).

    make binary binary-onefile && .venv/bin/python bench/startup.py [--runs 9] [--json]

Figures, each the median over ``--runs`` runs (min and max beside it):

* ``dtf --version`` wall time: frozen one-dir, frozen one-file, and ``python -m dtf_app`` from source;
* worker start to registered: from spawning ``dtf --mode worker`` to the coordinator listing it online
  (a coordinator from source serves them all; polled every 10 ms), frozen one-dir and source, with the
  worker's CPU seconds at that moment beside it (Linux: /proc; a figure the machine's load barely moves);
* sizes: the one-dir folder and the one-file executable, in MB.

The coordinator and every worker run in their own session, as under a service manager (systemd, Docker):
with the kernel's autogroup scheduling a session shares one CPU share, so a worker in the bench's own
session would compete with the coordinator and this poller for it, which no deployment does. Source runs
use compiled bytecode, as an installed package does (``compileall`` first: PYTHONDONTWRITEBYTECODE would
otherwise make every start compile dtf_app from source). The load average is printed with the figures.

Targets from the deployment issue: one-dir ``--version`` <= 0.3 s, a frozen worker registered <= 1.5 s,
one-file <= 80 MB. Nothing fails when a target is missed: the numbers are printed for the note.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
ONEDIR = REPO / "dist" / "dtf" / "dtf"
ONEFILE = REPO / "dist" / "dtf-onefile"
SOURCE = [sys.executable, "-m", "dtf_app"]


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTF_")}
    env["PYTHONPATH"] = str(REPO)
    env["DTF_STATE_DIR"] = str(state)
    return env


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3),
            "max": round(max(samples), 3), "runs": len(samples)}


def time_version(argv: list[str], runs: int, env: dict[str, str]) -> dict[str, float]:
    subprocess.run([*argv, "--version"], capture_output=True, env=env, check=True)  # warm the page cache
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*argv, "--version"], capture_output=True, env=env, check=True)
        samples.append(time.perf_counter() - started)
    return summary(samples)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_worker_registration(argv: list[str], runs: int, root: Path, env: dict[str, str], url: str,
                             admin_key: str, label: str) -> tuple[dict[str, float], dict[str, float] | None]:
    samples: list[float] = []
    cpu: list[float] = []
    with httpx.Client(base_url=url, headers={"X-API-Key": admin_key}, timeout=5) as client:
        for i in range(runs):
            worker_id = f"{label}-{i}"
            started = time.perf_counter()
            proc = subprocess.Popen([*argv, "--mode", "worker", "--coordinator", url, "--worker-id", worker_id,
                                     "--data-dir", str(root / worker_id)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env, start_new_session=True)
            try:
                deadline = started + 60
                while time.perf_counter() < deadline:
                    workers = client.get("/api/workers").json()["workers"]
                    if any(w["worker_id"] == worker_id and w["status"] == "online" for w in workers):
                        samples.append(time.perf_counter() - started)
                        used = cpu_seconds(proc.pid)
                        if used is not None:
                            cpu.append(used)
                        break
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker {worker_id} exited with {proc.returncode}")
                    time.sleep(0.01)
                else:
                    raise RuntimeError(f"worker {worker_id} did not register within 60 s")
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    return summary(samples), (summary(cpu) if len(cpu) == len(samples) else None)


def size_mb(path: Path) -> float:
    if path.is_dir():
        return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 1)
    return round(path.stat().st_size / 1e6, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--onedir", type=Path, default=ONEDIR, help="the one-dir executable to measure")
    parser.add_argument("--onefile", type=Path, default=ONEFILE, help="the one-file executable to measure")
    args = parser.parse_args()
    onedir, onefile = args.onedir, args.onefile
    results: dict[str, object] = {}
    for package in ("dtf_app", "plugins"):
        compileall.compile_dir(str(REPO / package), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = _env(root / "state")
        results["version_source"] = time_version(SOURCE, args.runs, env)
        if onedir.exists():
            results["version_onedir"] = time_version([str(onedir)], args.runs, env)
            results["size_onedir_mb"] = size_mb(onedir.parent)
        if onefile.exists():
            results["version_onefile"] = time_version([str(onefile)], args.runs, env)
            results["size_onefile_mb"] = size_mb(onefile)
        coordinator = subprocess.Popen([*SOURCE, "--mode", "coordinator", "--port", "0", "--data-dir",
                                        str(root / "coord"), "--heartbeat-interval", "5"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        try:
            node_file = root / "coord" / "node.json"
            for _ in range(600):
                # node.json appears once the port is bound, admin.key once the leader bootstrapped its keys.
                if node_file.exists() and (root / "coord" / "admin.key").exists():
                    break
                time.sleep(0.1)
            url = json.loads(node_file.read_text())["url"]
            admin_key = (root / "coord" / "admin.key").read_text().strip()
            measured = {"source": time_worker_registration(SOURCE, args.runs, root, env, url, admin_key, "src")}
            if onedir.exists():
                measured["onedir"] = time_worker_registration([str(onedir)], args.runs, root, env, url, admin_key,
                                                              "frozen")
            for name, (wall, cpu) in measured.items():
                results[f"worker_registered_{name}"] = wall
                if cpu is not None:
                    results[f"worker_cpu_at_registration_{name}"] = cpu
        finally:
            coordinator.terminate()
            coordinator.wait(timeout=30)
    results["load_average"] = [round(x, 1) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'measurement':42} {'median':>8} {'min':>8} {'max':>8}")
    for name, value in results.items():
        if isinstance(value, dict):
            print(f"{name + ' (s)':42} {value['median']:8.3f} {value['min']:8.3f} {value['max']:8.3f}")
        elif isinstance(value, list):
            print(f"{name:42} {' '.join(str(v) for v in value)}")
        elif value is not None:
            print(f"{name:42} {value:8.1f}")
    print(f"({args.runs} runs each; targets: version_onedir <= 0.3 s, worker_registered_onedir <= 1.5 s, "
          "size_onefile_mb <= 80)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
