"""Load-balancer strategies: which free, capable worker a ready task goes to (``load_balancer.strategy``).

Pure and leader-local: the scheduler's pass (:func:`dtf_app.coordinator.scheduler.plan_assignments`) asks
a :class:`Placement` for a worker for each task it takes from the queue, in queue order. Nothing here is
replicated: the answer becomes an ``AssignTasks`` command. Strategies:

- ``fair_share`` (default): spread each submitter's tasks over the capable workers: the worker that holds
  the fewest tasks of this task's submitter, then the least loaded;
- ``least_loaded``: the lowest load (tasks held / slots), then the most free slots;
- ``performance_aware``: the worker expected to run this kind of task fastest, from the history of
  execution times per worker and then per hardware class (:class:`PerfHistory`: seeded from DuckDB when
  a node becomes leader, then kept in its memory from the results it commits); workers without history count as the mean of those with one, and
  with no history at all the choice is ``least_loaded``'s;
- ``packed``: fill one worker before the next (in worker id order), for locality (one GPU box busy,
  the others left whole for big tasks).

``worker_cap`` bounds how many capable workers with free slots one placement compares (a window that
rotates over them), so a pass costs O(tasks x worker_cap) on a cluster of a thousand workers rather than
O(tasks x workers); with fewer candidates than the cap the choice is exact. ``task_cap_per_worker`` (the
most tasks a worker holds at once) is applied by the leader to the free slots it offers.

Ties break on worker id order, so a fixed scenario always places the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from dtf_app.protocol import BALANCER_STRATEGIES as STRATEGIES

DEFAULT_STRATEGY = "fair_share"
EMA_WEIGHT = 0.3
"""Weight of the newest execution time in the moving average (a worker that slows down shows within a few tasks)."""

Satisfies = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
Fits = Callable[[str, Mapping[str, Any]], bool]
"""(worker_id, task) -> do the task's ``resources`` fit in what the worker has left unreserved this pass."""


def submitter_of(task: Mapping[str, Any]) -> str:
    """Who a task counts against for fair share: its ``submitter`` (the API key's name by default)."""
    return str(task.get("submitter") or "")


def group_of(task: Mapping[str, Any]) -> str:
    """The task group fair share spreads across within one submitter: ``group``, default its batch."""
    return str(task.get("group") or task.get("batch_id") or "")


def perf_kind(task: Mapping[str, Any]) -> str:
    """What execution times are compared by: the task type and what it runs (model, test file, callable)."""
    config = task.get("config") if isinstance(task.get("config"), Mapping) else {}
    what: Any = config.get("model") or config.get("test_file") or config.get("callable") or config.get("name")
    command = config.get("command")
    if what is None and isinstance(command, list):
        what = " ".join(str(c) for c in command[:3])[:200]
    if isinstance(what, list):
        what = ",".join(str(w) for w in what[:3])
    return f"{task.get('type')}:{what or ''}"


def hardware_class(worker: Mapping[str, Any]) -> str:
    """A worker's hardware class for the history: its declared ``hardware_id``, else its hardware kinds
    and the name of its first GPU (two identical boxes share their history)."""
    caps = worker.get("capabilities") if isinstance(worker.get("capabilities"), Mapping) else {}
    declared = worker.get("hardware_id") or caps.get("hardware_id")
    if declared:
        return str(declared)
    gpu = caps.get("gpu") if isinstance(caps.get("gpu"), Mapping) else {}
    devices = gpu.get("devices") if isinstance(gpu.get("devices"), list) else []
    first = devices[0].get("name") if devices and isinstance(devices[0], Mapping) else ""
    return "+".join(sorted(str(h) for h in worker.get("hardware") or ["cpu"])) + (f"/{first}" if first else "")


HISTORY_SEED_ROWS = 20_000
"""How many of the newest completed executions a new leader reads from DuckDB to seed its history."""

HISTORY_SEED_SQL = (
    "SELECT h.worker_id, t.type, t.config, h.execution_time_seconds AS seconds "
    "FROM task_execution_history h JOIN distributed_tasks t ON t.task_id = h.task_id "
    "WHERE h.status = 'completed' AND h.execution_time_seconds IS NOT NULL AND h.worker_id IS NOT NULL "
    "ORDER BY h.id DESC LIMIT ?")
"""The execution history ``performance_aware`` starts from (newest first; replayed oldest first)."""


class PerfHistory:
    """Moving averages of execution seconds per (worker, kind) and per (hardware class, kind).

    Leader memory, fed by every completion the leader commits, and seeded when a node becomes leader
    from the execution history in its DuckDB file (:meth:`seed`, ``task_execution_history``), so a new
    leader after a failover places like the old one; no query runs on the scheduling path.
    """

    def __init__(self) -> None:
        self.by_worker: dict[tuple[str, str], float] = {}
        self.by_class: dict[tuple[str, str], float] = {}

    def record(self, worker_id: str, hw_class: str, kind: str, seconds: float) -> None:
        """One finished execution."""
        if not seconds >= 0:
            return
        for table, key in ((self.by_worker, (worker_id, kind)), (self.by_class, (hw_class, kind))):
            old = table.get(key)
            table[key] = seconds if old is None else (1 - EMA_WEIGHT) * old + EMA_WEIGHT * seconds

    def seed(self, rows: list[Mapping[str, Any]], workers: Mapping[str, Mapping[str, Any]]) -> int:
        """Replay rows of :data:`HISTORY_SEED_SQL` (newest first) for workers the state knows; returns
        how many were used."""
        used = 0
        for row in reversed(rows):
            worker = workers.get(str(row.get("worker_id")))
            seconds = row.get("seconds")
            if worker is None or not isinstance(seconds, int | float):
                continue
            config = row.get("config")
            kind = perf_kind({"type": row.get("type"), "config": config if isinstance(config, Mapping) else {}})
            self.record(str(row["worker_id"]), hardware_class(worker), kind, float(seconds))
            used += 1
        return used

    def expected(self, worker_id: str, hw_class: str, kind: str) -> float | None:
        """The expected execution seconds of ``kind`` on this worker (its own history, else its class's)."""
        own = self.by_worker.get((worker_id, kind))
        return own if own is not None else self.by_class.get((hw_class, kind))


def _signature(req: Mapping[str, Any]) -> Any:
    """A hashable key of a requirements object: equal requirements, one candidate list per pass."""
    if not req:
        return ""
    try:
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in req.items()))
        hash(key)
        return key
    except TypeError:  # a nested object: the slower, general form
        return json.dumps(req, sort_keys=True, separators=(",", ":"), default=str)


class _Candidates:
    __slots__ = ("ids", "offset", "start")

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.offset = 0  # rotating window start (unordered strategies)
        self.start = 0  # first possibly-open index (packed: the list keeps its order)


class Placement:
    """One scheduling pass's view of the workers' free slots and load, choosing with one strategy.

    ``free_slots`` is consumed as tasks are placed (the caller's dict). Candidate workers are computed
    once per distinct requirement set per pass, so tasks with the same requirements cost O(worker_cap).
    """

    def __init__(self, strategy: str, workers: Mapping[str, Mapping[str, Any]], free_slots: dict[str, int], *,
                 satisfies: Satisfies, tasks: Mapping[str, Mapping[str, Any]] | None = None,
                 worker_cap: int | None = None, history: PerfHistory | None = None,
                 fits: Fits | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"load_balancer.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.strategy = strategy
        self.workers = workers
        self.free = free_slots
        self.satisfies = satisfies
        self.tasks = tasks or {}
        self.worker_cap = worker_cap if worker_cap and worker_cap > 0 else None
        self.history = history
        self.fits = fits
        self.remaining = sum(n for n in free_slots.values() if n > 0)
        self._order = sorted(w for w, n in free_slots.items() if n > 0 and w in workers)
        self._rank = {w: i for i, w in enumerate(self._order)}
        self._cap = {w: max(1, int(workers[w].get("max_concurrent_tasks") or 1)) for w in self._order}
        self._held: dict[str, int] = {w: len(workers[w].get("assigned") or ()) for w in self._order}
        self._by_submitter: dict[str, Counter[str]] = {}
        self._classes: dict[str, str] = {}
        self._candidates: dict[Any, _Candidates] = {}

    # ------------------------------------------------------------------ load
    def held(self, worker_id: str) -> int:
        """Tasks the worker holds (assigned or running), this pass's placements included."""
        return self._held[worker_id]

    def load(self, worker_id: str) -> float:
        """Tasks held per slot."""
        return self._held[worker_id] / self._cap[worker_id]

    def _submitters(self, worker_id: str) -> Counter[str]:
        counts = self._by_submitter.get(worker_id)
        if counts is None:
            counts = Counter(submitter_of(self.tasks[t]) for t in self.workers[worker_id].get("assigned") or ()
                             if t in self.tasks)
            self._by_submitter[worker_id] = counts
        return counts

    def _class(self, worker_id: str) -> str:
        found = self._classes.get(worker_id)
        if found is None:
            found = self._classes[worker_id] = hardware_class(self.workers[worker_id])
        return found

    # ------------------------------------------------------------------ choice
    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0

    def _for(self, req: Mapping[str, Any]) -> _Candidates:
        sig = _signature(req)
        found = self._candidates.get(sig)
        if found is None:
            ids = [w for w in self._order if self.free.get(w, 0) > 0 and self.satisfies(self.workers[w], req)]
            found = self._candidates[sig] = _Candidates(ids)
        return found

    def choose(self, task: Mapping[str, Any]) -> str | None:
        """The worker this task should go to, or None when no capable worker has a free slot (or, for a
        task that reserves ``resources``, none whose unreserved capacity fits them)."""
        cands = self._for(task.get("requirements") or {})
        ids = cands.ids
        free = self.free
        # Only tasks that reserve pay for the capacity check, and only on the worker the strategy would
        # pick (then the next best, ...): usually one check per task. A worker that cannot fit this task
        # stays a candidate for the next (smaller) one.
        fits = self.fits if self.fits is not None and task.get("resources") else None
        if self.strategy == "packed":
            while cands.start < len(ids) and free.get(ids[cands.start], 0) <= 0:
                cands.start += 1
            if fits is None:
                return ids[cands.start] if cands.start < len(ids) else None
            return next((ids[j] for j in range(cands.start, len(ids))
                         if free.get(ids[j], 0) > 0 and fits(ids[j], task)), None)
        window: list[str] = []
        seen: set[str] = set()
        i = cands.offset
        n = len(ids)
        limit = min(self.worker_cap or n, n)
        while len(window) < limit:
            if i >= n:
                i = 0
            worker_id = ids[i]
            if free[worker_id] <= 0:
                # Full for the rest of the pass: drop it (order does not matter to a scored choice).
                ids[i] = ids[-1]
                ids.pop()
                n -= 1
                limit = min(limit, n)
                continue
            if worker_id in seen:
                break
            seen.add(worker_id)
            window.append(worker_id)
            i += 1
        if not window:
            return None
        cands.offset = i
        if fits is None:
            return window[0] if len(window) == 1 else self._best(task, window)
        while window:
            best = window[0] if len(window) == 1 else self._best(task, window)
            if fits(best, task):
                return best
            window.remove(best)
        # Nothing in the window fits: the best of the other capable workers that do (rare: a task bigger
        # than what the compared workers have left).
        others = [w for w in ids if w not in seen and free.get(w, 0) > 0 and fits(w, task)]
        return self._best(task, others) if others else None

    def _best(self, task: Mapping[str, Any], window: list[str]) -> str:
        """The strategy's choice among ``window`` (capable workers with a free slot)."""
        free, held, cap, rank = self.free, self._held, self._cap, self._rank
        if self.strategy == "packed":
            return min(window, key=rank.__getitem__)
        if self.strategy == "fair_share":
            # Inline rather than min(key=...): this runs once per placed task, over worker_cap workers.
            submitter = submitter_of(task)
            subs = self._submitters
            best, best_key = window[0], None
            for w in window:
                key = (subs(w)[submitter], held[w] / cap[w], -free[w], rank[w])
                if best_key is None or key < best_key:
                    best, best_key = w, key
            return best
        if self.strategy == "performance_aware" and self.history is not None:
            kind = perf_kind(task)
            history = self.history
            expected = {w: history.expected(w, self._class(w), kind) for w in window}
            known = [v for v in expected.values() if v is not None]
            if known:
                mean = sum(known) / len(known)
                return min(window, key=lambda w: (mean if expected[w] is None else expected[w], held[w] / cap[w],
                                                  rank[w]))
        return min(window, key=lambda w: (held[w] / cap[w], -free[w], rank[w]))

    def take(self, task: Mapping[str, Any], worker_id: str) -> None:
        """Record that ``task`` was placed on ``worker_id``."""
        self.free[worker_id] -= 1
        self.remaining -= 1
        self._held[worker_id] += 1
        if self.strategy == "fair_share":
            self._submitters(worker_id)[submitter_of(task)] += 1
