"""The worker <-> coordinator wire protocol and the documents both sides share.

Everything that crosses ``WS /ws/worker`` is a JSON object with a ``type`` field. Messages batch: one
``assign`` carries many tasks, one ``results`` many results, one ``ack`` many acknowledgements, so the
hot path costs one websocket frame per batch rather than one HTTP request per task (DESIGN.md §11).

Handshake (the API key travels in the ``X-API-Key`` header of the websocket upgrade, role ``worker``)::

    worker -> {"type": "hello", "worker_id": str, "hostname": str, "capabilities": {...},
               "max_concurrent_tasks": int, "tags": [str], "simulated": bool,
               "running": [{"task_id", "attempt"}],           # tasks it is still running (reconnect)
               "finished": [{"task_id", "attempt"}]}          # outcomes it will re-send (await an ack)
    coord  -> {"type": "welcome", "worker_id": str, "heartbeat_interval": float,
               "worker_timeout": float, "node_id": str}
    coord  -> {"type": "error", "code": str, "message": str}   # then closes (bad hello, bad key ...)

Steady state::

    coord  -> {"type": "assign", "tasks": [TaskAssignment, ...]}
    worker -> {"type": "started", "items": [{"task_id", "attempt", "start_time"}]}
    worker -> {"type": "log", "task_id", "attempt", "lines": [str, ...]}        # ephemeral, fanned out
    worker -> {"type": "results", "items": [TaskOutcome, ...]}
    coord  -> {"type": "ack", "items": [{"task_id", "attempt"}]}               # durable: drop outbox rows
    worker -> {"type": "heartbeat", "metrics": {...health...}, "free_slots": int,
               "running": [{"task_id", "attempt"}]}
    coord  -> {"type": "cancel", "task_id", "attempt"}                          # kill the process group

TaskAssignment: ``{"task_id", "attempt", "type", "name", "config", "timeout_seconds", "priority"}``.

TaskOutcome::

    {"task_id": str, "attempt": int,
     "outcome": "completed" | "failed",   # completed: the runner ran and reported (tests may have failed)
     "start_time": float, "end_time": float,            # unix seconds
     "error": str | None,                               # why it could not run, for "failed"
     "result": ResultDocument | None}

ResultDocument (what a runner returns)::

    {"status": "success" | "failure" | "partial",
     "metrics": {...},                 # summary numbers (tests passed/failed, best throughput, ...)
     "execution_time": float,          # seconds
     "environment": {...},             # python, platform, packages, backend (torch | numpy | python)
     "raw_data": {...},                # runner specific detail (command, return code, ...)
     "output": str,                    # tail of stdout/stderr
     "tests": [{"nodeid", "outcome", "duration", "message"}],               # test runner
     "benchmarks": [{"model", "batch_size", "precision", "backend", "iterations",
                     "latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
                     "throughput", "memory_peak_mb"}]}                       # benchmark runner

The same outcome document is accepted over HTTP at ``POST /api/tasks/{id}/complete`` (result) and
``POST /api/tasks/{id}/fail`` (error), for workers that cannot hold a websocket.
"""

from __future__ import annotations

import json
from typing import Any

# Message types, one constant each so a typo is a NameError rather than a silently ignored message.
HELLO = "hello"
WELCOME = "welcome"
ERROR = "error"
ASSIGN = "assign"
STARTED = "started"
LOG = "log"
RESULTS = "results"
ACK = "ack"
HEARTBEAT = "heartbeat"
CANCEL = "cancel"

# Task log lines (``log`` frames): the worker caps and batches with these, the coordinator enforces them
# again (a worker is another process, maybe another version) and bounds what it buffers per task and
# per worker in dtf_app/coordinator/tasklogs.py.
LOG_LINE_MAX_CHARS = 4000
LOG_LINES_PER_MESSAGE = 200
LOG_TRUNCATED = " [truncated]"


def cap_log_line(text: str) -> str:
    """A log line cut to LOG_LINE_MAX_CHARS (marked); idempotent, so both sides may apply it."""
    return text if len(text) <= LOG_LINE_MAX_CHARS else text[:LOG_LINE_MAX_CHARS] + LOG_TRUNCATED


TASK_TYPES = ("test", "benchmark", "custom")
TASK_STATES = ("pending", "blocked", "unschedulable", "assigned", "running", "completed", "failed", "cancelled")
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})
RESULT_STATUSES = ("success", "failure", "partial")

# The hardware vocabulary of the source project (DESIGN.md §8).
HARDWARE_KINDS = ("cpu", "cuda", "rocm", "mps", "openvino", "qualcomm", "webgpu", "webnn")


def dumps(message: dict[str, Any]) -> str:
    """Serialise a protocol message compactly (no spaces: these go over the wire by the thousand)."""
    return json.dumps(message, separators=(",", ":"), default=str)


def loads(text: str | bytes) -> dict[str, Any]:
    """Parse a protocol message; raises ValueError when it is not a JSON object with a ``type``."""
    message = json.loads(text)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("protocol message must be a JSON object with a string 'type'")
    return message
