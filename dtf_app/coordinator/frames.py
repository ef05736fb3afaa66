"""Shape checks for the frames a worker sends on ``WS /ws/worker`` (the protocol in protocol.py).

They run at the edge, in ws.py, before a frame reaches :meth:`Coordinator.worker_hello` or
:meth:`Coordinator.worker_message`, which may then index, hash and commit what they get: a frame whose
fields have the wrong types is answered with an error frame (or, for the hello, a 4400 close), never
with a traceback, and never reaches the command log or the state machine.

Each check returns ``None`` for a good frame, else what is wrong, for the error frame's message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dtf_app import protocol as proto


def _typename(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _optional(message: dict[str, Any], key: str, check: Callable[[Any], bool], what: str) -> str | None:
    """None when the field is absent, null or passes the check."""
    value = message.get(key)
    if value is None or check(value):
        return None
    return f"{key} must be {what}, got {_typename(value)}"


def _task_refs(value: Any, where: str, *, required: bool = False, times: tuple[str, ...] = ()) -> str | None:
    """An array of ``{"task_id": str, "attempt": int, ...}`` (times: optional unix-seconds fields)."""
    if value is None and not required:
        return None
    if not isinstance(value, list):
        return f"{where} must be an array of {{task_id, attempt}} objects, got {_typename(value)}"
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            return f"{where}[{i}] must be an object, got {_typename(item)}"
        if not isinstance(item.get("task_id"), str) or not item["task_id"]:
            return f"{where}[{i}].task_id must be a non-empty string"
        if not _is_int(item.get("attempt")):
            return f"{where}[{i}].attempt must be an integer"
        for key in times:
            if item.get(key) is not None and not _is_number(item[key]):
                return f"{where}[{i}].{key} must be unix seconds (a number) or null"
    return None


def _strings(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"{where} must be an array of strings"
    return None


def hello_problem(hello: dict[str, Any]) -> str | None:
    """What is wrong with a hello (its type and worker_id are checked by the caller)."""
    return (_optional(hello, "hostname", _is_str, "a string")
            or _optional(hello, "capabilities", _is_object, "an object")
            or _optional(hello, "max_concurrent_tasks", _is_int, "an integer")
            or _optional(hello, "simulated", _is_bool, "a boolean")
            or _optional(hello, "metrics", _is_object, "an object")
            or _strings(hello.get("tags"), "tags")
            or _task_refs(hello.get("running"), "running")
            or _task_refs(hello.get("finished"), "finished"))


def worker_frame_problem(message: dict[str, Any]) -> str | None:
    """What is wrong with a frame after the hello (``message["type"]`` is a string: proto.loads)."""
    kind = message["type"]
    if kind == proto.STARTED:
        return _task_refs(message.get("items"), "items", required=True, times=("start_time",))
    if kind == proto.RESULTS:
        # Each outcome's other fields are cleaned by intake.clean_outcome; here only what indexes it.
        return _task_refs(message.get("items"), "items", required=True)
    if kind == proto.HEARTBEAT:
        return (_optional(message, "metrics", _is_object, "an object")
                or _optional(message, "free_slots", _is_int, "an integer")
                or _task_refs(message.get("running"), "running"))
    if kind == proto.LOG:
        if not isinstance(message.get("task_id"), str):
            return "task_id must be a string"
        return (_optional(message, "attempt", _is_int, "an integer")
                or _strings(message.get("lines"), "lines")
                or (None if isinstance(message.get("lines"), list) else "lines must be an array of strings"))
    return (f"unknown message type {kind[:100]!r}; a worker sends {proto.STARTED}, {proto.RESULTS}, "
            f"{proto.HEARTBEAT} or {proto.LOG}")
