"""Task validation, requirement matching, the ready queue and its policy.

Pure functions and one derived index: nothing here is replicated. The leader builds a
:class:`ReadyQueue` from the state and asks :func:`plan_assignments` which pending tasks go to which
free worker slots (the worker itself is the balancer's choice, balancer.py); the answer becomes an
``AssignTasks`` command. :func:`plan_preemptions` picks running tasks to give back (``PreemptTasks``).
Every function takes the time it should judge by (``now``): the clock is injected, so tests drive it.

Queue policy (:class:`QueuePolicy`):

- *Priority with aging.* A higher number runs first (0-100, default 1). A waiting task's effective
  priority rises with its wait by ``aging_rate`` points per second, up to 100:
  ``min(100, priority + floor(aging_rate * waited))``; equal effective priorities run by fair share, then
  oldest first. *Bound:* a task of priority p is, after ``(100 - p) / aging_rate`` seconds of waiting,
  at the top effective priority, where only fair share and age order it; every task submitted after it
  is then behind it (it is older and, against tasks of its own submitter and group, fair share is even).
  So a priority-0 task waits at most ``100 / aging_rate`` seconds (:attr:`QueuePolicy.aging_bound`, 600 s
  at the default rate) plus the time until a capable slot frees up, *whatever the stream of priority-100
  tasks submitted after it*; only tasks that were already waiting when it arrived can still go first.
  The wait counts from when the task became ready (``ready_since``: submitted, or its dependencies done)
  and, for a queue that was just served, from that service (so one busy queue does not keep a
  permanent head start over a newer one of equal priority).
- *Fair share.* Equal effective priorities go to the submitter holding fewest running or assigned tasks
  (``submitter``: the API key's name unless the task names one, e.g. under the shared key of ``dtf up``),
  then, within a submitter, to the task group holding fewest (``group``, default the task's batch).
- *Backoff.* A retried task waits until its ``not_before`` (replicated, set by the state machine).
- *Preemption* (``preemption_threshold`` > 0): a ready task that no free slot can take may have a
  running task of priority at least ``preemption_threshold`` lower, on a worker that meets its
  requirements, given back (requeued without spending a retry). A task is preempted at most
  ``max_preemptions`` times, so aging plus preemption cannot starve it either.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dtf_app.coordinator import balancer
from dtf_app.coordinator import resources as resmod
from dtf_app.coordinator.balancer import group_of, submitter_of
from dtf_app.protocol import (
    BATCH_SIZE_RANGE,
    BENCH_BACKENDS,
    BENCH_INT_RANGES,
    HARDWARE_KINDS,
    MAX_ID_LENGTH,
    TASK_STATES,
    TASK_TYPES,
    id_problem,
)

# The vocabulary and the limits are shared with workers and clients: one definition, in protocol.py.
from dtf_app.protocol import BENCH_FUNCTIONS as BENCH_FUNCTIONS
from dtf_app.protocol import BENCH_PRECISIONS as PRECISIONS
from dtf_app.protocol import TERMINAL_STATES as TERMINAL_STATES  # re-exported for callers

ALL_STATES = TASK_STATES
TASK_KEYS = ("type", "priority", "config", "requirements", "dependencies", "timeout_seconds", "max_retries",
             "name", "task_id", "metadata", "submitter", "group", "resources")
# Also accepted: "parameters", the source design's name for "config" (see validate_task).
REQUIREMENT_KEYS = ("hardware", "min_memory_gb", "min_cuda_compute", "min_gpu_memory_gb", "tags", "os",
                    "min_cpu_cores", "exclude_workers")
OS_NAMES = ("linux", "windows", "macos", "darwin")
PRIORITY_RANGE = (0, 100)
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_TASK_ID_LEN = MAX_ID_LENGTH


class TaskValidationError(ValueError):
    """A submitted task document is wrong; the message says where, what, and what is accepted."""


class TaskConflictError(TaskValidationError):
    """A submitted task_id is already taken (HTTP 409)."""


class TaskUnprocessableError(TaskValidationError):
    """A well-formed task that cannot be accepted as it stands: an unknown dependency, a dependency cycle,
    or no known worker can run it (HTTP 422; 400 is kept for documents that break the API's schema)."""


# ---------------------------------------------------------------------------------------------- validation
def as_int(value: Any) -> Any:
    """An integral JSON number as int (``3.0`` -> ``3``: JSON does not tell them apart); else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # Finite only: NaN compares false with everything and would slip through every range check.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _typename(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if _is_number(value) else type(value).__name__)


def _str_list(value: Any, where: str, *, allow_empty: bool = True) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TaskValidationError(f"{where} must be an array of strings, got {_typename(value)}")
    if not allow_empty and not value:
        raise TaskValidationError(f"{where} must not be empty")
    return value


def _positive_int(value: Any, where: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise TaskValidationError(f"{where} must be an integer of at least {minimum}{upper}, got {value!r}")
    return value


def _copy(config: Any) -> Any:
    """A shallow copy of a config object (validation normalises numbers in it)."""
    return dict(config) if isinstance(config, dict) else config


def _validate_config(kind: str, config: Any, where: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise TaskValidationError(f"{where} must be an object, got {_typename(config)}")
    if kind == "test":
        test_file = config.get("test_file")
        if "pytest_dist" in config and test_file is None:
            # A chunk of a `dtf pytest` run: the one definition of its shape is in pytest_dist.chunks.
            from dtf_app.pytest_dist.chunks import ChunkError, validate_chunk

            try:
                validate_chunk(config["pytest_dist"], f"{where}.pytest_dist")
            except ChunkError as exc:
                raise TaskValidationError(str(exc)) from None
        elif isinstance(test_file, str):
            if not test_file.strip():
                raise TaskValidationError(f"{where}.test_file must not be empty")
        elif isinstance(test_file, list):
            _str_list(test_file, f"{where}.test_file", allow_empty=False)
        else:
            raise TaskValidationError(
                f"{where}.test_file is required for a test task: a path or pytest node id, or a list of them")
        if "test_args" in config:
            _str_list(config["test_args"], f"{where}.test_args")
    elif kind == "benchmark":
        if not isinstance(config.get("model"), str) or not config["model"].strip():
            raise TaskValidationError(f"{where}.model is required for a benchmark task (a model name, e.g. 'bert')")
        if "batch_sizes" in config:
            sizes = config["batch_sizes"]
            if isinstance(sizes, list):
                sizes = config["batch_sizes"] = [as_int(b) for b in sizes]
            low, high = BATCH_SIZE_RANGE
            if not isinstance(sizes, list) or not sizes or not all(_is_int(b) and low <= b <= high for b in sizes):
                raise TaskValidationError(
                    f"{where}.batch_sizes must be a non-empty array of integers from {low} to {high}, got {sizes!r:.200}")
        if "precision" in config:
            precision = config["precision"]
            values = precision if isinstance(precision, list) else [precision]
            if not values or not all(isinstance(p, str) and p in PRECISIONS for p in values):
                raise TaskValidationError(
                    f"{where}.precision must be one of {', '.join(PRECISIONS)} (or an array of them), got {precision!r}")
        for key, (low, high) in BENCH_INT_RANGES.items():
            if key in config:
                config[key] = _positive_int(as_int(config[key]), f"{where}.{key}", minimum=low, maximum=high)
        if "backend" in config and config["backend"] not in ("auto", *BENCH_BACKENDS):
            raise TaskValidationError(
                f"{where}.backend must be auto or one of {', '.join(BENCH_BACKENDS)}, got {config['backend']!r}")
        if "functions" in config:
            funcs = _str_list(config["functions"], f"{where}.functions")
            bad = [f for f in funcs if f not in BENCH_FUNCTIONS]
            if bad:
                raise TaskValidationError(f"{where}.functions has {bad}; accepted: {', '.join(BENCH_FUNCTIONS)}")
    else:
        chosen = [k for k in ("command", "callable", "name") if k in config]
        if len(chosen) != 1:
            raise TaskValidationError(
                f"{where} of a custom task needs exactly one of 'command' (argv array), 'callable' "
                f"('module:function') or 'name' (a registered custom task), got {chosen or 'none'}")
        if "command" in config:
            _str_list(config["command"], f"{where}.command", allow_empty=False)
        elif "callable" in config:
            target = config["callable"]
            if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
                raise TaskValidationError(f"{where}.callable must be 'module:function', got {target!r}")
        elif not isinstance(config["name"], str) or not config["name"]:
            raise TaskValidationError(f"{where}.name must be a non-empty string")
        if "args" in config and not isinstance(config["args"], list):
            raise TaskValidationError(f"{where}.args must be an array, got {_typename(config['args'])}")
        if "kwargs" in config and not isinstance(config["kwargs"], dict):
            raise TaskValidationError(f"{where}.kwargs must be an object, got {_typename(config['kwargs'])}")
    if "working_dir" in config and not isinstance(config["working_dir"], str):
        raise TaskValidationError(f"{where}.working_dir must be a string")
    if "env" in config:
        env = config["env"]
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise TaskValidationError(f"{where}.env must be an object of string values")
    return config


def _validate_requirements(req: Any, where: str) -> dict[str, Any]:
    if req is None:
        return {}
    if not isinstance(req, dict):
        raise TaskValidationError(f"{where} must be an object, got {_typename(req)}")
    unknown = sorted(set(req) - set(REQUIREMENT_KEYS))
    if unknown:
        raise TaskValidationError(
            f"{where} has unknown key(s) {', '.join(unknown)}; accepted: {', '.join(REQUIREMENT_KEYS)}")
    out = dict(req)
    if "hardware" in req:
        hardware = req["hardware"]
        if isinstance(hardware, str):
            hardware = [hardware]
        hardware = _str_list(hardware, f"{where}.hardware")
        bad = [h for h in hardware if h not in HARDWARE_KINDS]
        if bad:
            raise TaskValidationError(f"{where}.hardware has {bad}; accepted: {', '.join(HARDWARE_KINDS)}")
        out["hardware"] = list(dict.fromkeys(hardware))
    for key in ("min_memory_gb", "min_cuda_compute", "min_gpu_memory_gb"):
        if key in req and (not _is_number(req[key]) or req[key] < 0):
            raise TaskValidationError(f"{where}.{key} must be a non-negative number, got {req[key]!r}")
    if "min_cpu_cores" in req:
        out["min_cpu_cores"] = _positive_int(as_int(req["min_cpu_cores"]), f"{where}.min_cpu_cores")
    if "tags" in req:
        out["tags"] = list(dict.fromkeys(_str_list(req["tags"], f"{where}.tags")))
    if "exclude_workers" in req:  # e.g. a rerun of a failed test "on another worker" (dtf pytest --reruns)
        out["exclude_workers"] = list(dict.fromkeys(_str_list(req["exclude_workers"], f"{where}.exclude_workers")))
    if "os" in req:
        if not isinstance(req["os"], str) or req["os"].lower() not in OS_NAMES:
            raise TaskValidationError(f"{where}.os must be one of linux, windows, macos, got {req['os']!r}")
        out["os"] = "macos" if req["os"].lower() == "darwin" else req["os"].lower()
    return out


def validate_task(doc: Any, where: str = "task", *, default_max_retries: int = 3) -> dict[str, Any]:
    """Check one submitted task document and return it normalised (defaults filled in)."""
    if not isinstance(doc, dict):
        raise TaskValidationError(f"{where} must be a JSON object, got {_typename(doc)}")
    if "parameters" in doc:
        # The source design's Task model names the config "parameters": accept either name, not both.
        if "config" in doc and doc["config"] != doc["parameters"]:
            raise TaskValidationError(f"{where} has both config and parameters (two names for the same "
                                      "thing); send one of them")
        doc = {("config" if k == "parameters" else k): v for k, v in doc.items() if k != "config"}
    unknown = sorted(set(doc) - set(TASK_KEYS))
    if unknown:
        raise TaskValidationError(f"{where} has unknown key(s) {', '.join(unknown)}; accepted: {', '.join(TASK_KEYS)}")
    kind = doc.get("type")
    if kind not in TASK_TYPES:
        raise TaskValidationError(f"{where}.type must be one of {', '.join(TASK_TYPES)}, got {kind!r}")
    priority = as_int(doc.get("priority", 1))
    if not _is_int(priority) or not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        raise TaskValidationError(
            f"{where}.priority must be an integer from {PRIORITY_RANGE[0]} to {PRIORITY_RANGE[1]} "
            f"(higher runs first), got {priority!r}")
    timeout = doc.get("timeout_seconds", 3600)
    if not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise TaskValidationError(
            f"{where}.timeout_seconds must be a number greater than 0 and at most {MAX_TIMEOUT_SECONDS}, got {timeout!r}")
    max_retries = as_int(doc.get("max_retries", default_max_retries))
    if not _is_int(max_retries) or not 0 <= max_retries <= 100:
        raise TaskValidationError(f"{where}.max_retries must be an integer from 0 to 100, got {max_retries!r}")
    name = doc.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 500):
        raise TaskValidationError(f"{where}.name must be a string of at most 500 characters")
    deps = doc.get("dependencies") or []
    _str_list(deps, f"{where}.dependencies")
    task_id = doc.get("task_id")
    problem = id_problem(task_id, f"{where}.task_id") if task_id is not None else None
    if problem:
        raise TaskValidationError(problem)
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise TaskValidationError(f"{where}.metadata must be an object")
    # Fair-share identities: who the task counts against (default: the API key's name, filled in at submit)
    # and which group of that submitter's tasks it belongs to (default: its batch).
    for key in ("submitter", "group"):
        if doc.get(key) is not None:
            problem = id_problem(doc[key], f"{where}.{key}")
            if problem:
                raise TaskValidationError(problem)
    try:
        reserve = resmod.validate(doc.get("resources"), f"{where}.resources")
    except resmod.ResourceError as exc:
        raise TaskValidationError(str(exc)) from None
    out = {
        "submitter": doc.get("submitter"), "group": doc.get("group"),
        "type": kind, "priority": priority, "name": name or None,
        "config": _validate_config(kind, _copy(doc.get("config", {})), f"{where}.config"),
        "requirements": _validate_requirements(doc.get("requirements"), f"{where}.requirements"),
        "dependencies": list(deps), "timeout_seconds": timeout, "max_retries": max_retries,
        "task_id": task_id, "metadata": metadata or {},
    }
    if reserve:  # only tasks that reserve carry the key: the common task document stays as it was
        out["resources"] = reserve
    return out


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle among the graph's own nodes (edges to other ids are ignored), or None.

    Only tasks of one batch can form a cycle: a task can only depend on tasks that exist or come with it.
    """
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in graph:
        if root in state:
            continue
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(graph[root]))]
        path = [root]
        state[root] = 1
        while stack:
            node, edges = stack[-1]
            for nxt in edges:
                if nxt not in graph:
                    continue
                if state.get(nxt) == 1:
                    return path[path.index(nxt):] + [nxt]
                if nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append((nxt, iter(graph[nxt])))
                    break
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return None


# ---------------------------------------------------------------------------------------------- matching
def _gpu_devices(caps: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    gpu = caps.get("gpu") or {}
    devices = gpu.get("devices") if isinstance(gpu, Mapping) else None
    return [d for d in devices or [] if isinstance(d, Mapping)]


def _worker_os(caps: Mapping[str, Any]) -> str:
    platform = caps.get("platform") or {}
    name = str(platform.get("os") or platform.get("system") or "").lower()
    return "macos" if name == "darwin" else name


def unmet_requirements(worker: Mapping[str, Any], req: Mapping[str, Any],
                       reserve: Mapping[str, Any] | None = None) -> list[str]:
    """Which requirements (and reservations that could never fit) this worker does not meet (empty: it can)."""
    caps = worker.get("capabilities") or {}
    missing: list[str] = resmod.unmet_capacity(worker, reserve, req) if reserve else []
    kinds = set(worker.get("hardware") or caps.get("hardware") or ["cpu"])
    for kind in req.get("hardware") or ():
        if kind not in kinds:
            missing.append(f"hardware {kind}")
    if "min_memory_gb" in req:
        total = float((caps.get("memory") or {}).get("total_gb") or 0)
        if total < req["min_memory_gb"]:
            missing.append(f"memory >= {req['min_memory_gb']} GB")
    gpus = _gpu_devices(caps)
    if "min_gpu_memory_gb" in req and not any(float(d.get("memory_gb") or 0) >= req["min_gpu_memory_gb"] for d in gpus):
        missing.append(f"a GPU with >= {req['min_gpu_memory_gb']} GB")
    if "min_cuda_compute" in req:
        def compute(device: Mapping[str, Any]) -> float:
            try:
                return float(device.get("compute_capability") or 0)
            except (TypeError, ValueError):
                return 0.0
        if not any(d.get("type") == "cuda" and compute(d) >= req["min_cuda_compute"] for d in gpus):
            missing.append(f"CUDA compute capability >= {req['min_cuda_compute']}")
    if "min_cpu_cores" in req:
        cores = int((caps.get("cpu") or {}).get("cores") or (caps.get("cpu") or {}).get("threads") or 0)
        if cores < req["min_cpu_cores"]:
            missing.append(f">= {req['min_cpu_cores']} CPU cores")
    tags = set(worker.get("tags") or ())
    for tag in req.get("tags") or ():
        if tag not in tags:
            missing.append(f"tag {tag}")
    if "os" in req and _worker_os(caps) != req["os"]:
        missing.append(f"os {req['os']}")
    if worker.get("worker_id") in (req.get("exclude_workers") or ()):
        missing.append(f"a worker other than {worker.get('worker_id')}")
    return missing


def worker_satisfies(worker: Mapping[str, Any], req: Mapping[str, Any],
                     reserve: Mapping[str, Any] | None = None) -> bool:
    """True when the worker meets every requirement (and could hold the reservation when idle)."""
    return (not req and not reserve) or not unmet_requirements(worker, req, reserve)


def infeasibility_reason(workers: Iterable[Mapping[str, Any]], req: Mapping[str, Any],
                         reserve: Mapping[str, Any] | None = None) -> str | None:
    """None when some known worker could run a task with these requirements, else why none can.

    With no worker known at all nothing can be judged yet, so the task is accepted.
    """
    known = list(workers)
    if not known or (not req and not reserve):
        return None
    closest: list[str] | None = None
    for worker in known:
        missing = unmet_requirements(worker, req, reserve)
        if not missing:
            return None
        if closest is None or len(missing) < len(closest):
            closest = missing
    return (f"no known worker ({len(known)} registered) meets the requirements; "
            f"the closest lacks: {', '.join(closest or [])}")


DEFAULT_AGING_RATE = 1 / 6
"""Priority points a waiting task gains per second (100 points in 10 minutes)."""
MAX_PREEMPTIONS = 1
"""How often one task may be given back for a higher one (then it runs to its end)."""


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """How the ready queue orders tasks and when the leader preempts (see the module docstring)."""

    aging_rate: float = DEFAULT_AGING_RATE
    preemption_threshold: int = 0
    """0: never preempt; else the least priority difference that lets a ready task preempt a running one."""
    max_preemptions: int = MAX_PREEMPTIONS

    @property
    def aging_bound(self) -> float:
        """The longest a priority-0 task stays below the top effective priority (seconds; inf without aging)."""
        span = PRIORITY_RANGE[1] - PRIORITY_RANGE[0]
        return span / self.aging_rate if self.aging_rate > 0 else math.inf

    def level(self, priority: int, waited: float) -> int:
        """The effective priority of a task of ``priority`` that has waited ``waited`` seconds."""
        if self.aging_rate <= 0 or waited <= 0:
            return priority
        return min(PRIORITY_RANGE[1], priority + int(self.aging_rate * waited))


NO_AGING = QueuePolicy(aging_rate=0.0)


def ready_since(task: Mapping[str, Any]) -> float:
    """Since when a task has been ready to run (its wait for aging and age order)."""
    return float(task.get("ready_since") or task.get("create_time") or 0.0)


class Usage:
    """Tasks held (assigned or running) per submitter and per task group: what fair share evens out.

    Built from the state at the start of a pass and updated as the pass places tasks."""

    def __init__(self) -> None:
        self.submitters: Counter[str] = Counter()
        self.groups: Counter[str] = Counter()

    @classmethod
    def of(cls, tasks: Mapping[str, Mapping[str, Any]], workers: Mapping[str, Mapping[str, Any]]) -> Usage:
        usage = cls()
        for worker in workers.values():
            for task_id in worker.get("assigned") or ():
                task = tasks.get(task_id)
                if task is not None:
                    usage.add(task)
        return usage

    def add(self, task: Mapping[str, Any]) -> None:
        self.submitters[submitter_of(task)] += 1
        self.groups[group_of(task)] += 1


_QueueKey = tuple[int, str, str]  # (priority, submitter, group)
_Entry = tuple[float, int, int, str]  # (ready_since, seq, token, task_id)


class ReadyQueue:
    """Pending task ids, in one FIFO per (priority, submitter, group) plus a heap of backed-off tasks.

    :meth:`ordered` merges the FIFOs' heads by effective priority (aging), fair share and age, lazily,
    so a pass that places k tasks costs O(queues + k log queues), not O(pending). Deletion is lazy
    (``discard``); a re-pushed task gets a new token, so a stale entry is never yielded twice.
    """

    def __init__(self) -> None:
        self._live: dict[str, int] = {}  # task_id -> token of its live entry
        self._queues: dict[_QueueKey, list[_Entry]] = {}
        self._delayed: list[tuple[float, int, str]] = []  # (not_before, token, task_id)
        self._delayed_tasks: dict[str, Mapping[str, Any]] = {}
        self._entries = 0
        self._token = 0
        # Leader memory: when each queue was last served (aging restarts from then, see the module doc).
        self.last_served: dict[_QueueKey, float] = {}

    def push(self, task: Mapping[str, Any]) -> None:
        task_id = task["task_id"]
        if task_id in self._live:
            return
        self._token += 1
        self._live[task_id] = self._token
        if task.get("not_before"):
            heapq.heappush(self._delayed, (float(task["not_before"]), self._token, task_id))
            self._delayed_tasks[task_id] = task
        else:
            self._enqueue(task, self._token)

    def _enqueue(self, task: Mapping[str, Any], token: int) -> None:
        key = (int(task["priority"]), submitter_of(task), group_of(task))
        heapq.heappush(self._queues.setdefault(key, []), (ready_since(task), int(task.get("seq") or 0), token,
                                                          task["task_id"]))
        self._entries += 1

    def discard(self, task_id: str) -> None:
        self._live.pop(task_id, None)
        self._delayed_tasks.pop(task_id, None)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._live

    def waiting_backoff(self, task_id: str) -> bool:
        """Is this task held back until its not_before (not yet offered to workers)?"""
        return task_id in self._delayed_tasks

    def promote(self, now: float) -> None:
        """Backed-off tasks whose ``not_before`` has come join their queues."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, token, task_id = heapq.heappop(delayed)
            task = self._delayed_tasks.get(task_id)
            if task is not None and self._live.get(task_id) == token:
                del self._delayed_tasks[task_id]
                self._enqueue(task, token)

    def next_due(self) -> float | None:
        """When the earliest backed-off task becomes ready (None: none waits)."""
        delayed = self._delayed
        while delayed and self._live.get(delayed[0][2]) != delayed[0][1]:
            heapq.heappop(delayed)
        return delayed[0][0] if delayed else None

    def served(self, task: Mapping[str, Any], now: float | None) -> None:
        """A task of this queue was placed at ``now``."""
        if now is not None:
            self.last_served[(int(task["priority"]), submitter_of(task), group_of(task))] = now

    def max_priority(self) -> int:
        """The highest base priority among the queues (-1 when empty)."""
        return max((key[0] for key, heap in self._queues.items() if heap), default=-1)

    def _compact(self) -> None:
        live = self._live
        for key in list(self._queues):
            heap = [e for e in self._queues[key] if live.get(e[3]) == e[2]]
            if heap:
                heapq.heapify(heap)
                self._queues[key] = heap
            else:
                del self._queues[key]
                self.last_served.pop(key, None)
        self._entries = sum(len(h) for h in self._queues.values())

    def _live_entries(self, heap: list[_Entry]) -> Iterator[_Entry]:
        live = self._live
        # Drop stale heads first so the common case (in-order consumption) stays O(log n).
        while heap and live.get(heap[0][3]) != heap[0][2]:
            heapq.heappop(heap)
            self._entries -= 1
        for entry in sorted(heap) if len(heap) <= 64 else _heap_iter(heap):
            if live.get(entry[3]) == entry[2]:
                yield entry

    def ordered(self, now: float | None = None, policy: QueuePolicy | None = None,
                usage: Usage | None = None) -> Iterator[str]:
        """Yield ready ids in dispatch order without removing them.

        Without ``now`` there is no aging and backed-off tasks count as due (a plain priority-then-age
        order). ``usage`` may be updated by the caller between items (tasks it placed): later items see it.
        """
        if now is not None:
            self.promote(now)
        if self._entries > 4 * max(64, len(self._live)):
            self._compact()
        rate_policy = policy if policy is not None and now is not None else NO_AGING
        usage = usage if usage is not None else Usage()
        last_served = self.last_served
        if now is None:
            for _, token, task_id in self._delayed:
                task = self._delayed_tasks.get(task_id)
                if task is not None and self._live.get(task_id) == token:
                    del self._delayed_tasks[task_id]
                    self._enqueue(task, token)
            self._delayed = []

        if len(self._queues) == 1:
            # One queue (one priority, submitter and group: the common bulk case): its own order is the order.
            (heap,) = self._queues.values()
            for entry in self._live_entries(heap):
                yield entry[3]
            return
        groups, submitters = usage.groups, usage.submitters

        def group_key(key: _QueueKey, entry: _Entry) -> tuple[Any, ...]:
            # Order within one submitter: effective priority, then its group's share, then age.
            since = max(entry[0], last_served.get(key, -math.inf))
            level = rate_policy.level(key[0], now - since) if now is not None else key[0]
            return (-level, groups[key[2]], entry[0], entry[1])

        # Two levels of lazily re-evaluated heaps: the queues of each submitter, and the submitters by
        # their best head. Placing a task makes only its submitter's entry and its group's queues stale
        # (keys only get worse during a pass: usage grows, a served queue's wait restarts), so a stored
        # key is a lower bound and re-filing a stale head on sight keeps the order exact.
        by_submitter: dict[str, list[tuple[tuple[Any, ...], _QueueKey, _Entry]]] = {}
        cursors: dict[_QueueKey, Iterator[_Entry]] = {}
        for key, heap in list(self._queues.items()):
            cursor = self._live_entries(heap)
            first = next(cursor, None)
            if first is None:
                continue
            cursors[key] = cursor
            by_submitter.setdefault(key[1], []).append((group_key(key, first), key, first))
        top: list[tuple[tuple[Any, ...], str]] = []
        for submitter, heads in by_submitter.items():
            heapq.heapify(heads)
            best = heads[0][0]
            top.append(((best[0], submitters[submitter], *best[1:]), submitter))
        heapq.heapify(top)
        while top:
            stored_top, submitter = top[0]
            heads = by_submitter[submitter]
            while heads:
                stored, key, entry = heads[0]
                fresh = group_key(key, entry)
                if fresh <= stored:
                    break
                heapq.heapreplace(heads, (fresh, key, entry))
            if not heads:
                heapq.heappop(top)
                continue
            best = heads[0][0]
            fresh_top = (best[0], submitters[submitter], *best[1:])
            if fresh_top > stored_top:
                heapq.heapreplace(top, (fresh_top, submitter))
                continue
            _, key, entry = heapq.heappop(heads)
            if self._live.get(entry[3]) == entry[2]:
                yield entry[3]
            following = next(cursors[key], None)
            if following is not None:
                heapq.heappush(heads, (group_key(key, following), key, following))
            # The submitter's top entry is now a lower bound of its next head: refreshed on sight.

    def members(self) -> Iterable[str]:
        return self._live.keys()


def _heap_iter(heap: list[Any]) -> Iterator[Any]:
    """Iterate a heap in order without mutating it (a side heap of candidate indices)."""
    if not heap:
        return
    frontier = [(heap[0], 0)]
    while frontier:
        entry, i = heapq.heappop(frontier)
        yield entry
        for child in (2 * i + 1, 2 * i + 2):
            if child < len(heap):
                heapq.heappush(frontier, (heap[child], child))


def not_prefetched(task: Mapping[str, Any]) -> bool:
    """Tasks that wait in the cluster's queue rather than behind another task on a busy worker.

    A ``dtf pytest`` chunk runs for seconds, so the round trip prefetching saves is nothing, while a
    chunk queued on one worker cannot be taken by the worker that frees up first: the run would end
    unbalanced.
    """
    config = task.get("config")
    return isinstance(config, dict) and "pytest_dist" in config


def plan_assignments(queue: ReadyQueue, tasks: Mapping[str, Mapping[str, Any]],
                     workers: Mapping[str, Mapping[str, Any]], free_slots: dict[str, int],
                     *, scan_limit: int = 10_000, skip: set[str] | frozenset[str] = frozenset(),
                     prefetch: bool = False, now: float | None = None, policy: QueuePolicy | None = None,
                     usage: Usage | None = None, strategy: str = "least_loaded", worker_cap: int | None = None,
                     history: balancer.PerfHistory | None = None) -> list[tuple[str, str]]:
    """Match ready tasks to free slots: queue order (:meth:`ReadyQueue.ordered`), each to the capable
    worker the balancer ``strategy`` picks (balancer.py).

    ``free_slots`` is consumed; ids in ``skip`` (already placed this round) are passed over, and with
    ``prefetch`` (filling queues behind busy slots) so are the tasks of :func:`not_prefetched`. Scanning
    stops when no slot is left or after ``scan_limit`` tasks (a long tail of tasks that only a busy GPU
    worker can run must not make every round O(queue)). ``usage`` (fair share) is updated with the plan,
    so a second pass of the same round continues where the first left off.
    """
    plan: list[tuple[str, str]] = []
    # Reservations planned this round on top of the committed ones (resources.py): the balancer chooses
    # only among workers whose free reservable capacity fits the task, so a task whose resources fit on
    # no open worker now waits, like one without a free slot.
    ledger = resmod.Ledger()
    placement = balancer.Placement(strategy, workers, free_slots, satisfies=worker_satisfies, tasks=tasks,
                                   worker_cap=worker_cap, history=history,
                                   fits=lambda worker_id, task: ledger.fits(worker_id, workers[worker_id], task))
    if placement.exhausted:
        return plan
    usage = usage if usage is not None else Usage()
    scanned = 0
    for task_id in queue.ordered(now, policy, usage):
        if placement.exhausted or scanned >= scan_limit:
            break
        if task_id in skip:
            continue
        scanned += 1
        task = tasks[task_id]
        if prefetch and not_prefetched(task):
            continue
        worker_id = placement.choose(task)
        if worker_id is None:
            continue
        if task.get("resources"):
            ledger.try_reserve(worker_id, workers[worker_id], task)
        placement.take(task, worker_id)
        usage.add(task)
        queue.served(task, now)
        plan.append((task_id, worker_id))
        if placement.exhausted:
            break  # before asking the queue for one more
    return plan


def _fits_after(worker: Mapping[str, Any], task: Mapping[str, Any], victim_id: str) -> bool:
    """Would the task's reservation fit on the worker once the victim's is released? (Preempting a task
    that frees a slot but not the memory or the GPU the preemptor needs would only cost the victim.)"""
    resources = task.get("resources")
    if not resources:
        return True
    reserved = {k: v for k, v in (worker.get("reserved") or {}).items() if k != victim_id}
    return resmod.allocate(worker, resources, task.get("requirements"), reserved) is not None


def plan_preemptions(queue: ReadyQueue, tasks: Mapping[str, Mapping[str, Any]],
                     workers: Mapping[str, Mapping[str, Any]], eligible_workers: Iterable[str], *,
                     now: float, policy: QueuePolicy, skip: set[str] | frozenset[str] = frozenset(),
                     limit: int = 16) -> list[dict[str, Any]]:
    """Running tasks to give back so that ready tasks of much higher priority can run.

    Call after the idle-slot pass: a ready task still in the queue (not in ``skip``) found no free slot.
    For each of the first ``limit`` such tasks of priority >= threshold, in queue order, the victim is
    the lowest-priority task (then the most recently started: least work lost) held on a worker of
    ``eligible_workers`` that meets its requirements, whose priority is at least ``preemption_threshold``
    lower and that was preempted fewer than ``max_preemptions`` times. Workers holding queued extras
    (more tasks than slots) are passed over: the slot a victim frees would go to their queue.
    Returns ``PreemptTasks`` items: ``{task_id, attempt, worker_id, by, by_priority}``.
    """
    threshold = policy.preemption_threshold
    if threshold <= 0 or not len(queue) or queue.max_priority() < threshold:
        return []
    victims: list[tuple[int, float, str, str]] = []
    for worker_id in eligible_workers:
        worker = workers.get(worker_id)
        if worker is None or worker.get("drained"):
            continue
        assigned = worker.get("assigned") or {}
        if len(assigned) > int(worker.get("max_concurrent_tasks") or 1):
            continue
        for task_id in assigned:
            task = tasks.get(task_id)
            if (task is not None and task["status"] in ("assigned", "running")
                    and task["priority"] <= PRIORITY_RANGE[1] - threshold
                    and int(task.get("preemptions") or 0) < policy.max_preemptions):
                victims.append((task["priority"], -float(task.get("start_time") or now), task_id, worker_id))
    if not victims:
        return []
    victims.sort()
    out: list[dict[str, Any]] = []
    considered = 0
    for task_id in queue.ordered(now, policy):
        if task_id in skip:
            continue
        considered += 1
        if considered > 4 * limit or len(out) >= limit or not victims:
            break
        task = tasks[task_id]
        if task["priority"] < threshold:
            continue
        req = task.get("requirements") or {}
        for i, (priority, _, victim_id, worker_id) in enumerate(victims):
            if priority > task["priority"] - threshold:
                break  # sorted: every later victim is of higher priority too
            if worker_satisfies(workers[worker_id], req) and _fits_after(workers[worker_id], task, victim_id):
                out.append({"task_id": victim_id, "attempt": tasks[victim_id]["attempts"], "worker_id": worker_id,
                            "by": task_id, "by_priority": task["priority"]})
                del victims[i]
                break
    return out


def _describe(resources: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in resources.items() if isinstance(value, int | float))


def wait_reason(task: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]],
                workers: Mapping[str, Mapping[str, Any]], queue: ReadyQueue, *, now: float,
                policy: QueuePolicy, connected: Iterable[str] | None = None) -> dict[str, Any] | None:
    """Why a task that has not started waits, as ``{"code", "message", ...}``; None once it runs or ended.

    Codes: ``blocked`` (``blocked_by``: unfinished dependencies), ``unschedulable`` (no known worker can
    run it), ``backoff`` (``until``: unix seconds), ``no_capable_worker`` (none online),
    ``no_capable_worker_free`` (capable ones exist, every slot is taken; ``ahead``), ``resources_reserved``
    (a capable worker has a free slot, but what the task reserves is held by others there), ``behind``
    (``ahead``: ready tasks of higher effective priority, or equal and older, that go first), ``next``.
    """
    status = task.get("status")
    if status == "blocked":
        pending = [d for d in task.get("dependencies") or [] if (tasks.get(d) or {}).get("status") != "completed"]
        more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
        return {"code": "blocked", "blocked_by": pending,
                "message": f"blocked by {', '.join(pending[:5])}{more} (dependencies not completed yet)"}
    if status == "unschedulable":
        return {"code": "unschedulable", "message": f"no known worker can run it: {task.get('error')}"}
    if status != "pending":
        return None
    not_before = task.get("not_before")
    if not_before and float(not_before) > now:
        return {"code": "backoff", "until": float(not_before),
                "message": f"retry backoff for {float(not_before) - now:.1f} s more (after: {task.get('error')})"}
    req = task.get("requirements") or {}
    online = set(connected) if connected is not None else {
        w for w, doc in workers.items() if doc.get("status") == "online"}
    capable = [w for w in online if w in workers and not workers[w].get("drained")
               and worker_satisfies(workers[w], req)]
    mine = policy.level(int(task["priority"]), now - ready_since(task))
    key = (-mine, ready_since(task), int(task.get("seq") or 0))
    ahead = 0
    for other_id in queue.members():
        other = tasks.get(other_id)
        if other is None or other_id == task.get("task_id") or (other.get("not_before") or 0) > now:
            continue
        since = ready_since(other)
        if (-policy.level(int(other["priority"]), now - since), since, int(other.get("seq") or 0)) < key:
            ahead += 1
    if not capable:
        return {"code": "no_capable_worker", "ahead": ahead,
                "message": "no capable worker is online" + (f" ({len(workers)} known)" if workers else "")}
    free = [w for w in capable
            if int(workers[w].get("max_concurrent_tasks") or 1) > len(workers[w].get("assigned") or ())]
    if not free:
        return {"code": "no_capable_worker_free", "ahead": ahead, "capable_workers": len(capable),
                "message": f"no capable worker free ({len(capable)} capable, every slot taken); "
                           f"behind {ahead} task(s) of higher priority"}
    resources = task.get("resources")
    if resources and not any(resmod.allocate(workers[w], resources, req) is not None for w in free):
        return {"code": "resources_reserved", "ahead": ahead, "capable_workers": len(capable),
                "message": f"no capable worker with a free slot has its resources ({_describe(resources)}) "
                           f"unreserved; behind {ahead} task(s) of higher priority"}
    if ahead:
        return {"code": "behind", "ahead": ahead, "message": f"behind {ahead} task(s) of higher priority"}
    return {"code": "next", "ahead": 0, "message": "next in line: waiting for the next scheduling round"}
