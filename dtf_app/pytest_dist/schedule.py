"""Splitting a suite into chunks: longest first from the duration history, shrinking towards the end.

The cluster's queue hands chunks to whichever slot frees first (a pull model), so a faster worker takes
more of them. The history is normalised by each worker's measured speed (:func:`worker_speeds`: the same
tests timed on different workers), so durations are those of an average worker and the chunk sizes come
from the cluster's capacity in average-worker slots. What the plan controls is the order and size:
groups (files by default, so module fixtures are set up once per chunk; tests with the same
``xdist_group`` mark always together) are sorted by their recorded
duration, longest first (the LPT rule), and packed into chunks whose target size is a share of the work
still left (guided self-scheduling), so the last chunks are small and the slots finish together; a slot
that runs dry at the end takes the next small chunk, which is what work stealing buys.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

GROUPS = ("file", "class", "test")
MIN_CHUNK_SECONDS = 1.0
"""Below this a chunk costs more in round trips (result committed, next chunk assigned: chunks are not
prefetched, so a slot idles for each) than it balances; measured ~0.3 s per chunk on a loaded machine."""
UNKNOWN_TEST_SECONDS = 0.05
MIN_TIMED_SECONDS = 0.005
"""Tests faster than this measure mostly timer and call overhead, not a worker's speed."""
MIN_SPEED_SAMPLES = 5
"""A worker's speed factor needs this many tests also timed on other workers; else it counts as 1."""


def worker_speeds(rows: Iterable[tuple[str, str, float]]) -> dict[str, float]:
    """Each worker's speed factor from ``(nodeid, worker_id, mean duration)`` history rows.

    The factor is how long a worker takes relative to the average worker on the same tests: the
    geometric median over the tests timed on more than one worker of (its duration / that test's mean
    duration over the workers that ran it). 1.0 is average, 2.0 takes twice as long. The median of
    logs makes a few noisy tests (a GC pause, a cold cache) move nothing. Workers without enough
    shared tests are left out (the caller treats them as 1.0).
    """
    per_test: dict[str, dict[str, float]] = {}
    for nodeid, worker_id, duration in rows:
        if worker_id and duration is not None and duration >= MIN_TIMED_SECONDS:
            per_test.setdefault(nodeid, {})[worker_id] = float(duration)
    logs: dict[str, list[float]] = {}
    for by_worker in per_test.values():
        if len(by_worker) < 2:
            continue
        mean = sum(by_worker.values()) / len(by_worker)
        for worker_id, duration in by_worker.items():
            logs.setdefault(worker_id, []).append(math.log(duration / mean))
    return {w: round(math.exp(statistics.median(values)), 4) for w, values in logs.items()
            if len(values) >= MIN_SPEED_SAMPLES}


def normalised_durations(rows: Iterable[tuple[str, str, float]], speeds: Mapping[str, float]) -> dict[str, float]:
    """Each test's mean duration on an average worker: every timing divided by its worker's factor,
    so a test last run on a slow worker does not look long (nor one run on a fast worker short)."""
    sums: dict[str, list[float]] = {}
    for nodeid, worker_id, duration in rows:
        entry = sums.setdefault(nodeid, [0.0, 0])
        entry[0] += float(duration or 0.0) / speeds.get(worker_id, 1.0)
        entry[1] += 1
    return {nodeid: total / count for nodeid, (total, count) in sums.items()}


def capacity(workers: Iterable[tuple[str, int]], speeds: Mapping[str, float]) -> float:
    """The cluster's throughput in average-worker slots: each slot counts 1 / its worker's factor."""
    return sum(max(1, slots) / speeds.get(worker_id, 1.0) for worker_id, slots in workers)


def group_key(nodeid: str, group: str) -> str:
    """The group a test belongs to: its file, its class (or file), or itself."""
    if group == "test":
        return nodeid
    parts = nodeid.split("::")
    if group == "class" and len(parts) > 2:
        return "::".join(parts[:2])
    return parts[0]


def plan_chunks(nodeids: Sequence[str], durations: Mapping[str, float], slots: float,
                group: str = "file", marks: Mapping[str, str] | None = None) -> list[list[str]]:
    """Chunks of node ids, in the order they should be queued (longest first, shrinking).

    ``durations`` are normalised to an average worker (:func:`normalised_durations`) and ``slots`` is
    the cluster's capacity in average-worker slots (:func:`capacity`), so the chunk sizes follow what
    the workers can actually do. ``marks`` maps tests to their ``xdist_group`` name: tests of one such
    group always share a chunk (and so a process), whatever ``group`` says.
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
    slots = max(1.0, float(slots))
    marks = marks or {}
    groups: dict[str, list[str]] = {}
    for nodeid in nodeids:
        key = f"\0mark:{marks[nodeid]}" if nodeid in marks else group_key(nodeid, group)
        groups.setdefault(key, []).append(nodeid)
    weighted = sorted(((sum(durations.get(n, UNKNOWN_TEST_SECONDS) for n in members), key, members)
                       for key, members in groups.items()), key=lambda g: (-g[0], g[1]))
    remaining = sum(w for w, _, _ in weighted)
    chunks: list[list[str]] = []
    current: list[str] = []
    current_weight = 0.0
    for weight, _key, members in weighted:
        current.extend(members)
        current_weight += weight
        # Guided self-scheduling: a chunk is about 1/(2 * slots) of what is left when it is cut.
        target = max(MIN_CHUNK_SECONDS, remaining / (2 * slots))
        if current_weight >= target:
            chunks.append(current)
            remaining -= current_weight
            current, current_weight = [], 0.0
    if current:
        chunks.append(current)
    return chunks
