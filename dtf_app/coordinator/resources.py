"""Dynamic resource management: what a task reserves on its worker, and how full the cluster is.

A task may reserve quantities in its ``resources`` object (``cpu_cores``, ``memory_gb``, ``gpus``,
``gpu_memory_gb``); the ``min_*`` requirements stay feasibility checks (could this worker ever run it).
Capacities come from the worker's capabilities (its hardware profile): CPU cores, total memory, and its
GPU devices with their memory.

- ``gpus: N`` holds N whole devices exclusively (no other task is placed on them);
- ``gpu_memory_gb: X`` alone shares one device: X GB of it, on a device nobody holds exclusively;
  with ``gpus`` it is the memory each of the N devices must have;
- a device's type follows the task's ``requirements.hardware`` (a ``cuda`` task gets CUDA devices).

Everything here is pure and deterministic: the state machine (state.py) calls :func:`allocate` in
``AssignTasks`` with the worker's current reservations, so every replica picks the same devices and an
assignment that no longer fits (a stale plan) is refused rather than oversubscribing; the terminal
transitions release. The leader's planner uses the same function on a :class:`Ledger` (reservations
of its own round added), so what it plans is what apply accepts. Reservations live in the worker
document (``worker["reserved"]``: task_id -> reservation) and so survive failovers and snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from dtf_app.protocol import DEVICE_ENV_VARS, MAX_RESOURCE_GPUS, RESOURCE_KEYS

# Sums of float reservations are compared with this slack, so 0.1 + 0.2 GB fits in 0.3 GB.
EPSILON = 1e-6
GPU_KINDS = ("cuda", "rocm", "mps", "qualcomm", "openvino")
"""Hardware kinds whose devices are listed under capabilities.gpu.devices."""

Reservation = dict[str, Any]


class ResourceError(ValueError):
    """A ``resources`` object is wrong; the message says where, what, and what is accepted."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate(value: Any, where: str = "task.resources") -> dict[str, Any]:
    """The normalised ``resources`` object of a task document ({} when absent)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ResourceError(f"{where} must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(RESOURCE_KEYS))
    if unknown:
        raise ResourceError(f"{where} has unknown key(s) {', '.join(map(str, unknown))}; "
                            f"accepted: {', '.join(RESOURCE_KEYS)}")
    out: dict[str, Any] = {}
    for key in ("cpu_cores", "memory_gb", "gpu_memory_gb"):
        if key in value:
            amount = value[key]
            if not _is_number(amount) or amount <= 0 or amount > 1e6:
                raise ResourceError(f"{where}.{key} must be a number above 0 (and at most 1000000), got {amount!r}")
            out[key] = float(amount)
    if "gpus" in value:
        gpus = value["gpus"]
        if isinstance(gpus, float) and gpus.is_integer():
            gpus = int(gpus)
        if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= MAX_RESOURCE_GPUS:
            raise ResourceError(f"{where}.gpus must be an integer from 1 to {MAX_RESOURCE_GPUS} (whole devices, "
                                f"held exclusively), got {gpus!r}")
        out["gpus"] = gpus
    return out


# ---------------------------------------------------------------------------------------------- capacity
def _caps(worker: Mapping[str, Any]) -> Mapping[str, Any]:
    caps = worker.get("capabilities")
    return caps if isinstance(caps, Mapping) else {}


def cpu_capacity(worker: Mapping[str, Any]) -> float:
    cpu = _caps(worker).get("cpu") or {}
    return float(cpu.get("cores") or cpu.get("threads") or 0) if isinstance(cpu, Mapping) else 0.0


def memory_capacity(worker: Mapping[str, Any]) -> float:
    memory = _caps(worker).get("memory") or {}
    return float(memory.get("total_gb") or 0) if isinstance(memory, Mapping) else 0.0


def devices(worker: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The worker's GPU devices as ``{"index", "type", "memory_gb"}``, by index."""
    gpu = _caps(worker).get("gpu") or {}
    listed = gpu.get("devices") if isinstance(gpu, Mapping) else None
    out = []
    for position, device in enumerate(listed if isinstance(listed, list) else []):
        if not isinstance(device, Mapping):
            continue
        index = device.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else position
        memory = device.get("memory_gb")
        out.append({"index": index, "type": str(device.get("type") or "gpu"),
                    "memory_gb": float(memory) if _is_number(memory) else 0.0})
    return sorted(out, key=lambda d: d["index"])


def _wanted_types(requirements: Mapping[str, Any] | None) -> set[str]:
    kinds = set((requirements or {}).get("hardware") or ()) & set(GPU_KINDS)
    return kinds


def _candidates(worker: Mapping[str, Any], requirements: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    wanted = _wanted_types(requirements)
    return [d for d in devices(worker) if not wanted or d["type"] in wanted]


# ---------------------------------------------------------------------------------------------- usage
def usage(reserved: Mapping[str, Reservation] | None) -> dict[str, Any]:
    """Totals of a worker's reservations: cpu, memory, and per device (memory used, exclusively held)."""
    cpu = memory = 0.0
    device_memory: dict[int, float] = {}
    exclusive: set[int] = set()
    for item in (reserved or {}).values():
        cpu += float(item.get("cpu_cores") or 0)
        memory += float(item.get("memory_gb") or 0)
        for index in item.get("gpus") or ():
            device_memory[index] = device_memory.get(index, 0.0) + float(item.get("gpu_memory_gb") or 0)
            if item.get("exclusive"):
                exclusive.add(index)
    return {"cpu_cores": cpu, "memory_gb": memory, "device_memory": device_memory, "exclusive": exclusive}


def allocate(worker: Mapping[str, Any], resources: Mapping[str, Any], requirements: Mapping[str, Any] | None,
             reserved: Mapping[str, Reservation] | None = None) -> Reservation | None:
    """The reservation ``resources`` gets on this worker now (devices chosen), or None if it does not fit.

    Deterministic: the lowest free device indices, so every replica chooses the same.
    """
    used = usage(worker.get("reserved") if reserved is None else reserved)
    return _allocate(cpu_capacity(worker), memory_capacity(worker), devices(worker), used, resources, requirements)


def _allocate(cpu_cap: float, memory_cap: float, devs: list[dict[str, Any]], used: Mapping[str, Any],
              resources: Mapping[str, Any], requirements: Mapping[str, Any] | None) -> Reservation | None:
    """:func:`allocate` on capacities and usage already computed (the one rule for apply and the planner)."""
    out: Reservation = {}
    cpu = resources.get("cpu_cores")
    if cpu:
        if used["cpu_cores"] + cpu > cpu_cap + EPSILON:
            return None
        out["cpu_cores"] = cpu
    memory = resources.get("memory_gb")
    if memory:
        if used["memory_gb"] + memory > memory_cap + EPSILON:
            return None
        out["memory_gb"] = memory
    count = resources.get("gpus")
    per_device = float(resources.get("gpu_memory_gb") or 0)
    if count or per_device:
        held = used["device_memory"]
        exclusive = used["exclusive"]
        wanted = _wanted_types(requirements)
        chosen: list[dict[str, Any]] = []
        for device in devs:
            if wanted and device["type"] not in wanted:
                continue
            if device["index"] in exclusive:
                continue
            if count:
                # Whole devices: nobody else may have anything on it, and it must be big enough.
                if device["index"] in held or device["memory_gb"] + EPSILON < per_device:
                    continue
            elif held.get(device["index"], 0.0) + per_device > device["memory_gb"] + EPSILON:
                continue
            chosen.append(device)
            if len(chosen) == (count or 1):
                break
        if len(chosen) < (count or 1):
            return None
        out["gpus"] = [d["index"] for d in chosen]
        out["gpu_type"] = chosen[0]["type"]
        out["exclusive"] = bool(count)
        # An exclusive device counts as full for utilisation, whatever the task said it needs of it.
        out["gpu_memory_gb"] = per_device if per_device else (chosen[0]["memory_gb"] if count else 0.0)
    return out


def unmet_capacity(worker: Mapping[str, Any], resources: Mapping[str, Any],
                   requirements: Mapping[str, Any] | None = None) -> list[str]:
    """Why ``resources`` could never fit on this worker even when it runs nothing else (empty: it could)."""
    if not resources:
        return []
    missing = []
    if resources.get("cpu_cores") and cpu_capacity(worker) + EPSILON < resources["cpu_cores"]:
        missing.append(f"{resources['cpu_cores']:g} CPU cores to reserve (has {cpu_capacity(worker):g})")
    if resources.get("memory_gb") and memory_capacity(worker) + EPSILON < resources["memory_gb"]:
        missing.append(f"{resources['memory_gb']:g} GB of memory to reserve (has {memory_capacity(worker):g})")
    if (resources.get("gpus") or resources.get("gpu_memory_gb")) and allocate(
            worker, {k: v for k, v in resources.items() if k in ("gpus", "gpu_memory_gb")}, requirements, {}) is None:
        kinds = "/".join(sorted(_wanted_types(requirements))) or "GPU"
        need = f"{resources.get('gpus') or 1} {kinds} device(s)"
        if resources.get("gpu_memory_gb"):
            need += f" with {resources['gpu_memory_gb']:g} GB each"
        missing.append(f"{need} to reserve (has {len(_candidates(worker, requirements))})")
    return missing


def device_env(reservation: Mapping[str, Any] | None) -> dict[str, str]:
    """The environment that restricts a task's processes to exactly its reserved devices."""
    if not reservation or not reservation.get("gpus"):
        return {}
    value = ",".join(str(i) for i in reservation["gpus"])
    return dict.fromkeys(DEVICE_ENV_VARS.get(str(reservation.get("gpu_type")), ()), value)


def assignment_fields(task: Mapping[str, Any], reservation: Mapping[str, Any] | None) -> dict[str, Any]:
    """What an assignment tells the worker of its reservation (the websocket ``assign`` frame and the HTTP
    poll alike): the task's ``resources`` and the ``devices`` apply chose, which the agent pins the task to."""
    if not reservation:
        return {}
    return {"resources": task.get("resources"),
            "devices": [{"index": i, "type": reservation.get("gpu_type")} for i in reservation.get("gpus") or ()]}


class _Room:
    """One worker's capacities and reserved totals during a planning round (computed once per round)."""

    __slots__ = ("cpu", "devices", "memory", "used")

    def __init__(self, worker: Mapping[str, Any]) -> None:
        self.cpu = cpu_capacity(worker)
        self.memory = memory_capacity(worker)
        self.devices = devices(worker)
        self.used = usage(worker.get("reserved"))

    def add(self, got: Reservation) -> None:
        used = self.used
        used["cpu_cores"] += float(got.get("cpu_cores") or 0)
        used["memory_gb"] += float(got.get("memory_gb") or 0)
        for index in got.get("gpus") or ():
            used["device_memory"][index] = used["device_memory"].get(index, 0.0) + float(got.get("gpu_memory_gb") or 0)
            if got.get("exclusive"):
                used["exclusive"].add(index)


class Ledger:
    """Reservations of one planning round on top of the committed ones (the leader's scratch copy).

    Each worker's capacities and reserved totals are computed once per round and updated as the round
    reserves, so checking a task costs a few comparisons, not a walk over the worker's reservations.
    The rule is :func:`_allocate`, the one apply uses, so what the round plans is what apply accepts.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}

    def _room(self, worker_id: str, worker: Mapping[str, Any]) -> _Room:
        room = self._rooms.get(worker_id)
        if room is None:
            room = self._rooms[worker_id] = _Room(worker)
        return room

    def _allocate(self, worker_id: str, worker: Mapping[str, Any], task: Mapping[str, Any]) -> Reservation | None:
        room = self._room(worker_id, worker)
        return _allocate(room.cpu, room.memory, room.devices, room.used, task["resources"], task.get("requirements"))

    def try_reserve(self, worker_id: str, worker: Mapping[str, Any], task: Mapping[str, Any]) -> bool:
        """Reserve the task's resources on the worker for this round; False (nothing held) if they do not fit."""
        if not task.get("resources"):
            return True
        got = self._allocate(worker_id, worker, task)
        if got is None:
            return False
        self._rooms[worker_id].add(got)
        return True

    def fits(self, worker_id: str, worker: Mapping[str, Any], task: Mapping[str, Any]) -> bool:
        """Would the task's resources fit on the worker now (this round's reservations included)?"""
        return not task.get("resources") or self._allocate(worker_id, worker, task) is not None


# ---------------------------------------------------------------------------------------------- utilisation
def worker_usage(worker: Mapping[str, Any]) -> dict[str, Any]:
    """Reserved vs capacity per resource of one worker (for views and /metrics)."""
    used = usage(worker.get("reserved"))
    gpus = devices(worker)
    held = set(used["device_memory"]) | used["exclusive"]
    return {
        "cpu_cores": {"reserved": round(used["cpu_cores"], 6), "capacity": cpu_capacity(worker)},
        "memory_gb": {"reserved": round(used["memory_gb"], 6), "capacity": memory_capacity(worker)},
        "gpus": {"reserved": len(held & {d["index"] for d in gpus}), "capacity": len(gpus)},
        "gpu_memory_gb": {"reserved": round(sum(used["device_memory"].values()), 6),
                          "capacity": sum(d["memory_gb"] for d in gpus)},
        "devices": [{"index": d["index"], "type": d["type"], "memory_gb": d["memory_gb"],
                     "reserved_gb": round(used["device_memory"].get(d["index"], 0.0), 6),
                     "exclusive": d["index"] in used["exclusive"]} for d in gpus],
    }


def utilisation(workers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The cluster's utilisation over the given (serving) workers: per resource and the bottleneck.

    ``slots`` counts assigned attempts against max_concurrent_tasks; the others count reservations
    against capacity. ``overall`` is the highest ratio (the resource that runs out first), or None when
    there is no capacity at all to judge.
    """
    totals = {name: [0.0, 0.0] for name in ("slots", "cpu_cores", "memory_gb", "gpus", "gpu_memory_gb")}
    count = 0
    for worker in workers:
        count += 1
        totals["slots"][0] += len(worker.get("assigned") or {})
        totals["slots"][1] += int(worker.get("max_concurrent_tasks") or 1)
        doc = worker_usage(worker)
        for name in ("cpu_cores", "memory_gb", "gpus", "gpu_memory_gb"):
            totals[name][0] += doc[name]["reserved"]
            totals[name][1] += doc[name]["capacity"]
    ratios = {name: (round(min(used / cap, 1.0), 4) if cap > 0 else None) for name, (used, cap) in totals.items()}
    known = [r for r in ratios.values() if r is not None]
    return {"workers": count, "ratios": ratios, "overall": max(known) if known else None,
            "reserved": {name: round(used, 4) for name, (used, _) in totals.items()},
            "capacity": {name: round(cap, 4) for name, (_, cap) in totals.items()}}


def recommend(util: Mapping[str, Any], *, pending: int, scale_up: float, scale_down: float) -> str:
    """``scale_up`` | ``scale_down`` | ``steady`` for a utilisation document and the waiting tasks."""
    overall = util.get("overall")
    if overall is None:
        # No serving worker at all: work waiting means capacity is needed; nothing waiting, nothing to say.
        return "scale_up" if pending else "steady"
    if overall >= scale_up:
        return "scale_up"
    if overall <= scale_down and not pending:
        return "scale_down"
    return "steady"


__all__ = ["Ledger", "ResourceError", "allocate", "assignment_fields", "device_env", "devices", "recommend", "unmet_capacity", "usage",
           "utilisation", "validate", "worker_usage"]
