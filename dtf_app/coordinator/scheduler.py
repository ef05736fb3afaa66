"""Task validation, requirement matching and the ready queue.

Pure functions and one derived index: nothing here is replicated. The leader builds a
:class:`ReadyQueue` from the state and asks :func:`plan_assignments` which pending tasks go to which
free worker slots; the answer becomes an ``AssignTasks`` command.

Priority: a higher number runs first (0-100, default 1); ties run oldest first (submission order).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from typing import Any

from dtf_app.coordinator import resources as resmod
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
             "name", "task_id", "metadata", "resources")
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
    try:
        reserve = resmod.validate(doc.get("resources"), f"{where}.resources")
    except resmod.ResourceError as exc:
        raise TaskValidationError(str(exc)) from None
    out = {
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


class ReadyQueue:
    """Pending task ids ordered by priority (high first) then submission order; lazy deletion."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._members: set[str] = set()

    def push(self, task: Mapping[str, Any]) -> None:
        if task["task_id"] not in self._members:
            self._members.add(task["task_id"])
            heapq.heappush(self._heap, (-task["priority"], task["seq"], task["task_id"]))

    def discard(self, task_id: str) -> None:
        self._members.discard(task_id)

    def __len__(self) -> int:
        return len(self._members)

    def ordered(self) -> Iterable[str]:
        """Yield member ids in order without removing them (popped entries are re-pushed by callers)."""
        heap = self._heap
        # Drop stale heads first so the common case (in-order consumption) stays O(log n).
        while heap and heap[0][2] not in self._members:
            heapq.heappop(heap)
        if len(heap) > 4 * max(16, len(self._members)):
            self._heap = heap = [entry for entry in heap if entry[2] in self._members]
            heapq.heapify(heap)
        for entry in sorted(heap) if len(heap) <= 64 else _heap_iter(heap):
            if entry[2] in self._members:
                yield entry[2]


def _heap_iter(heap: list[tuple[int, int, str]]) -> Iterable[tuple[int, int, str]]:
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
                     prefetch: bool = False) -> list[tuple[str, str]]:
    """Match ready tasks to free slots: highest priority first, each to the least-loaded capable worker.

    ``free_slots`` is consumed; ids in ``skip`` (already placed this round) are passed over, and with
    ``prefetch`` (filling queues behind busy slots) so are the tasks of :func:`not_prefetched`. Scanning stops when no slot is left or after ``scan_limit`` tasks (a
    long tail of tasks that only a busy GPU worker can run must not make every round O(queue)).
    """
    plan: list[tuple[str, str]] = []
    open_workers = {w: n for w, n in free_slots.items() if n > 0}
    # Reservations planned this round on top of the committed ones (resources.py): a task whose
    # resources fit on no open worker now waits, like one without a free slot.
    ledger = resmod.Ledger()
    scanned = 0
    for task_id in queue.ordered():
        if not open_workers or scanned >= scan_limit:
            break
        if task_id in skip:
            continue
        scanned += 1
        task = tasks[task_id]
        if prefetch and not_prefetched(task):
            continue
        req = task.get("requirements") or {}
        best: str | None = None
        best_free = -1
        for worker_id, free in open_workers.items():
            if free > best_free and worker_satisfies(workers[worker_id], req) and \
                    ledger.fits(worker_id, workers[worker_id], task):
                best, best_free = worker_id, free
        if best is None:
            continue
        ledger.try_reserve(best, workers[best], task)
        plan.append((task_id, best))
        open_workers[best] -= 1
        free_slots[best] -= 1
        if open_workers[best] == 0:
            del open_workers[best]
    return plan
