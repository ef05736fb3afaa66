"""The OpenAPI 3 description of the HTTP API (``GET /openapi.json``).

Written out by hand next to the routes so clients and fuzzers (schemathesis) see the real request
shapes; ``tests/integration`` checks that every route of the app is described here.
"""

from __future__ import annotations

from typing import Any

from dtf_app.coordinator import scheduler
from dtf_app.security.keys import ROLES

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}

_REQUIREMENTS = {"type": "object", "additionalProperties": False, "properties": {
    "hardware": {"type": "array", "items": {"type": "string", "enum": list(scheduler.HARDWARE_KINDS)}},
    "min_memory_gb": {"type": "number", "minimum": 0}, "min_gpu_memory_gb": {"type": "number", "minimum": 0},
    "min_cuda_compute": {"type": "number", "minimum": 0}, "min_cpu_cores": {"type": "integer", "minimum": 1},
    "tags": {"type": "array", "items": {"type": "string"}},
    "os": {"type": "string", "enum": ["linux", "windows", "macos"]},
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
        "batch_sizes": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 1, "maximum": 65536}},
        "precision": {"oneOf": [{"type": "string", "enum": list(scheduler.PRECISIONS)},
                                {"type": "array", "minItems": 1,
                                 "items": {"type": "string", "enum": list(scheduler.PRECISIONS)}}]},
        "iterations": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "warmup": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
        "sequence_length": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "functions": {"type": "array", "items": {"type": "string", "enum": list(scheduler.BENCH_FUNCTIONS)}},
        "working_dir": {"type": "string"}, "env": _ENV}},
    "custom": {"type": "object", "description": "exactly one of command, callable, name", "oneOf": [
        {"required": ["command"], "properties": {"command": {**_STR_LIST, "minItems": 1}}},
        {"required": ["callable"], "properties": {"callable": {"type": "string", "pattern": "^[^:]+:[^:]+$"}}},
        {"required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}},
    ], "properties": {"args": {"type": "array"}, "kwargs": {"type": "object"}, "working_dir": {"type": "string"},
                      "env": _ENV}},
}


def _task_in(kind: str) -> dict[str, Any]:
    return {"type": "object", "required": ["type", "config"], "additionalProperties": False, "properties": {
        "type": {"type": "string", "const": kind},
        "priority": {"type": "integer", "minimum": scheduler.PRIORITY_RANGE[0],
                     "maximum": scheduler.PRIORITY_RANGE[1], "description": "higher runs first"},
        "config": _CONFIGS[kind],
        "requirements": _REQUIREMENTS,
        "dependencies": {"type": "array", "items": {"type": "string"}},
        "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": scheduler.MAX_TIMEOUT_SECONDS},
        "max_retries": {"type": "integer", "minimum": 0, "maximum": 100},
        "name": {"type": "string", "maxLength": 500},
        "task_id": {"type": ["string", "null"], "pattern": f"^[A-Za-z0-9._:-]{{1,{scheduler.MAX_TASK_ID_LEN}}}$",
                    "description": "optional; generated when absent or null"},
        "metadata": {"type": "object"},
    }}


_TASK_IN = {"oneOf": [_task_in(kind) for kind in scheduler.TASK_TYPES]}

_TASK_OUT = {"type": "object", "required": ["task_id", "status", "type"], "properties": {
    "task_id": {"type": "string"}, "status": {"type": "string", "enum": list(scheduler.ALL_STATES)},
    "type": {"type": "string"}, "attempts": {"type": "integer"}, "worker_id": {"type": ["string", "null"]},
    "result": {"type": ["object", "null"]}, "batch_id": {"type": "string"},
}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: str = "200", *, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, response: dict[str, Any] | None = None,
        open_: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        ok: {"description": "ok", **_json(response or {"type": "object"})},
        "400": {"description": "bad input", **_json(_ERROR)},
        "401": {"description": "no or bad API key", **_json(_ERROR)},
        "403": {"description": "role not allowed", **_json(_ERROR)},
        "404": {"description": "not found", **_json(_ERROR)},
        "409": {"description": "conflict (exists, already finished)", **_json(_ERROR)},
        "413": {"description": "request too large", **_json(_ERROR)},
        "422": {"description": "valid but cannot be done (no worker can run the task)", **_json(_ERROR)},
    }}
    if open_:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


def _metrics_op() -> dict[str, Any]:
    op = _op("Prometheus text exposition")
    op["responses"]["200"] = {"description": "ok", "content": {"text/plain; version=0.0.4": {
        "schema": {"type": "string"}}}}
    return op


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def build_spec(version: str) -> dict[str, Any]:
    """The whole document."""
    task_id, worker_id, result_id, name = _path("task_id"), _path("worker_id"), _path("result_id"), _path("name")
    outcome = {"type": "object", "properties": {"attempt": {"type": "integer"}, "result": {"type": "object"},
                                                 "error": {"type": "string"}, "retry": {"type": "boolean"},
                                                 "start_time": {"type": ["number", "null"]},
                                                 "end_time": {"type": ["number", "null"]}}}
    paging = [_query("limit", {"type": "integer", "minimum": 1, "maximum": 100_000}),
              _query("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000})]
    paths: dict[str, Any] = {
        "/status": {"get": _op("liveness, no key needed", open_=True)},
        "/api/status": {"get": _op("node, leader, task and worker counts")},
        "/api/dashboard": {"get": _op("status, workers and recent tasks in one call")},
        "/metrics": {"get": _metrics_op()},
        "/openapi.json": {"get": _op("this document")},
        "/api/cluster/status": {"get": _op("cluster status")},
        "/api/cluster/leader": {"get": _op("leader id, term and URL")},
        "/api/cluster/nodes": {"get": _op("coordinator nodes")},
        "/api/cluster/health": {"get": _op("health metrics and alerts per node")},
        "/api/workers": {"get": _op("workers", params=[_query("status", {"type": "string",
                                                                          "enum": ["online", "offline"]})])},
        "/api/workers/register": {"post": _op("register a worker over HTTP (role worker)", "201", body={
            "type": "object", "required": ["worker_id"], "properties": {
                "worker_id": {"type": "string", "minLength": 1}, "hostname": {"type": "string"},
                "capabilities": {"type": "object"}, "tags": {"type": "array", "items": {"type": "string"}},
                "max_concurrent_tasks": {"type": "integer", "minimum": 1, "maximum": 10_000}}})},
        "/api/workers/{worker_id}": {"get": _op("one worker", params=[worker_id])},
        "/api/tasks": {
            "post": _op("submit one task or a list (one durable commit); 422 if no worker can run it", "201",
                        body={"oneOf": [_TASK_IN, {"type": "array", "items": _TASK_IN, "minItems": 1}]},
                        params=[_query("allow_unschedulable", {"type": "boolean"})],
                        response={"oneOf": [_TASK_OUT, {"type": "array", "items": _TASK_OUT}]}),
            "get": _op("tasks", params=[
                _query("status", {"type": "string", "enum": list(scheduler.ALL_STATES)}),
                _query("type", {"type": "string"}), _query("worker_id", {"type": "string"}),
                _query("batch_id", {"type": "string"}), *paging]),
        },
        "/api/tasks/summary": {"get": _op("counts by state for a batch or ids", params=[
            _query("batch_id", {"type": "string"}), _query("ids", {"type": "string"})])},
        "/api/tasks/{task_id}": {"get": _op("one task with its result", params=[task_id], response=_TASK_OUT)},
        "/api/tasks/{task_id}/cancel": {"post": _op("cancel (409 if already finished)", params=[task_id])},
        "/api/tasks/{task_id}/complete": {"post": _op("worker: report a result", params=[task_id], body=outcome)},
        "/api/tasks/{task_id}/fail": {"post": _op("worker: report a failure", params=[task_id], body=outcome)},
        "/api/health": {"post": _op("worker: health metrics", body={
            "type": "object", "required": ["worker_id"], "properties": {
                "worker_id": {"type": "string"}, "metrics": {"type": "object"}}})},
        "/api/results": {"get": _op("results", params=[
            _query("task_id", {"type": "string"}), _query("status", {"type": "string"}),
            _query("type", {"type": "string"}), _query("worker_id", {"type": "string"}), *paging])},
        "/api/results/aggregate": {"get": _op("aggregates over results", params=[
            _query("result_type", {"type": "string", "enum": ["test", "benchmark", "task", "performance"]}),
            _query("aggregation_level", {"type": "string", "enum": [
                "model", "batch_size", "precision", "backend", "worker", "hardware", "test", "status", "day"]})])},
        "/api/results/{result_id}": {"get": _op("one result with per-test and per-benchmark rows",
                                                params=[result_id])},
        "/api/keys": {
            "get": _op("API keys (admin)"),
            "post": _op("create a key; the key is shown once (admin)", "201", body={
                "type": "object", "required": ["name", "role"], "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,100}$"},
                    "role": {"type": "string", "enum": list(ROLES)}}}),
            "delete": _op("delete a key named in the body (admin)", body={
                "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}),
        },
        "/api/keys/{name}": {"delete": _op("delete a key (admin)", params=[name])},
    }
    digest, run_id = _path("digest"), _path("run_id")
    paths.update({  # dtf pytest (coordinator/bundles.py) and result analytics (coordinator/results_api.py)
        "/api/bundles/{digest}": {
            "put": _op("upload a suite bundle (tar.gz named by its SHA-256), fsynced before the 201", "201",
                       params=[digest]),
            "get": _op("a suite bundle's bytes (worker or read)", params=[digest]),
        },
        "/api/pytest/runs/{run_id}": {"get": _op("the chunk tasks of a dtf pytest run", params=[run_id])},
        "/api/pytest/reports": {"get": _op("serialized pytest reports of finished chunks", params=[
            _query("task_ids", {"type": "string"})])},
        "/api/pytest/history": {"get": _op("per-test mean durations of a suite's latest collection", params=[
            _query("suite", {"type": "string"})])},
        "/api/results/regressions": {"get": _op("benchmark regressions per hardware class (Welch t-test)", params=[
            _query("metric", {"type": "string"}), _query("window", {"type": "integer", "minimum": 2}),
            _query("baseline", {"type": "integer", "minimum": 2}), _query("min_change", {"type": "number"}),
            _query("alpha", {"type": "number"})])},
        "/api/results/compare": {"get": _op("two runs or time ranges side by side", params=[
            _query("a", {"type": "string"}), _query("b", {"type": "string"})])},
        "/api/results/flaky": {"get": _op("tests that both passed and failed", params=[
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000})])},
        "/api/results/tests": {"get": _op("per-test rows of a set of test tasks", params=[
            _query("task_ids", {"type": "string"}), _query("run_id", {"type": "string"}),
            _query("batch_id", {"type": "string"})])},
        "/api/report": {"get": _op("everything dtf report draws")},
    })
    return {
        "openapi": "3.1.0",
        "info": {"title": "DTF API", "version": version},
        "components": {"securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"apiKey": []}, {"bearer": []}],
        "paths": paths,
    }
