"""The multi-device orchestrator: split one task into subtasks by a strategy, track them, merge results.

An orchestrated task is a *parent record* in the replicated state (``State.orchestrations``) plus
ordinary tasks of the cluster (its subtasks) that carry its id in ``parent_id``. The subtasks are
scheduled, retried and failed over like any task; the parent's status, ``completion_percentage`` and
merged result are derived inside ``State.apply`` from its subtasks (:func:`refresh`), so every
coordinator holds the same parent and a new leader after a failover simply carries on.

Strategies (the source design's):

- ``data_parallel``: the data is split: a benchmark's ``batch_sizes`` (or a test's list of
  ``test_file``) are dealt into one subtask per capable connected worker (or ``subtask_count``);
- ``function_parallel``: a benchmark's ``functions`` (latency, throughput, memory), one subtask each;
- ``hardware_parallel``: one subtask per hardware kind present among the connected workers, each
  required to run on that kind (``requirements.hardware``).

This module is plain synchronous code: the planning and merging functions take documents and return
documents (unit tested without sockets); :func:`after_apply` is the leader-side part (cancel frames for a
cascaded cancel, ``orchestrated_task_update`` pushes), called from the coordinator's apply callback.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dtf_app.coordinator import scheduler
from dtf_app.protocol import BENCH_FUNCTIONS, HARDWARE_KINDS, TERMINAL_STATES

STRATEGIES = ("data_parallel", "function_parallel", "hardware_parallel")
STATUSES = ("in_progress", "completed", "failed", "cancelled")
CHANNEL = "orchestrated_task_updates"
MAX_SUBTASKS = 64
"""At most this many subtasks per orchestrated task (each is a task of the cluster)."""

# Keys of the source design's flat ``task_data`` that belong to the task rather than to its config.
FLAT_TASK_KEYS = ("type", "priority", "requirements", "timeout_seconds", "max_retries", "name", "metadata")
FLAT_CONFIG_KEYS = ("model_name", "model", "batch_sizes", "precision", "iterations", "warmup", "sequence_length",
                    "layers", "backend", "functions", "working_dir", "env")
"""The flat form is a benchmark's: these config keys beside the task's own (``model_name`` = ``model``)."""
REQUEST_KEYS = ("task_data", "strategy", "subtask_count", "task_id", "name", "priority", "allow_unschedulable")
"""What an orchestrate request may hold (the websocket form adds ``type`` and ``request_id``)."""


class OrchestrationError(ValueError):
    """The request is wrong (HTTP 400): the message says where, what, and what is accepted."""


class OrchestrationUnprocessable(OrchestrationError):
    """Well-formed, but it cannot be split or run as asked (HTTP 422), e.g. no worker for hardware_parallel."""


# ---------------------------------------------------------------------------------------------- request
def parse_request(body: Any, *, default_max_retries: int = 3,
                  default_timeout: float | None = None, default_priority: int | None = None) -> dict[str, Any]:
    """Check an orchestrate request; returns {strategy, task (normalised task doc), subtask_count, task_id, name}.

    ``task_data`` is the source design's flat form (``{"type": "benchmark", "model_name": "bert-base-uncased",
    "functions": [...]}``: config keys beside the task's own) or a task document with a ``config``.
    """
    if not isinstance(body, dict):
        raise OrchestrationError("the body must be an object with task_data and strategy")
    unknown = sorted(set(body) - set(REQUEST_KEYS))
    if unknown:
        raise OrchestrationError(f"unknown key(s) {', '.join(unknown)}; accepted: task_data, strategy, "
                                 "subtask_count, task_id, name, priority, allow_unschedulable")
    strategy = body.get("strategy", "data_parallel")
    if strategy not in STRATEGIES:
        raise OrchestrationError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    data = body.get("task_data")
    if not isinstance(data, dict):
        raise OrchestrationError("task_data must be an object: the task to split, e.g. {\"type\": \"benchmark\", "
                                 "\"model_name\": \"bert-base-uncased\", \"functions\": [\"latency\"]}")
    doc = flat_to_task(data)
    if "priority" in body:
        doc["priority"] = body["priority"]
    doc.setdefault("max_retries", default_max_retries)
    if default_timeout is not None:
        doc.setdefault("timeout_seconds", default_timeout)
    if default_priority is not None:
        doc.setdefault("priority", default_priority)
    if doc.get("dependencies"):
        raise OrchestrationUnprocessable("task_data.dependencies is not supported for an orchestrated task; submit "
                                 "the orchestration once its dependencies have completed")
    try:
        task = scheduler.validate_task(doc, "task_data", default_max_retries=default_max_retries)
    except scheduler.TaskValidationError as exc:
        raise OrchestrationError(str(exc)) from None
    count = scheduler.as_int(body.get("subtask_count"))
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SUBTASKS):
        raise OrchestrationError(f"subtask_count must be an integer from 1 to {MAX_SUBTASKS}, got {count!r}")
    task_id = body.get("task_id")
    if task_id is not None:
        problem = scheduler.id_problem(task_id, "task_id")
        if problem:
            raise OrchestrationError(problem)
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 400):
        raise OrchestrationError("name must be a string of at most 400 characters")
    name = name or task.get("name")
    if not isinstance(body.get("allow_unschedulable", False), bool):
        raise OrchestrationError("allow_unschedulable must be true or false")
    return {"strategy": strategy, "task": task, "subtask_count": count, "task_id": task_id,
            "name": name or default_name(task)}


def flat_to_task(data: Mapping[str, Any]) -> dict[str, Any]:
    """The source design's flat ``task_data`` as a task document (``model_name`` is the config's ``model``).

    With a ``config`` (or ``parameters``) it is a task document as ``POST /api/tasks`` takes it, of any type.
    """
    if "config" in data or "parameters" in data:
        return dict(data)
    if data.get("type") != "benchmark":
        raise OrchestrationError(
            "task_data without a config is the source design's flat form, which is a benchmark's: "
            "{\"type\": \"benchmark\", \"model_name\": ..., \"functions\": [...], ...}; give other types as a "
            f"task document with a config (type was {data.get('type')!r})")
    unknown = sorted(set(data) - set(FLAT_TASK_KEYS) - set(FLAT_CONFIG_KEYS))
    if unknown:
        raise OrchestrationError(f"task_data has unknown key(s) {', '.join(unknown)}; accepted in the flat form: "
                                 f"{', '.join((*FLAT_TASK_KEYS, *FLAT_CONFIG_KEYS))}")
    if ("model_name" in data) == ("model" in data):
        raise OrchestrationError("task_data needs exactly one of model_name or model (e.g. \"bert-base-uncased\")")
    doc: dict[str, Any] = {k: data[k] for k in FLAT_TASK_KEYS if k in data}
    config = {k: v for k, v in data.items() if k in FLAT_CONFIG_KEYS}
    if "model_name" in config:
        config["model"] = config.pop("model_name")
    doc["config"] = config
    return doc


def default_name(task: Mapping[str, Any]) -> str:
    config = task.get("config") or {}
    what = config.get("model") or config.get("test_file") or config.get("command") or config.get("name") or ""
    if isinstance(what, list):
        what = what[0] if len(what) == 1 else f"{what[0]} +{len(what) - 1}"
    return f"{task['type']} {what}".strip()[:200]


# ---------------------------------------------------------------------------------------------- planning
def available_workers(workers: Mapping[str, Mapping[str, Any]], connected: Iterable[str]) -> list[Mapping[str, Any]]:
    """The workers a plan may count on: connected now and not drained."""
    live = set(connected)
    return [w for wid, w in sorted(workers.items()) if wid in live and not w.get("drained")]


def _deal(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Split into ``parts`` contiguous, nearly equal shards (order kept; none empty)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def plan(task: Mapping[str, Any], strategy: str, workers: Sequence[Mapping[str, Any]], *,
         subtask_count: int | None = None) -> list[dict[str, Any]]:
    """The subtasks of ``task`` under ``strategy``: [{label, shard, config, requirements}], one per subtask.

    ``workers`` are those that may run them now (see :func:`available_workers`); they decide how many
    shards ``data_parallel`` makes and which kinds ``hardware_parallel`` covers.
    """
    config = dict(task.get("config") or {})
    req = dict(task.get("requirements") or {})
    kind = task["type"]
    capable = [w for w in workers if scheduler.worker_satisfies(w, req)]
    if strategy == "data_parallel":
        if kind == "benchmark":
            key, items = "batch_sizes", list(config.get("batch_sizes") or [1])
        elif kind == "test":
            files = config.get("test_file")
            key, items = "test_file", list(files) if isinstance(files, list) else [files]
        else:
            raise OrchestrationUnprocessable(
                "data_parallel splits a benchmark's batch_sizes or a test's list of test_file; a custom task has "
                "no data to split (use hardware_parallel to run it once per hardware kind)")
        parts = subtask_count or max(1, len(capable))
        if len(items) < 2 and subtask_count is not None and subtask_count > 1:
            raise OrchestrationUnprocessable(
                f"data_parallel needs at least 2 {key} to split, got {items!r}; give several (e.g. "
                f"batch_sizes [1, 2, 4]) or use another strategy")
        shards = _deal(items, min(parts, MAX_SUBTASKS))
        return [{"label": f"{key}={shard if len(shard) > 1 else shard[0]}", "shard": {key: shard},
                 "config": {**config, key: shard if (key == "batch_sizes" or len(shard) > 1) else shard[0]},
                 "requirements": req} for shard in shards]
    if strategy == "function_parallel":
        if kind != "benchmark":
            raise OrchestrationUnprocessable(
                f"function_parallel runs a benchmark's functions ({', '.join(BENCH_FUNCTIONS)}) as separate "
                f"subtasks; this task is of type {kind}")
        functions = list(dict.fromkeys(config.get("functions") or BENCH_FUNCTIONS))
        return [{"label": f"function={fn}", "shard": {"functions": [fn]}, "config": {**config, "functions": [fn]},
                 "requirements": req} for fn in functions]
    if strategy == "hardware_parallel":
        present: set[str] = set()
        for worker in workers:
            present.update(worker.get("hardware") or ["cpu"])
        wanted = set(req.get("hardware") or ())
        kinds = [k for k in HARDWARE_KINDS if k in present and (not wanted or k in wanted)]
        if not kinds:
            raise OrchestrationUnprocessable(
                "hardware_parallel makes one subtask per hardware kind present among the connected workers, "
                f"and none is connected{' with ' + ', '.join(sorted(wanted)) if wanted else ''}; start workers "
                "first")
        return [{"label": f"hardware={k}", "shard": {"hardware": k}, "config": config,
                 "requirements": {**req, "hardware": [k]}} for k in kinds]
    raise OrchestrationError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def build(parsed: Mapping[str, Any], parent_id: str, pieces: Sequence[Mapping[str, Any]],
          now: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``Orchestrate`` command's parent record and subtask documents (ids ``<parent>-<n>``)."""
    task = parsed["task"]
    name = parsed["name"]
    subtasks: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces, 1):
        doc = {**task, "config": dict(piece["config"]), "requirements": dict(piece["requirements"]),
               "task_id": f"{parent_id}-{i}", "batch_id": parent_id, "parent_id": parent_id,
               "name": f"{name} [{piece['label']}]"[:500], "dependencies": [],
               "metadata": {**(task.get("metadata") or {}), "orchestrated_task_id": parent_id,
                            "strategy": parsed["strategy"], "subtask_index": i, "shard": piece["shard"]}}
        subtasks.append(doc)
    parent = {"task_id": parent_id, "name": name, "strategy": parsed["strategy"], "type": task["type"],
              "task_data": {"type": task["type"], "config": task["config"], "requirements": task["requirements"],
                            "priority": task["priority"]},
              "subtask_ids": [s["task_id"] for s in subtasks],
              "shards": {s["task_id"]: p["shard"] for s, p in zip(subtasks, pieces, strict=True)}}
    if now is not None:
        parent["submitted"] = now
    return parent, subtasks


# ---------------------------------------------------------------------------------------------- tracking
def completion(subtasks: Sequence[Mapping[str, Any]]) -> int:
    """Percentage (0-100, integer) of subtasks in a terminal state."""
    if not subtasks:
        return 100
    return int(100 * sum(1 for t in subtasks if t["status"] in TERMINAL_STATES) / len(subtasks))


def derive_status(parent: Mapping[str, Any], subtasks: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """(status, error) of a parent from its subtasks; an explicit cancel stays cancelled."""
    if parent.get("status") == "cancelled":
        return "cancelled", parent.get("error")
    if any(t["status"] not in TERMINAL_STATES for t in subtasks):
        return "in_progress", None
    bad = [t for t in subtasks if t["status"] != "completed"]
    if not bad:
        return "completed", None
    detail = "; ".join(f"{t['task_id']} {t['status']}: {str(t.get('error') or '')[:200]}" for t in bad[:5])
    return "failed", f"{len(bad)} of {len(subtasks)} subtask(s) did not complete: {detail}"


def refresh(parent: dict[str, Any], tasks: Mapping[str, Mapping[str, Any]], now: float) -> bool:
    """Recompute a parent from its subtasks (in apply: deterministic); True when it changed."""
    subtasks = [tasks[i] for i in parent["subtask_ids"] if i in tasks]
    status, error = derive_status(parent, subtasks)
    percent = completion(subtasks)
    before = (parent.get("status"), parent.get("completion_percentage"), parent.get("error"))
    parent["status"], parent["completion_percentage"] = status, percent
    if error is not None or status != "cancelled":
        parent["error"] = error
    if status != "in_progress":
        if parent.get("end_time") is None:
            parent["end_time"] = now
        parent["result"] = merge(parent, subtasks)
    return before != (parent["status"], parent["completion_percentage"], parent.get("error"))


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def merge(parent: Mapping[str, Any], subtasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One result from the subtasks' results: combined metrics, and what each subtask contributed."""
    done = [t for t in subtasks if t["status"] == "completed" and isinstance(t.get("result"), dict)]
    parts = []
    for t in subtasks:
        result = t.get("result") if isinstance(t.get("result"), dict) else {}
        env = result.get("environment") or {}
        parts.append({"subtask_id": t["task_id"], "status": t["status"], "worker_id": t.get("worker_id"),
                      "shard": (parent.get("shards") or {}).get(t["task_id"]),
                      "result_status": result.get("status"), "metrics": result.get("metrics") or {},
                      "result_id": f"{t['task_id']}-{t['attempts']}" if result else None,
                      "device": env.get("device"), "backend": env.get("backend"),
                      "execution_time": result.get("execution_time"), "error": t.get("error")})
    statuses = [t["result"].get("status") for t in done]
    if len(done) < len(subtasks) or "partial" in statuses:
        status = "partial" if done else "failure"
    else:
        status = "failure" if "failure" in statuses else "success"
    merged: dict[str, Any] = {"status": status, "strategy": parent.get("strategy"), "subtasks": parts,
                              "subtasks_completed": len(done), "subtasks_total": len(subtasks),
                              "execution_time": sum(_num(t["result"].get("execution_time")) or 0.0 for t in done),
                              "workers": sorted({t["worker_id"] for t in done if t.get("worker_id")})}
    metrics = [t["result"].get("metrics") or {} for t in done]
    if parent.get("type") == "benchmark":
        merged["metrics"] = _merge_benchmark(metrics, done)
        if parent.get("strategy") == "function_parallel":
            merged["by_function"] = {p["shard"]["functions"][0]: p["metrics"] for p in parts
                                     if p["shard"] and p["status"] == "completed"}
    else:
        # Counts add up (tests passed/failed, ...); anything else is per subtask only.
        totals: dict[str, float] = {}
        for m in metrics:
            for key, value in m.items():
                if _num(value) is not None:
                    totals[key] = totals.get(key, 0) + value
        merged["metrics"] = totals
    if parent.get("strategy") == "hardware_parallel":
        merged["by_hardware"] = {p["shard"]["hardware"]: {"status": p["status"], "worker_id": p["worker_id"],
                                                          "device": p["device"], "metrics": p["metrics"]}
                                 for p in parts if p["shard"]}
    return merged


def _merge_benchmark(metrics: Sequence[Mapping[str, Any]], done: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"configurations": sum(int(m.get("configurations") or 0) for m in metrics),
                           "configurations_failed": sum(int(m.get("configurations_failed") or 0) for m in metrics)}
    best = max((m for m in metrics if _num(m.get("best_throughput")) is not None),
               key=lambda m: m["best_throughput"], default=None)
    out["best_throughput"] = best["best_throughput"] if best else None
    out["best_throughput_batch_size"] = best.get("best_throughput_batch_size") if best else None
    out["best_throughput_precision"] = best.get("best_throughput_precision") if best else None
    latencies = [m["min_latency_ms"] for m in metrics if _num(m.get("min_latency_ms")) is not None]
    memory = [m["max_memory_peak_mb"] for m in metrics if _num(m.get("max_memory_peak_mb")) is not None]
    out["min_latency_ms"] = min(latencies) if latencies else None
    out["max_memory_peak_mb"] = max(memory) if memory else None
    out["benchmarks_count"] = sum(int(t["result"].get("benchmarks_count") or 0) for t in done)
    return out


# ---------------------------------------------------------------------------------------------- views
def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def subtask_states(parent: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-subtask status as the source design's push lists it (plus worker, attempts, shard)."""
    out = []
    for task_id in parent["subtask_ids"]:
        t = tasks.get(task_id) or {}
        out.append({"subtask_id": task_id, "status": t.get("status"), "worker_id": t.get("worker_id"),
                    "attempts": t.get("attempts"), "name": t.get("name"),
                    "shard": (parent.get("shards") or {}).get(task_id)})
    return out


def view(parent: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """An orchestrated task as the API shows it."""
    return {"task_id": parent["task_id"], "name": parent.get("name"), "status": parent["status"],
            "strategy": parent["strategy"], "type": parent.get("type"),
            "completion_percentage": parent.get("completion_percentage", 0),
            "subtasks": subtask_states(parent, tasks), "task_data": parent.get("task_data"),
            "create_time": _iso(parent.get("create_time")), "end_time": _iso(parent.get("end_time")),
            "error": parent.get("error"), "result": parent.get("result")}


def update_push(parent: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]], index: int) -> dict[str, Any]:
    """The ``orchestrated_task_update`` push (source design shape, plus index and the full view)."""
    doc = view(parent, tasks)
    return {"type": "orchestrated_task_update", "task_id": doc["task_id"], "status": doc["status"],
            "completion_percentage": doc["completion_percentage"],
            "subtasks": [{"subtask_id": s["subtask_id"], "status": s["status"]} for s in doc["subtasks"]],
            "timestamp": _iso(time.time()), "index": index, "orchestrated_task": doc}


# ---------------------------------------------------------------------------------------------- leader side
def touched_parents(command: Mapping[str, Any], events: Iterable[Mapping[str, Any]],
                    tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Ids of orchestrated tasks a just-applied entry changed (in order, once each)."""
    ids: dict[str, None] = {}
    if command.get("op") in ("Orchestrate", "CancelOrchestration"):
        parent_id = command.get("orchestration", {}).get("task_id") if command["op"] == "Orchestrate" \
            else command.get("task_id")
        if isinstance(parent_id, str):
            ids[parent_id] = None
    for event in events:
        if event.get("kind") == "task":
            parent_id = event["task"].get("parent_id")
            if parent_id:
                ids[parent_id] = None
    return list(ids)


def after_apply(coord: Any, index: int, command: Mapping[str, Any], result: Any,
                events: Sequence[Mapping[str, Any]]) -> None:
    """Leader-local effects of an applied entry: cancel frames to the workers running subtasks of a
    cancelled orchestration, and ``orchestrated_task_update`` pushes for every parent it changed."""
    from dtf_app import protocol as proto

    if command.get("op") == "CancelOrchestration" and isinstance(result, dict):
        for item in result.get("stopped") or ():
            conn = coord.conns.get(item["worker_id"])
            if conn is not None:
                conn.push({"type": proto.CANCEL, "task_id": item["task_id"], "attempt": item["attempts"]})
    if not coord.hub:
        return
    state = coord.state
    for parent_id in touched_parents(command, events, state.tasks):
        parent = state.orchestrations.get(parent_id)
        if parent is not None:
            coord.hub.publish(CHANNEL, lambda p=parent: update_push(p, state.tasks, index),
                           {"task_id": parent_id, "status": parent["status"], "strategy": parent["strategy"]})
