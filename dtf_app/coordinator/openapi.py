"""The OpenAPI 3 description of the HTTP API (``GET /openapi.json``).

Written out by hand next to the routes so clients and fuzzers (schemathesis) see the real request
shapes; ``tests/integration`` checks that every route of the app is described here.
"""

from __future__ import annotations

from typing import Any

from dtf_app.coordinator import scheduler
from dtf_app.coordinator.http import MAX_TASKS_PER_REQUEST
from dtf_app.coordinator.http_workers import POLL_WAIT_MAX_S
from dtf_app.coordinator.views import WORKER_STATUSES
from dtf_app.jsonsafe import MAX_JSON_DEPTH
from dtf_app.protocol import (
    BATCH_SIZE_RANGE,
    BENCH_BACKENDS,
    BENCH_INT_RANGES,
    ERROR_CLASSES,
    ID_ALPHABET,
    ID_PATTERN,
    MAX_RESOURCE_GPUS,
    WORKER_CREDENTIAL_HEADER,
)
from dtf_app.security.keys import ROLES
from dtf_app.store import queries
from dtf_app.store.regressions import REGRESSION_METRICS

# Every identifier a client chooses (task ids, worker ids, key names) has this shape (protocol.py).
_ID = {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$", "description": f"1-128 characters of {ID_ALPHABET}"}

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}

_HARDWARE = {"type": "string", "enum": list(scheduler.HARDWARE_KINDS)}

# A coordinator's advertised URL as POST /api/cluster/nodes documents it (cluster.normalise_url accepts
# a little more: HOST:PORT, IPv6 literals).
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_NODE_URL = f"^https?://[A-Za-z0-9.-]+(?::{_PORT})?/?$"


def _any_case(words: tuple[str, ...]) -> str:
    """A pattern for these words in any letter case (JSON Schema patterns have no (?i) flag)."""
    return "^(?:" + "|".join("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in w)
                             for w in words) + ")$"


_REQUIREMENTS = {"type": ["object", "null"], "additionalProperties": False, "properties": {
    "hardware": {"oneOf": [_HARDWARE, {"type": "array", "items": _HARDWARE}],
                 "description": "one kind or a list; the worker must have all of them"},
    "min_memory_gb": {"type": "number", "minimum": 0}, "min_gpu_memory_gb": {"type": "number", "minimum": 0},
    "min_cuda_compute": {"type": "number", "minimum": 0}, "min_cpu_cores": {"type": "integer", "minimum": 1},
    "tags": {"type": "array", "items": {"type": "string"}},
    "os": {"type": "string", "pattern": _any_case(scheduler.OS_NAMES),
           "description": "linux, windows or macos (darwin is macos), in any letter case"},
}}

_RESOURCES = {"type": ["object", "null"], "additionalProperties": False, "description": (
    "quantities reserved on the worker from assignment until the attempt ends (never oversubscribed); "
    "gpus: whole devices held exclusively, the task runs with CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES "
    "set to exactly them"), "properties": {
    "cpu_cores": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6},
    "memory_gb": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6},
    "gpu_memory_gb": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6,
                      "description": "alone: a share of one device; with gpus: what each device must have"},
    "gpus": {"type": "integer", "minimum": 1, "maximum": MAX_RESOURCE_GPUS},
}}

_STR_LIST = {"type": "array", "items": {"type": "string"}}
_ENV = {"type": "object", "additionalProperties": {"type": "string"}}
_CONFIGS: dict[str, dict[str, Any]] = {
    "test": {"type": "object", "required": ["test_file"], "properties": {
        "test_file": {"oneOf": [{"type": "string", "minLength": 1, "pattern": "\\S"},
                                {**_STR_LIST, "minItems": 1}]},
        "test_args": _STR_LIST, "working_dir": {"type": "string"}, "env": _ENV}},
    "benchmark": {"type": "object", "required": ["model"], "properties": {
        "model": {"type": "string", "minLength": 1, "pattern": "\\S"},
        "batch_sizes": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": BATCH_SIZE_RANGE[0],
                                                                  "maximum": BATCH_SIZE_RANGE[1]}},
        "precision": {"oneOf": [{"type": "string", "enum": list(scheduler.PRECISIONS)},
                                {"type": "array", "minItems": 1,
                                 "items": {"type": "string", "enum": list(scheduler.PRECISIONS)}}]},
        **{key: {"type": "integer", "minimum": low, "maximum": high} for key, (low, high) in BENCH_INT_RANGES.items()},
        "backend": {"type": "string", "enum": ["auto", *BENCH_BACKENDS]},
        "functions": {"type": "array", "items": {"type": "string", "enum": list(scheduler.BENCH_FUNCTIONS)}},
        "working_dir": {"type": "string"}, "env": _ENV}},
    "custom": {"type": "object", "description": "exactly one of command, callable, name", "oneOf": [
        {"required": ["command"], "not": {"anyOf": [{"required": ["callable"]}, {"required": ["name"]}]}},
        {"required": ["callable"], "not": {"anyOf": [{"required": ["command"]}, {"required": ["name"]}]}},
        {"required": ["name"], "not": {"anyOf": [{"required": ["command"]}, {"required": ["callable"]}]}},
    ], "properties": {"command": {**_STR_LIST, "minItems": 1},
                      "callable": {"type": "string", "pattern": "^[^:]+:[^:]+$"},
                      "name": {"type": "string", "minLength": 1}, "args": {"type": "array"},
                      "kwargs": {"type": "object"}, "working_dir": {"type": "string"}, "env": _ENV}},
}


def _task_in(kind: str) -> dict[str, Any]:
    return {"type": "object", "required": ["type", "config"], "additionalProperties": False, "properties": {
        "type": {"type": "string", "const": kind},
        "priority": {"type": "integer", "minimum": scheduler.PRIORITY_RANGE[0],
                     "maximum": scheduler.PRIORITY_RANGE[1], "description": "higher runs first"},
        "config": _CONFIGS[kind],
        "requirements": _REQUIREMENTS,
        "resources": _RESOURCES,
        "dependencies": {"type": ["array", "null"], "items": {"type": "string"},
                         "description": "ids of tasks that must complete first: existing ones or ones in the "
                                        "same request (422 otherwise, or for a cycle)"},
        "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": scheduler.MAX_TIMEOUT_SECONDS},
        "max_retries": {"type": "integer", "minimum": 0, "maximum": 100},
        "name": {"type": ["string", "null"], "maxLength": 500},
        "task_id": {**_ID, "type": ["string", "null"], "description": "optional; generated when absent or null"},
        "metadata": {"type": ["object", "null"]},
        "submitter": {**_ID, "type": ["string", "null"],
                      "description": "who the task counts against for fair share; default the API key's name"},
        "group": {**_ID, "type": ["string", "null"],
                  "description": "fair share spreads a submitter's slots across groups; default the batch"},
    }}


_TASK_IN = {"oneOf": [_task_in(kind) for kind in scheduler.TASK_TYPES]}
_TASK_REF = {"$ref": "#/components/schemas/TaskIn"}
_TASK_LIST = {"type": "array", "items": _TASK_REF, "minItems": 1, "maxItems": MAX_TASKS_PER_REQUEST}

_TASK_OUT = {"type": "object", "required": ["task_id", "status", "type"], "properties": {
    "task_id": {"type": "string"}, "status": {"type": "string", "enum": list(scheduler.ALL_STATES)},
    "type": {"type": "string"}, "attempts": {"type": "integer"}, "worker_id": {"type": ["string", "null"]},
    "result": {"type": ["object", "null"]}, "batch_id": {"type": "string"},
}}


def _orchestration_paths(task_id: dict[str, Any], outcome: dict[str, Any],
                         paging: list[dict[str, Any]]) -> dict[str, Any]:
    """The orchestrator's routes (coordinator/orchestrator_api.py) and the subtask reports (api.py)."""
    from dtf_app.coordinator import orchestrator

    bench = _CONFIGS["benchmark"]["properties"]
    task_level = _task_in("benchmark")["properties"]
    flat = {"type": "object", "required": ["type"], "additionalProperties": False,
            "description": "the source design's flat form of a benchmark: config keys beside the task's own; "
                           "model_name (or model) names the model",
            "oneOf": [{"required": ["model_name"], "not": {"required": ["model"]}},
                      {"required": ["model"], "not": {"required": ["model_name"]}}],
            "properties": {**{k: task_level[k] for k in orchestrator.FLAT_TASK_KEYS},
                           **{k: bench[k] for k in orchestrator.FLAT_CONFIG_KEYS if k in bench},
                           "model_name": bench["model"]}}
    body = {"type": "object", "required": ["task_data"], "additionalProperties": False, "properties": {
        "task_data": {"oneOf": [_TASK_REF, flat], "description": "the task to split: a task document (any type) "
                      "or the flat benchmark form"},
        "strategy": {"type": "string", "enum": list(orchestrator.STRATEGIES), "description": "default data_parallel"},
        "subtask_count": {"type": ["integer", "null"], "minimum": 1, "maximum": orchestrator.MAX_SUBTASKS,
                          "description": "data_parallel: shards to make (default: one per capable connected worker)"},
        "task_id": {**_ID, "type": ["string", "null"], "description": "optional; subtasks are <task_id>-<n>"},
        "name": {"type": ["string", "null"], "maxLength": 400},
        "priority": {"type": "integer", "minimum": scheduler.PRIORITY_RANGE[0],
                     "maximum": scheduler.PRIORITY_RANGE[1]},
        "allow_unschedulable": {"type": "boolean"}}}
    view = {"type": "object", "required": ["task_id", "status", "strategy", "completion_percentage", "subtasks"],
            "properties": {"task_id": {"type": "string"},
                           "status": {"type": "string", "enum": list(orchestrator.STATUSES)},
                           "strategy": {"type": "string", "enum": list(orchestrator.STRATEGIES)},
                           "completion_percentage": {"type": "integer", "minimum": 0, "maximum": 100},
                           "subtasks": {"type": "array", "items": {"type": "object", "required": ["subtask_id"]}},
                           "result": {"type": ["object", "null"]}}}
    return {
        "/api/orchestrate": {"post": _op(
            "split a task into subtasks (data_parallel: batch sizes or test files; function_parallel: latency, "
            "throughput, memory; hardware_parallel: one per hardware kind among connected workers), one durable "
            "commit; 422 when it cannot be split that way or no worker can run a subtask", "201", body=body,
            params=[_query("allow_unschedulable", {"type": "boolean"})], response=view)},
        "/api/orchestrated_task/{task_id}": {"get": _op(
            "an orchestrated task: status, completion_percentage, subtasks, merged result", params=[task_id],
            response=view)},
        "/api/orchestrated_tasks": {"get": _op("orchestrated tasks", params=[
            _query("status", {"type": "string", "enum": list(orchestrator.STATUSES)}),
            _query("strategy", {"type": "string", "enum": list(orchestrator.STRATEGIES)}), *paging])},
        "/api/cancel_orchestrated_task": {"post": _op(
            "cancel an orchestrated task and every unfinished subtask (409 if already finished)", body={
                "type": "object", "required": ["task_id"], "properties": {
                    "task_id": {"type": "string"}, "reason": {"type": "string", "maxLength": 1000}}},
            response=view)},
        "/api/subtasks/{task_id}/complete": {"post": _op(
            "worker: report a subtask's result (as /api/tasks/{task_id}/complete; 404 for a task without a "
            "parent)", params=[task_id, _credential(True)], body=outcome)},
        "/api/subtasks/{task_id}/fail": {"post": _op(
            "worker: report a subtask's failure (as /api/tasks/{task_id}/fail)", params=[task_id, _credential(True)],
            body=outcome)},
    }


_TASK_PAGE = {"type": "object", "required": ["tasks", "total"], "properties": {
    "tasks": {"type": "array", "items": _TASK_OUT}, "total": {"type": "integer"}}}
_POLL = {"type": "object", "required": ["worker_id", "tasks", "new", "cancel"], "properties": {
    "worker_id": {"type": "string"},
    "tasks": {"type": "array", "items": {"type": "object", "required": ["task_id", "attempt", "type", "config"],
                                         "properties": {"task_id": {"type": "string"}, "attempt": {"type": "integer"},
                                                        "type": {"type": "string"}, "config": {"type": "object"},
                                                        "parameters": {"type": "object"},
                                                        "timeout_seconds": {"type": "number"},
                                                        "resources": {"type": "object"},
                                                        "devices": {"type": "array", "items": {
                                                            "type": "object", "properties": {
                                                                "index": {"type": "integer"},
                                                                "type": {"type": ["string", "null"]}}}}}}},
    "new": {"type": "array", "items": {"type": "string"}},
    "cancel": {"type": "array", "items": {"type": "object"}},
    "heartbeat_interval": {"type": "number"}, "worker_timeout": {"type": "number"},
    "poll_wait_max": {"type": "number"}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: str = "200", *, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, response: dict[str, Any] | None = None,
        open_: bool = False, description: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        ok: {"description": "ok", **_json(response or {"type": "object"})},
        "400": {"description": "bad input", **_json(_ERROR)},
        "401": {"description": "no or bad API key", **_json(_ERROR)},
        "403": {"description": "role not allowed, or not this worker's credential", **_json(_ERROR)},
        "404": {"description": "not found", **_json(_ERROR)},
        "409": {"description": "conflict (exists, already finished)", **_json(_ERROR)},
        "413": {"description": "request too large", **_json(_ERROR)},
        "422": {"description": "well-formed but cannot be done: no worker can run the task, or a dependency "
                               "is unknown or forms a cycle", **_json(_ERROR)},
        "503": {"description": "the node is still starting (code starting; GET /status says what it waits for), "
                               "or no leader is known yet (code no_leader)", **_json(_ERROR)},
    }}
    if description:
        op["description"] = description
    if open_:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


def _status_op() -> dict[str, Any]:
    """GET /status: 200 with ready true once started, 503 with what it still waits for before that."""
    op = _op("health check, no key needed: 200 ready, 503 while starting", open_=True, response={
        "type": "object", "required": ["status", "ready"], "properties": {
            "status": {"type": "string", "enum": ["ok"]}, "ready": {"type": "boolean", "enum": [True]}}})
    op["responses"]["503"] = {"description": "starting", **_json({
        "type": "object", "required": ["status", "ready", "waiting_for"], "properties": {
            "status": {"type": "string", "enum": ["starting"]}, "ready": {"type": "boolean", "enum": [False]},
            "waiting_for": {"type": "array", "items": {"type": "string"}}}})}
    return op


def _metrics_op() -> dict[str, Any]:
    op = _op("Prometheus text exposition")
    op["responses"]["200"] = {"description": "ok", "content": {"text/plain; version=0.0.4": {
        "schema": {"type": "string"}}}}
    return op


def _export_op() -> dict[str, Any]:
    from dtf_app.coordinator.backup import EXPORT_TABLES

    op = _op("one table as Parquet (default) or CSV", params=[
        _query("table", {"type": "string", "enum": list(EXPORT_TABLES)}, "default results"),
        _query("format", {"type": "string", "enum": ["parquet", "csv"]}, "default parquet")])
    op["responses"]["200"] = {"description": "the table's rows", "content": {
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
        "text/csv": {"schema": {"type": "string"}}}}
    return op


def _html_op(summary: str) -> dict[str, Any]:
    op = _op(summary)
    op["responses"]["200"] = {"description": "ok", "content": {"text/html; charset=utf-8": {
        "schema": {"type": "string"}}}}
    return op


def _bundle_put_op(sha: dict[str, Any]) -> dict[str, Any]:
    op = _op("upload a suite bundle (tar.gz named by its SHA-256), fsynced before the 201; 422 when the bytes "
             "do not hash to the name", "201", params=[sha])
    op["requestBody"] = {"required": True, "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}
    return op


def _required_query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": True, "schema": schema, "description": description}


def _query(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    # The API reads an empty value (``?status=``) as an absent parameter.
    param = {"name": name, "in": "query", "required": False, "allowEmptyValue": True, "schema": schema}
    if description:
        param["description"] = description
    return param


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _aggregate_filters() -> list[str]:
    names: list[str] = []
    for source in queries.AGGREGATE_SOURCES.values():
        names += [n for n in source["filters"] if n not in names]
    return names


def _credential(required: bool) -> dict[str, Any]:
    return {"name": WORKER_CREDENTIAL_HEADER, "in": "header", "required": required, "schema": {"type": "string"},
            "description": "the worker's own credential (see dtf_app/protocol.py, Worker identity); without "
                           "the right one, acting as an enrolled worker id is 403 credential_refused"}


def build_spec(version: str) -> dict[str, Any]:
    """The whole document."""
    task_id, worker_id, result_id, name = _path("task_id"), _path("worker_id"), _path("result_id"), _path("name")
    outcome = {"type": "object", "properties": {"attempt": {"type": "integer"}, "result": {"type": "object"},
                                                 "error": {"type": "string"}, "retry": {"type": "boolean"},
                                                 "error_class": {"type": ["string", "null"],
                                                                 "enum": [*ERROR_CLASSES, None]},
                                                 "start_time": {"type": ["number", "null"]},
                                                 "end_time": {"type": ["number", "null"]}}}
    paging = [_query("limit", {"type": "integer", "minimum": 1, "maximum": 100_000}),
              _query("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000})]
    register = _op(
        "register a worker over HTTP (role worker). A new id is enrolled with the X-Worker-Credential "
        "presented, or with a generated credential returned once as `credential`; an enrolled id needs "
        "its credential (403 otherwise)", "201", params=[_credential(False)], body={
            "type": "object", "required": ["worker_id"], "properties": {
                "worker_id": _ID, "hostname": {"type": ["string", "null"]},
                "capabilities": {"type": ["object", "null"], "properties": {
                    "hardware": {**_STR_LIST, "type": ["array", "null"], "description": "hardware kinds; cpu when empty"},
                    "tags": {**_STR_LIST, "type": ["array", "null"]}, "simulated": {"type": ["boolean", "null"]}}},
                "tags": {"type": ["array", "null"], "items": {"type": "string"}},
                "max_concurrent_tasks": {"type": "integer", "minimum": 1, "maximum": 10_000}}},
        response={"type": "object", "required": ["worker_id"], "properties": {
            "worker_id": {"type": "string"},
            "credential": {"type": "string", "description": "only when the coordinator generated it"}}})
    source_register = {**register, "summary": "the sources' name for POST /api/workers/register: " + register["summary"]}
    paths: dict[str, Any] = {
        "/status": {"get": _status_op()},
        "/api/status": {"get": _op("node, leader, task and worker counts")},
        "/api/dashboard": {"get": _op("status, workers and recent tasks in one call")},
        "/metrics": {"get": _metrics_op()},
        "/openapi.json": {"get": _op("this document")},
        "/api/cluster/status": {"get": _op("cluster status")},
        "/api/cluster/leader": {"get": _op("leader id, term and URL")},
        "/api/cluster/nodes": {
            "get": _op("coordinator nodes"),
            "post": _op("add one coordinator (admin, leader; one change at a time, 409 while one is in progress): it "
                        "must already answer at url as node_id; returns once the change is committed",
                        body={"type": "object", "required": ["node_id", "url"], "additionalProperties": False,
                              "properties": {"node_id": _ID, "url": {
                                  "type": "string", "pattern": _NODE_URL,
                                  "description": "its advertised URL, http(s)://HOST:PORT (HOST:PORT is "
                                                 "accepted too)"}}})},
        "/api/cluster/nodes/{node_id}": {"delete": _op(
            "remove one coordinator (admin, leader; removing the leader hands leadership over first and "
            "answers 307 at the new leader)", params=[_path("node_id")])},
        "/api/cluster/health": {"get": _op("health metrics and alerts per node")},
        "/api/cluster/visualize": {"get": _html_op("HTML page with an SVG of the nodes and the leadership history")},
        "/api/cluster/node/{node_id}/disable": {"post": _op(
            "disable a coordinator: it hands leadership over and stops campaigning (admin)", params=[_path("node_id")])},
        "/api/cluster/node/{node_id}/enable": {"post": _op("enable a disabled coordinator again (admin)",
                                                           params=[_path("node_id")])},
        "/api/workers": {"get": _op("workers", params=[_query("status", {"type": "string",
                                                                          "enum": list(WORKER_STATUSES)})])},
        "/api/workers/register": {"post": register,
            # The path also matches /api/workers/{worker_id}: a worker may be named "register".
            "get": _op("the worker named 'register' (see /api/workers/{worker_id})")},
        "/api/workers/{worker_id}": {"get": _op("one worker", params=[worker_id])},
        "/api/workers/{worker_id}/enrolment": {"delete": _op(
            "forget a worker id's enrolment (admin): the id may enrol again with a new credential, and a "
            "worker connected under it is disconnected (close 4403)", params=[worker_id],
            response={"type": "object", "properties": {"worker_id": {"type": "string"},
                                                       "forgotten": {"type": "boolean"}}})},
        "/api/tasks": {
            "post": _op("submit one task or a list (one durable commit); 422 if no worker can run it", "201",
                        body={"oneOf": [_TASK_REF, _TASK_LIST, {
                            "type": "object", "required": ["tasks"], "not": {"required": ["type"]},
                            "properties": {"tasks": _TASK_LIST}}]},
                        params=[_query("allow_unschedulable", {"type": "boolean"})],
                        response={"oneOf": [_TASK_OUT, {"type": "array", "items": _TASK_OUT}]}),
            "get": _op("tasks; with X-Worker-Credential, a worker's long poll for its own assignments", params=[
                _query("status", {"type": "string", "enum": list(scheduler.ALL_STATES)}),
                _query("type", {"type": "string"}), _query("worker_id", {"type": "string"}),
                _query("batch_id", {"type": "string"}), *paging,
                _query("wait", {"type": "number", "minimum": 0, "maximum": POLL_WAIT_MAX_S},
                       "a worker's poll only: seconds to wait for news (default and cap: half the worker "
                       "timeout); 0 answers at once"),
                _credential(False)], description=(
                "Without X-Worker-Credential: the task list (filters status, type, worker_id, batch_id, "
                "limit, offset; role read). With it (role worker): that worker's poll, which takes only "
                "worker_id (its own; default: the credential's) and wait, and answers when an attempt it "
                "was not told about or a cancellation is there, else after wait seconds: `tasks` lists "
                "every attempt it holds now (an attempt it runs that is not listed was taken back), `new` "
                "the ids it was not told about, `cancel` the attempts to stop. A follower answers 307 "
                "not_leader."), response={"anyOf": [_TASK_PAGE, _POLL]}),
        },
        "/api/tasks/summary": {"get": _op("counts by state for a batch or ids", params=[
            _query("batch_id", {"type": "string"}), _query("ids", {"type": "string"})])},
        "/api/tasks/{task_id}": {"get": _op("one task with its result", params=[task_id], response=_TASK_OUT)},
        "/api/workers/{worker_id}/drain": {"post": _op("no new tasks for the worker; running ones finish",
                                                        params=[worker_id])},
        "/api/workers/{worker_id}/enable": {"post": _op("give a drained worker tasks again",
                                                         params=[worker_id])},
        "/api/workers/{worker_id}/resume": {"post": _op(
            "give a drained or quarantined worker tasks again (ends a quarantine)", params=[worker_id])},
        "/api/workers/{worker_id}/stop": {"post": _op(
            "the worker takes no new task, finishes what it runs and exits (409 if it is not connected)",
            params=[worker_id])},
        "/api/workers/{worker_id}/restart": {"post": _op(
            "the worker finishes what it runs and starts again (409 if it is not connected)", params=[worker_id])},
        "/api/scaling/recommendations": {"get": _op(
            "utilisation and scaling advice: the latest evaluation and the recent ones (leader)")},
        "/api/health/alerts": {"get": _op("current health alert levels of this node and the workers, recent alerts")},
        "/api/tasks/{task_id}/attempts": {"get": _op("recorded attempts: worker, status, times, error", params=[task_id])},
        "/api/tasks/{task_id}/cancel": {"post": _op("cancel (409 if already finished)", params=[task_id])},
        "/api/tasks/{task_id}/complete": {"post": _op(
            "worker: report a result; only the worker holding the attempt (its X-Worker-Credential)",
            params=[task_id, _credential(True)], body=outcome)},
        "/api/tasks/{task_id}/fail": {"post": _op(
            "worker: report a failure; only the worker holding the attempt (its X-Worker-Credential)",
            params=[task_id, _credential(True)], body=outcome)},
        "/api/health": {"post": _op(
            "worker: health metrics and the attempts it runs (the worker's X-Worker-Credential); for a worker "
            "without a websocket it is a sign of life, and an attempt listed in running for the first time "
            "is recorded as started", params=[_credential(True)], body={
                "type": "object", "required": ["worker_id"], "properties": {
                    "worker_id": {"type": "string"}, "metrics": {"type": ["object", "null"]},
                    "running": {"type": ["array", "null"], "items": {
                        "type": "object", "required": ["task_id", "attempt"], "properties": {
                            "task_id": {"type": "string"}, "attempt": {"type": "integer"},
                            "start_time": {"type": ["number", "null"]}}}}}})},
        "/api/register": {"post": source_register},
        "/api/capabilities": {"get": _op(
            "with X-Worker-Credential (role worker): the profile the coordinator matches tasks against for "
            "that worker; without it (role read): per hardware kind the workers and slots, and each worker's "
            "hardware", params=[_credential(False)], response={"anyOf": [{
                "type": "object", "required": ["worker_id", "hardware", "capabilities", "max_concurrent_tasks"]},
                {"type": "object", "required": ["hardware", "task_types", "workers"]}]})},
        "/api/results": {"get": _op("results", params=[
            _query("task_id", {"type": "string"}), _query("status", {"type": "string"}),
            _query("type", {"type": "string"}), _query("worker_id", {"type": "string"}), *paging])},
        "/api/results/aggregate": {"get": _op(
            "aggregates over results", description=(
                "Which levels and filters apply depends on result_type (a 400 names the accepted ones): "
                + "; ".join(f"{kind}: levels {', '.join(source['levels'])}, filters "
                            f"{', '.join([*source['filters'], 'since', 'until'])}"
                            for kind, source in queries.AGGREGATE_SOURCES.items())),
            params=[
                _query("result_type", {"type": "string", "enum": list(queries.RESULT_TYPES)},
                       "default benchmark"),
                _query("aggregation_level", {"type": "string", "enum": list(queries.AGGREGATION_LEVELS)},
                       "default: status for test results, model otherwise"),
                *[_query(name, {"type": "string"}, "equality filter") for name in _aggregate_filters()],
                _query("since", {"type": "string"}, "unix seconds or an ISO date"),
                _query("until", {"type": "string"}, "unix seconds or an ISO date")])},
        "/api/results/anomalies": {"get": _op("benchmark rows far from their group's mean (z-score)", params=[
            _query("metric", {"type": "string", "enum": list(queries.ANOMALY_METRICS)}, "default throughput"),
            _query("z_threshold", {"type": "number", "exclusiveMinimum": 0}, "default 2.5")])},
        "/api/results/{result_id}": {"get": _op("one result with per-test and per-benchmark rows",
                                                params=[result_id])},
        "/api/keys": {
            "get": _op("API keys (admin)"),
            "post": _op("create a key; the key is shown once (admin)", "201", body={
                "type": "object", "required": ["name", "role"], "properties": {
                    "name": _ID,
                    "role": {"type": "string", "enum": list(ROLES)}}}),
            "delete": _op("delete a key named in the body (admin)", body={
                "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}),
        },
        "/api/keys/{name}": {"delete": _op("delete a key (admin)", params=[name])},
        "/api/admin/backup": {"post": _op("write a consistent backup into a new directory on the coordinator's "
                                          "machine (admin)", "201", body={
            "type": "object", "required": ["to"], "properties": {"to": {
                "type": "string", "pattern": "^/", "description": "an absolute path of a new or empty directory"}}})},
        "/api/results/export": {"get": _export_op()},
    }
    run_id = _path("run_id")
    sha = {"name": "digest", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "description": "SHA-256 of the bundle"}
    paths.update({  # dtf pytest (coordinator/bundles.py) and result analytics (coordinator/results_api.py)
        "/api/bundles/{digest}": {
            "put": _bundle_put_op(sha),
            "get": _op("a suite bundle's bytes (worker or read)", params=[sha]),
        },
        "/api/pytest/runs/{run_id}": {"get": _op("the chunk tasks of a dtf pytest run", params=[
            run_id, _query("view", {"type": "string", "enum": ["full", "brief"]},
                           "brief: only task_id, status, worker_id and attempts of each chunk"),
            _query("task_ids", {"type": "string"}, "comma-separated: only these chunks")])},
        "/api/pytest/runs/{run_id}/progress": {"post": _op(
            "a running chunk's newly finished tests and steal answer (worker key and the X-Worker-Credential "
            "of the worker running the chunk, else 403 credential_refused); the reply carries a steal "
            "request", params=[run_id], body={
                "type": "object", "required": ["task_id", "attempt", "worker_id"], "properties": {
                    "task_id": {"type": "string"}, "attempt": {"type": "integer"}, "worker_id": {"type": "string"},
                    "events_json": {"type": "string", "description": "a JSON array of event objects, as a string"},
                    "stolen": {"type": "object", "required": ["nodeids"], "properties": {
                        "nodeids": {"type": "array", "items": {"type": "string"}},
                        "seq": {"type": "integer", "minimum": 0, "maximum": 999}, "exclude": {"type": "boolean"}}},
                    "taken": {"type": "boolean"}}})},
        "/api/pytest/runs/{run_id}/events": {"get": _op("a run's live events after a sequence number (long poll)", params=[
            run_id, _query("after", {"type": "integer", "minimum": 0}),
            _query("wait_ms", {"type": "integer", "minimum": 0, "maximum": 10_000})])},
        "/api/pytest/runs/{run_id}/steal": {"post": _op(
            "ask a running chunk to give up its tail (work stealing)", "202", params=[run_id], body={
                "type": "object", "required": ["task_id"], "properties": {
                    "task_id": {"type": "string"}, "for_worker": {"type": ["string", "null"]},
                    "group": {"type": "string", "enum": ["file", "class", "test"]}}})},
        "/api/pytest/reports": {"get": _op("serialized pytest reports of finished chunks", params=[
            _required_query("task_ids", {"type": "string", "minLength": 1}, "comma-separated task ids")])},
        "/api/pytest/history": {"get": _op("per-test mean durations of a suite's latest collection", params=[
            _required_query("suite", {"type": "string", "minLength": 1}, "the key dtf pytest computes")])},
        "/api/results/regressions": {"get": _op("benchmark regressions per hardware class (Welch t-test)", params=[
            _query("metric", {"type": "string", "enum": list(REGRESSION_METRICS)}, "default throughput"),
            _query("window", {"type": "integer", "minimum": 2, "maximum": 10_000}),
            _query("baseline", {"type": "integer", "minimum": 2, "maximum": 10_000}),
            _query("min_change", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
            _query("alpha", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})])},
        "/api/results/compare": {"get": _op("two runs or time ranges side by side", params=[
            _required_query(side, {"type": "string", "minLength": 1},
                            "batch:ID, run:ID, SINCE..UNTIL, or a bare batch or run id") for side in ("a", "b")])},
        "/api/results/flaky": {"get": _op("tests that both passed and failed", params=[
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000})])},
        "/api/results/tests": {"get": _op("per-test rows of a set of test tasks (give task_ids, run_id or "
                                          "batch_id)", params=[
            _query("task_ids", {"type": "string"}), _query("run_id", {"type": "string"}),
            _query("batch_id", {"type": "string"})])},
        "/api/report": {"get": _op("everything dtf report draws")},
    })
    paths.update(_orchestration_paths(task_id, outcome, paging))
    return {
        "openapi": "3.1.0",
        "info": {"title": "DTF API", "version": version, "description": (
            f"Request bodies and websocket frames are strict JSON (RFC 8259): no NaN or Infinity, strings of "
            f"valid Unicode (no lone surrogates), nested at most {MAX_JSON_DEPTH} levels; anything else is a "
            f"400 naming the field.")},
        "components": {"schemas": {"TaskIn": _TASK_IN}, "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"apiKey": []}, {"bearer": []}],
        "paths": paths,
    }
