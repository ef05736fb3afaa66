"""The worker <-> coordinator wire protocol and the documents both sides share.

Everything that crosses ``WS /ws/worker`` is a JSON object with a ``type`` field. Messages batch: one
``assign`` carries many tasks, one ``results`` many results, one ``ack`` many acknowledgements, so the
hot path costs one websocket frame per batch rather than one HTTP request per task (DESIGN.md §11).

Handshake (the API key travels in the ``X-API-Key`` header of the websocket upgrade, role ``worker``;
the worker's own credential in the ``X-Worker-Credential`` header, see *Worker identity* below)::

    worker -> {"type": "hello", "worker_id": str, "hostname": str, "capabilities": {...},
               "max_concurrent_tasks": int, "tags": [str], "simulated": bool,
               "running": [{"task_id", "attempt"}],           # tasks it is still running (reconnect)
               "finished": [{"task_id", "attempt"}]}          # outcomes it will re-send (await an ack)
    coord  -> {"type": "welcome", "worker_id": str, "heartbeat_interval": float,
               "worker_timeout": float, "node_id": str,
               "credential": str}                    # only when the coordinator issued one (see below)
    coord  -> {"type": "error", "code": str, "message": str}   # then closes (bad hello, bad key ...)

Worker identity. A worker-role API key is an *enrolment* credential that many workers may share; it
does not let its holder act as any worker id. The first hello (or ``POST /api/workers/register``) under
an id enrols it: the coordinator commits ``EnrollWorker`` binding the id to the SHA-256 of a per-worker
credential, either the one the worker presented in ``X-Worker-Credential`` (what the dtf agent does: it
creates the secret in its data dir, mode 0600, before its first connection, so no crash or lost frame
can leave it enrolled without knowing its secret) or, when none was presented, a fresh one that the
coordinator returns once, in ``welcome.credential`` / the register response's ``credential``. From then
on every act as that id (hello, register, heartbeat over ``POST /api/health``, HTTP complete/fail) must
present that credential in ``X-Worker-Credential``, whatever the API key's role (admin keys are not
exempt); otherwise HTTP 403 ``credential_refused`` or, on the socket, an ``error`` frame with code
``credential_refused`` and close code 4403, and a connected worker keeps its connection. Two workers
racing for a new id: the first ``EnrollWorker`` committed wins, the other is refused. ``dtf workers
forget ID`` (``DELETE /api/workers/{id}/enrolment``, admin) commits ``ForgetWorker``: the id may enrol
again, and a worker connected under it gets ``credential_refused`` and close 4403.

Steady state::

    coord  -> {"type": "assign", "tasks": [TaskAssignment, ...]}
    worker -> {"type": "started", "items": [{"task_id", "attempt", "start_time"}]}
    worker -> {"type": "log", "task_id", "attempt", "lines": [str, ...]}        # ephemeral, fanned out
    worker -> {"type": "results", "items": [TaskOutcome, ...]}
    coord  -> {"type": "ack", "items": [{"task_id", "attempt"}]}               # durable: drop outbox rows
    worker -> {"type": "heartbeat", "metrics": {...health...}, "free_slots": int,
               "running": [{"task_id", "attempt"}]}
    coord  -> {"type": "cancel", "task_id", "attempt"}                          # kill the process group
    coord  -> {"type": "control", "action": "drain" | "resume" | "stop" | "restart", "reason": str}

A heartbeat's ``alerts`` (optional) are the worker's own health alerts against its ``health`` thresholds
(:func:`dtf_app.health.evaluate`); the leader publishes them and quarantines a worker over a critical one.
``control``: drain/resume are informational (the coordinator stops or restarts giving it tasks); on
stop the worker takes no new task, finishes what it runs, waits for the acks and exits 0; on restart
it does the same and then starts again (a new process with the same arguments, or a fresh agent in a
peer).

TaskAssignment: ``{"task_id", "attempt", "type", "name", "config", "timeout_seconds", "priority"}``, plus
``"resources"`` and ``"devices"`` (``[{"index", "type"}]``) when the task reserved resources: the runner
sets :data:`DEVICE_ENV_VARS` of the devices' type to exactly those indices.

TaskOutcome::

    {"task_id": str, "attempt": int,
     "outcome": "completed" | "failed",   # completed: the runner ran and reported (tests may have failed)
     "start_time": float, "end_time": float,            # unix seconds
     "error": str | None,                               # why it could not run, for "failed"
     "error_class": str | None,                         # ERROR_CLASSES: retryable or not, for "failed"
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
``POST /api/tasks/{id}/fail`` (error), for workers that cannot hold a websocket; the caller must present
the credential of the worker that holds the task's current attempt. Such a worker gets its assignments
from ``GET /api/tasks`` with its ``X-Worker-Credential`` (a long poll; dtf_app/coordinator/http_workers.py)
and reports ``running`` / health with ``POST /api/health``; its polls are its heartbeats.
"""

from __future__ import annotations

import re
from typing import Any

from dtf_app import jsonsafe

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
CONTROL = "control"
CONTROL_ACTIONS = ("drain", "resume", "stop", "restart")
"""What the coordinator may tell a worker to do (``dtf workers drain|resume|stop|restart ID``)."""

# Worker identity (see the module docstring): the header, and the error code of a refusal.
WORKER_CREDENTIAL_HEADER = "X-Worker-Credential"
CREDENTIAL_REFUSED = "credential_refused"

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

# Why an attempt failed, as the worker (or the coordinator, for lost workers and timeouts) classifies it:
# the ``error_class`` of a TaskOutcome. The one vocabulary for every decision about a failure: whether it
# is retried (state.py's FailTasks), and whether it counts against the worker for quarantine
# (quarantine.py); the runners and the agent pick the class where the error happens.
#   bad_config, missing_file, unknown_runner  the task can never succeed by running again: fails at once
#   timeout, crash                            the task's own run went wrong (a crash: its process died,
#                                             exited on a signal): retried with backoff up to max_retries
#   worker_error, worker_lost                 the worker broke (its runtime, disk, memory, a task it no
#                                             longer runs): retried, and counted as infrastructure
#   cancelled                                 the worker stopped mid-task: retried
# None (an old worker, or a report that says nothing) is retried and counted against nobody.
ERROR_CLASSES = ("bad_config", "missing_file", "unknown_runner", "timeout", "crash", "worker_error", "worker_lost",
                 "cancelled")
NON_RETRYABLE_ERRORS = frozenset({"bad_config", "missing_file", "unknown_runner"})
INFRASTRUCTURE_ERRORS = frozenset({"worker_error", "worker_lost"})

# The load balancer's strategies (``load_balancer.strategy``; dtf_app/coordinator/balancer.py).
BALANCER_STRATEGIES = ("fair_share", "least_loaded", "performance_aware", "packed")


def is_retryable(error_class: str | None) -> bool:
    """Whether an attempt that failed with ``error_class`` may run again (unknown/None: yes, as before)."""
    return error_class not in NON_RETRYABLE_ERRORS


def is_infrastructure_error(error_class: str | None) -> bool:
    """Whether an attempt that failed with ``error_class`` says the worker broke, not the task."""
    return error_class in INFRASTRUCTURE_ERRORS


# The hardware vocabulary of the source project (DESIGN.md §8).
HARDWARE_KINDS = ("cpu", "cuda", "rocm", "mps", "openvino", "qualcomm", "webgpu", "webnn")

# Quantities a task may reserve on its worker (``resources`` of the task document; coordinator/resources.py):
# held from assignment until the attempt ends, so tasks never oversubscribe a worker or a GPU.
RESOURCE_KEYS = ("cpu_cores", "memory_gb", "gpu_memory_gb", "gpus")
MAX_RESOURCE_GPUS = 64
# The variables that restrict a process to some devices, per device type: a task that reserved GPUs
# runs with its devices' type's variables set to exactly their indices (e.g. CUDA_VISIBLE_DEVICES=1,2).
DEVICE_ENV_VARS: dict[str, tuple[str, ...]] = {
    "cuda": ("CUDA_VISIBLE_DEVICES",),
    "rocm": ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"),
}

# Health alert levels (dtf_app/health.py), lowest first; ``health_alert`` pushes carry one.
HEALTH_LEVELS = ("warning", "critical")

# Identifiers chosen by clients and operators (worker ids, task ids given at submit, API key names, node
# ids) use one safe alphabet: no spaces, quotes, newlines or control characters, so an id can be put in
# a log line, a URL path or a file name without escaping, and can never forge a log line.
MAX_ID_LENGTH = 128
ID_ALPHABET = "letters A-Z a-z, digits 0-9 and . _ : @ -"
ID_PATTERN = re.compile(rf"[A-Za-z0-9._:@-]{{1,{MAX_ID_LENGTH}}}")


def id_problem(value: Any, where: str) -> str | None:
    """None when ``value`` is a valid identifier, else a message naming ``where`` and the alphabet."""
    if isinstance(value, str) and ID_PATTERN.fullmatch(value):
        return None
    got = f"a string of {len(value)} characters" if isinstance(value, str) and len(value) > MAX_ID_LENGTH else (
        ascii(value) if isinstance(value, str) else type(value).__name__)
    return f"{where} must be 1-{MAX_ID_LENGTH} characters of {ID_ALPHABET}, got {got}"


# Benchmark config limits: checked at submit (scheduler.validate_task), published in the OpenAPI document
# and enforced again by the runner (dtf_plugins.runners.benchmark) on the worker. One definition here.
BENCH_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BENCH_FUNCTIONS = ("latency", "throughput", "memory")
BENCH_BACKENDS = ("torch", "numpy", "python")
BATCH_SIZE_RANGE = (1, 4096)
"""Smallest and largest batch size a benchmark may ask for (the runner allocates batch x sequence)."""
BENCH_INT_RANGES: dict[str, tuple[int, int]] = {
    "iterations": (1, 100_000), "warmup": (0, 10_000), "sequence_length": (1, 32_768), "layers": (1, 128),
}
"""Inclusive (minimum, maximum) of each integer benchmark setting."""


def dumps(message: dict[str, Any]) -> str:
    """Serialise a protocol message as strict JSON, compactly (these go over the wire by the thousand)."""
    return jsonsafe.dumps(message)


def loads(text: str | bytes) -> dict[str, Any]:
    """Parse a protocol message strictly (:mod:`dtf_app.jsonsafe`); raises ValueError (a
    :class:`~dtf_app.jsonsafe.JsonInputError` for bad JSON) unless it is a JSON object with a ``type``."""
    message = jsonsafe.loads(text, what="the message")
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("protocol message must be a JSON object with a string 'type'")
    return message
