"""Raft throughput benchmark: the consensus core alone, the durable log's group commit, and raw fsync.

Three measurements, side by side in one run (DESIGN.md section 11: compare, never assert timings):

(a) commits/s of three ``RaftNode`` cores with a lossless, instant in-process network; the leader
    proposes ``batch`` entries per round, then every message is delivered until the cluster is quiet.
    Over ``MemoryStorage`` this is the CPU cost of the protocol in Python with no I/O at all; over
    ``DurableStorage`` (one directory per node, same disk) each node also fsyncs every Ready that must
    be synced, so a round costs at least two fsyncs in sequence (leader, then followers).
(b) group-commit throughput of ``DurableStorage`` on the chosen disk: per group, one ``append`` of
    ``group`` entries of ``entry_bytes`` bytes, one hard-state update and one ``sync()`` (one fsync).
(c) the floor for (b) on the same disk: a bare ``os.write`` + ``os.fsync`` loop writing the same bytes
    per group (``group`` records of the same on-disk size), without any encoding or bookkeeping.

Usage::

    python bench/raft_bench.py [--seconds S] [--dir DIR] [--json]

``run_bench()`` is the entry point the smoke test calls with tiny durations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Allow `python bench/raft_bench.py` from a checkout without installing the package.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from dtf_app.raft.log import DurableStorage  # noqa: E402
from dtf_app.raft.types import Entry, HardState  # noqa: E402
from tests.raft.helpers import pump_instant  # noqa: E402

# Record framing overhead in log.py for a one-entry group: 12-byte record header + 12-byte entries head
# + 13-byte entry head. Used to give the raw-fsync reference the same bytes per entry.
_LOG_OVERHEAD_PER_ENTRY = 37


# --- (a) the consensus core in an instant in-process network --------------------------------------------


def bench_core(
    seconds: float, batch: int, entry_bytes: int = 100, durable_dir: Path | None = None
) -> dict[str, Any]:
    """Commits/s (entries committed on the leader) for 3 cores proposing ``batch`` entries per round.

    With ``durable_dir`` each node persists to its own ``DurableStorage`` there and fsyncs every Ready
    that must be synced (all three on the same disk, one after the other).
    """
    from dtf_app.raft.core import RaftNode
    from dtf_app.raft.storage import MemoryStorage
    from dtf_app.raft.types import RaftConfig

    peers = ("n1", "n2", "n3")
    storages: dict[str, Any] = {
        p: MemoryStorage() if durable_dir is None else DurableStorage(durable_dir / p) for p in peers
    }
    try:
        nodes = {
            p: RaftNode(RaftConfig(node_id=p, peers=peers), storages[p], random.Random(i))
            for i, p in enumerate(peers)
        }
        nodes["n1"].campaign()
        pump_instant(nodes, storages)
        leader = nodes["n1"]
        if leader.role != "leader":
            raise RuntimeError(f"n1 did not win the election (role {leader.role})")
        payload = b"x" * entry_bytes
        start_commit = leader.commit_index
        rounds = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(batch):
                leader.propose(payload)
            pump_instant(nodes, storages)
            rounds += 1
            now = time.perf_counter()
            if now >= deadline:
                break
    finally:
        for storage in storages.values():
            if isinstance(storage, DurableStorage):
                storage.close()
    elapsed = now - start
    commits = leader.commit_index - start_commit
    if commits < rounds * batch:
        raise RuntimeError(f"only {commits} of {rounds * batch} proposed entries committed")
    return {
        "storage": "memory" if durable_dir is None else "durable",
        "batch": batch,
        "rounds": rounds,
        "commits": commits,
        "seconds": elapsed,
        "commits_per_s": commits / elapsed,
        "rounds_per_s": rounds / elapsed,
    }


# --- (b) DurableStorage group commit ---------------------------------------------------------------------


def bench_log(directory: Path, seconds: float, group: int, entry_bytes: int = 100) -> dict[str, Any]:
    """Entries/s and fsyncs/s of append(group entries) + set_hard_state + sync() on ``directory``.

    Only the time inside DurableStorage calls counts: building the Entry objects is the core's cost.
    """
    payload = os.urandom(entry_bytes)
    storage = DurableStorage(directory)
    try:
        index = storage.last_index()
        groups = 0
        elapsed = 0.0
        while elapsed < seconds:
            batch = [Entry(term=1, index=index + k + 1, data=payload) for k in range(group)]
            index += group
            hard_state = HardState(term=1, vote="n1", commit=index)
            start = time.perf_counter()
            storage.append(batch)
            storage.set_hard_state(hard_state)
            storage.sync()
            elapsed += time.perf_counter() - start
            groups += 1
    finally:
        storage.close()
    return {
        "group": group,
        "entries": groups * group,
        "fsyncs": groups,
        "seconds": elapsed,
        "entries_per_s": groups * group / elapsed,
        "fsyncs_per_s": groups / elapsed,
    }


# --- (c) raw os.write + os.fsync --------------------------------------------------------------------------


def bench_raw(directory: Path, seconds: float, group: int, entry_bytes: int = 100) -> dict[str, Any]:
    """The same bytes per group as (b), written with one os.write and made durable with one os.fsync."""
    block = os.urandom((entry_bytes + _LOG_OVERHEAD_PER_ENTRY) * group)
    path = directory / f"raw-{group}.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        groups = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            os.write(fd, block)
            os.fsync(fd)
            groups += 1
            now = time.perf_counter()
            if now >= deadline:
                break
    finally:
        os.close(fd)
        path.unlink()
    elapsed = now - start
    return {
        "group": group,
        "entries": groups * group,
        "fsyncs": groups,
        "seconds": elapsed,
        "entries_per_s": groups * group / elapsed,
        "fsyncs_per_s": groups / elapsed,
    }


# --- driver ----------------------------------------------------------------------------------------------


def _empty_row(group: int) -> dict[str, Any]:
    return {
        "group": group,
        "entries": 0,
        "fsyncs": 0,
        "seconds": 0.0,
        "entries_per_s": 0.0,
        "fsyncs_per_s": 0.0,
    }


def _add_row(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key in ("entries", "fsyncs", "seconds"):
        total[key] += part[key]
    total["entries_per_s"] = total["entries"] / total["seconds"]
    total["fsyncs_per_s"] = total["fsyncs"] / total["seconds"]


def run_bench(
    seconds: float = 1.0,
    directory: str | os.PathLike[str] | None = None,
    *,
    batches: tuple[int, ...] = (1, 64),
    groups: tuple[int, ...] = (1, 16, 256),
    entry_bytes: int = 100,
    include_core: bool = True,
) -> dict[str, Any]:
    """Run the measurements, ``seconds`` each, and return the figures as plain data."""
    result: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "seconds_per_measurement": seconds,
        "entry_bytes": entry_bytes,
    }
    try:
        if not include_core:
            raise ImportError("not requested")
        import dtf_app.raft.core  # noqa: F401
    except ImportError as exc:
        result["core"] = {"available": False, "reason": f"dtf_app.raft.core cannot be imported: {exc}"}
    else:
        result["core"] = {"available": True, "results": []}

    base = Path(tempfile.mkdtemp(prefix="raft-bench-", dir=directory))
    try:
        result["disk_dir"] = str(base)
        if result["core"]["available"]:
            rows = result["core"]["results"]
            rows += [bench_core(seconds, batch, entry_bytes) for batch in batches]
            rows += [bench_core(seconds, b, entry_bytes, base / f"core-{b}") for b in batches]
        # Disk speed drifts with whatever else the machine is doing, so (b) and (c) run interleaved in
        # short slices: each side sees the same conditions and the comparison stays fair.
        slices = max(1, min(10, round(seconds / 0.2)))
        log_rows = {group: _empty_row(group) for group in groups}
        raw_rows = {group: _empty_row(group) for group in groups}
        for slice_no in range(slices):
            for group in groups:
                log_dir = base / f"log-{group}-{slice_no}"
                _add_row(log_rows[group], bench_log(log_dir, seconds / slices, group, entry_bytes))
                shutil.rmtree(log_dir)
                _add_row(raw_rows[group], bench_raw(base, seconds / slices, group, entry_bytes))
        result["log"] = list(log_rows.values())
        result["raw"] = list(raw_rows.values())
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return result


def format_table(result: dict[str, Any]) -> str:
    """Human-readable table of a ``run_bench`` result."""
    lines = [
        f"Python {result['machine']['python']} on {result['machine']['platform']}, "
        f"{result['machine']['cpus']} CPUs; {result['seconds_per_measurement']:g} s per measurement, "
        f"{result['entry_bytes']}-byte entries",
        "",
        "(a) 3 Raft cores, instant lossless network; storage: memory, or durable (log.py, fsync per Ready)",
    ]
    core = result["core"]
    if core["available"]:
        lines.append(f"    {'storage':>8} {'batch':>6} {'commits/s':>12} {'rounds/s':>10}")
        for row in core["results"]:
            lines.append(
                f"    {row['storage']:>8} {row['batch']:>6} {row['commits_per_s']:>12,.0f}"
                f" {row['rounds_per_s']:>10,.0f}"
            )
    else:
        lines.append(f"    skipped: {core['reason']}")
    lines += [
        "",
        f"(b) DurableStorage group commit vs (c) raw os.write+os.fsync, on {result['disk_dir']}",
        f"    {'group':>6} {'log entries/s':>14} {'log fsyncs/s':>13} {'raw entries/s':>14} {'raw fsyncs/s':>13}",
    ]
    for log_row, raw_row in zip(result["log"], result["raw"], strict=True):
        lines.append(
            f"    {log_row['group']:>6} {log_row['entries_per_s']:>14,.0f} {log_row['fsyncs_per_s']:>13,.0f}"
            f" {raw_row['entries_per_s']:>14,.0f} {raw_row['fsyncs_per_s']:>13,.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of each measurement (default 1)")
    parser.add_argument("--dir", default=None, help="directory on the disk to test (default: the temp dir)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    result = run_bench(args.seconds, args.dir)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
