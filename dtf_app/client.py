"""The API client used by the CLI (and later the TUI), plus the submission helpers around it.

``Client`` wraps a synchronous ``httpx.Client``: a list of coordinator URLs (the next one is tried on a
connection error, a ``leader_url`` hint in a 307/421 answer is followed), the ``X-API-Key`` header, and
errors mapped to the CLI's exit codes: 3 cannot reach the cluster, 4 auth refused, 2 bad request. httpx is
imported when a Client is built, never at module import, so ``dtf --version`` stays instant.

The submission helpers read task files (object, list or ``{"tasks": [...]}``), generate benchmark tasks
per model family, and wait for a batch with live progress.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtf_app import jsonsafe
from dtf_app.protocol import BATCH_SIZE_RANGE, BENCH_PRECISIONS, TASK_TYPES, TERMINAL_STATES

DEFAULT_TIMEOUT = 30.0
# Which roles may call what, for the 403 message: the user needs to know which key to create.
_ROLE_HINT = {
    "read": "viewer, operator or admin",
    "submit": "operator or admin",
    "cancel": "operator or admin",
    "admin": "admin",
}
MODEL_FAMILIES = ("bert", "t5", "llama", "vit", "clip", "clap", "whisper", "wav2vec2", "llava", "xclip",
                  "qwen2", "detr")
PRECISIONS = BENCH_PRECISIONS


class ClientError(Exception):
    """A failed API call: ``exit_code`` is 3 (unreachable), 4 (auth refused) or 2 (bad request)."""

    def __init__(self, message: str, exit_code: int = 2, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status
        self.code = code  # the API's error code, when it sent one


@dataclass
class Target:
    """Where the client connects and with which key, plus where those came from (for messages)."""

    urls: list[str]
    api_key: str | None
    key_source: str
    url_source: str


def resolve_target(args: Any) -> Target:
    """Coordinator URLs and API key from flags > ``DTF_*`` env > config file > ``<data_dir>`` files.

    ``--data-dir D`` (or ``DTF_DATA_DIR``, or ``./dtf-data`` when it exists) supplies the key from
    ``D/admin.key`` and the URL from ``D/node.json`` when neither was given another way.
    Raises ConfigError for bad settings.
    """
    from dtf_app.config import load_settings_with_sources

    settings, sources = load_settings_with_sources(args)
    data_dir = Path(settings.data_dir)
    urls, url_source = settings.coordinator, sources.get("coordinator", "default")
    key, key_source = settings.api_key, sources.get("api_key", "none")
    if "coordinator" not in sources:
        node_file = data_dir / "node.json"
        try:
            node = json.loads(node_file.read_text())
            if isinstance(node, dict) and isinstance(node.get("url"), str):
                urls, url_source = [node["url"]], str(node_file)
        except (OSError, ValueError):
            pass  # no local node recorded: keep the default URL
    if "coordinator" not in sources and url_source == "default":
        from dtf_app import localreg

        # No URL anywhere: if exactly one coordinator runs on this machine, that is the one meant.
        live = localreg.live_entries()
        if len(live) == 1 and live[0]["url"] not in urls:
            urls, url_source = [live[0]["url"]], "the local coordinator registry"
    if key is None:
        key_file = data_dir / "admin.key"
        try:
            key, key_source = key_file.read_text().strip() or None, str(key_file)
        except OSError:
            pass
    if key is None and urls:
        from dtf_app import localreg

        found = localreg.local_key(urls[0], "admin.key")
        if found is not None:
            key, key_source = found
    return Target(urls=list(urls), api_key=key, key_source=key_source, url_source=url_source)


class Client:
    """Synchronous client for the DTF HTTP API; one method per endpoint the CLI uses."""

    def __init__(self, urls: str | Sequence[str], api_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, transport: Any = None, origin: str | None = None) -> None:
        import httpx

        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ClientError("no coordinator URL given (use --coordinator URL or DTF_COORDINATOR)", 2)
        self.api_key = api_key
        # Where the URL came from (e.g. a data dir's node.json), so "cannot reach" can say which setting to fix.
        self.origin = origin
        headers = {"X-API-Key": api_key} if api_key else {}
        self._httpx = httpx
        # A short connect timeout: an unreachable URL should fail over quickly to the next one.
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
                                  transport=transport, follow_redirects=False)
        self._current = 0

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The URL currently in use."""
        return self.urls[self._current]

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None,
                needs: str = "read", raw: bool = False) -> Any:
        """One API call with fail-over; returns the decoded JSON body (``raw``: the bytes). Raises ClientError."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        errors: list[str] = []
        order = self.urls[self._current:] + self.urls[: self._current]
        redirects = 0
        waited = 0.0
        i = 0
        while i < len(order):
            base = order[i]
            try:
                # Strict JSON out (no NaN, valid Unicode): the coordinator refuses anything else.
                response = self._http.request(method, base + path, params=params,
                                              content=jsonsafe.dumps(body).encode() if body is not None else None,
                                              headers={"Content-Type": "application/json"} if body is not None else None)
            except (self._httpx.ConnectError, self._httpx.ConnectTimeout, self._httpx.RemoteProtocolError) as exc:
                errors.append(f"{base}: {_reason(exc)}")
                i += 1
                continue
            except self._httpx.TimeoutException:
                raise ClientError(f"{base} did not answer {method} {path} within the timeout; the coordinator "
                                  "may be overloaded or stuck (check its log)", 3) from None
            except self._httpx.HTTPError as exc:
                errors.append(f"{base}: {_reason(exc)}")
                i += 1
                continue
            if response.status_code == 503 and _error_code(response) in _RETRY_CODES and waited < NO_LEADER_WAIT_S:
                # An election is under way (or the node is still starting): it was refused before any
                # effect, so asking again shortly is safe for writes too.
                time.sleep(0.25)
                waited += 0.25
                continue
            leader = _leader_hint(response)
            if leader and redirects < 3:
                # A follower points at the leader: talk to it from now on.
                redirects += 1
                if leader not in self.urls:
                    self.urls.append(leader)
                order.insert(i + 1, leader)
                i += 1
                continue
            self._current = self.urls.index(base) if base in self.urls else 0
            if raw and response.status_code < 400:
                return response.content
            return self._decode(response, method, path, needs)
        tried = "; ".join(errors)
        if self.origin:
            tried += f"; the URL came from {self.origin}"
        raise ClientError(f"cannot reach the DTF coordinator ({tried}). Is it running? Start a local cluster "
                          "with `dtf up --workers 2 --headless`, or point --coordinator / DTF_COORDINATOR at "
                          "a running one", 3)

    def _decode(self, response: Any, method: str, path: str, needs: str) -> Any:
        status = response.status_code
        try:
            data = response.json() if response.content else None
        except ValueError:
            data = None
        if status < 400:
            return data
        message = _error_message(data) or (response.text[:200].strip() or response.reason_phrase)
        if status == 401:
            how = ("no API key was given: use --api-key K, DTF_API_KEY, or --data-dir of a local cluster "
                   "(its admin.key)") if not self.api_key else "the API key was refused (unknown or deleted key)"
            raise ClientError(f"{method} {path}: unauthorized: {how}; this call needs a key with role "
                              f"{_ROLE_HINT.get(needs, needs)}", 4, status)
        if status == 403:
            hint = "" if "role" in message else f"; this call needs a key with role {_ROLE_HINT.get(needs, needs)}"
            raise ClientError(f"{method} {path}: forbidden: {message}{hint}", 4, status)
        if status == 503 and isinstance(data, dict) and (data.get("error") or {}).get("code") == "starting":
            raise ClientError(f"{method} {path}: {message}", 3, status)
        if status >= 500:
            raise ClientError(f"{method} {path}: the coordinator failed ({status}): {message}", 3, status)
        raise ClientError(f"{message}" if message else f"{method} {path}: HTTP {status}", 2, status,
                          _error_code(response))

    # ------------------------------------------------------------------ endpoints
    def open_status(self) -> dict:
        """GET /status (no key needed)."""
        return self.request("GET", "/status")

    def status(self) -> dict:
        """GET /api/status: task and worker counts."""
        return self.request("GET", "/api/status")

    def workers(self, status: str | None = None) -> list[dict]:
        """GET /api/workers."""
        return self.request("GET", "/api/workers", params={"status": status})["workers"]

    def worker(self, worker_id: str) -> dict:
        """GET /api/workers/{id}."""
        return self.request("GET", f"/api/workers/{worker_id}")

    def control_worker(self, worker_id: str, action: str) -> dict:
        """POST /api/workers/{id}/drain|resume|stop|restart: the worker view after the command committed."""
        return self.request("POST", f"/api/workers/{worker_id}/{action}")

    def forget_worker(self, worker_id: str) -> dict:
        """DELETE /api/workers/{id}/enrolment (admin): the id may enrol again (a rebuilt machine)."""
        return self.request("DELETE", f"/api/workers/{worker_id}/enrolment", needs="admin")

    def submit(self, tasks: dict | list[dict], *, allow_unschedulable: bool = False) -> Any:
        """POST /api/tasks: one task document (returns one) or a list (returns a list)."""
        params = {"allow_unschedulable": "true"} if allow_unschedulable else None
        return self.request("POST", "/api/tasks", params=params, body=tasks, needs="submit")

    def tasks(self, *, status: str | None = None, type: str | None = None, worker_id: str | None = None,
              batch_id: str | None = None, limit: int | None = None, offset: int | None = None) -> dict:
        """GET /api/tasks: ``{"tasks": [...], "total": n}``."""
        return self.request("GET", "/api/tasks", params={"status": status, "type": type, "worker_id": worker_id,
                                                         "batch_id": batch_id, "limit": limit, "offset": offset})

    def task_summary(self, batch_id: str | None = None, ids: Sequence[str] | None = None) -> dict:
        """GET /api/tasks/summary: ``{"counts", "total", "done"}`` for a batch or a set of ids."""
        params = {"batch_id": batch_id, "ids": ",".join(ids) if ids else None}
        return self.request("GET", "/api/tasks/summary", params=params)

    def task(self, task_id: str) -> dict:
        """GET /api/tasks/{id}."""
        return self.request("GET", f"/api/tasks/{task_id}")

    def cancel(self, task_id: str) -> dict:
        """POST /api/tasks/{id}/cancel."""
        return self.request("POST", f"/api/tasks/{task_id}/cancel", needs="cancel")

    def results(self, *, task_id: str | None = None, status: str | None = None, limit: int | None = None) -> list:
        """GET /api/results."""
        return self.request("GET", "/api/results",
                            params={"task_id": task_id, "status": status, "limit": limit})["results"]

    def result(self, result_id: str) -> dict:
        """GET /api/results/{id}."""
        return self.request("GET", f"/api/results/{result_id}")

    def aggregate(self, result_type: str = "benchmark", level: str = "model", **filters: Any) -> dict:
        """GET /api/results/aggregate."""
        return self.request("GET", "/api/results/aggregate",
                            params={"result_type": result_type, "aggregation_level": level, **filters})

    def keys(self) -> list[dict]:
        """GET /api/keys (admin)."""
        return self.request("GET", "/api/keys", needs="admin")["keys"]

    def create_key(self, name: str, role: str) -> dict:
        """POST /api/keys (admin): ``{"name", "role", "key"}``, the key shown only this once."""
        return self.request("POST", "/api/keys", body={"name": name, "role": role}, needs="admin")

    def delete_key(self, name: str) -> dict:
        """DELETE /api/keys/{name} (admin)."""
        return self.request("DELETE", f"/api/keys/{name}", needs="admin")

    def backup(self, to: str) -> dict:
        """POST /api/admin/backup (admin): a consistent backup written by the coordinator into ``to``."""
        return self.request("POST", "/api/admin/backup", body={"to": to}, needs="admin")

    def export_results(self, table: str, fmt: str) -> bytes:
        """GET /api/results/export: one table as Parquet or CSV bytes."""
        return self.request("GET", "/api/results/export", params={"table": table, "format": fmt}, raw=True)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "[Errno 111]" in text:
        return "connection refused"
    return text


# 503 answers refused before taking any effect: retried for up to NO_LEADER_WAIT_S.
_RETRY_CODES = frozenset({"no_leader", "starting"})
NO_LEADER_WAIT_S = 15.0


def _error_code(response: Any) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _leader_hint(response: Any) -> str | None:
    if response.status_code not in (307, 421):
        return None
    try:
        data = response.json()
    except ValueError:
        data = None
    hint = None
    if isinstance(data, dict):
        hint = data.get("leader_url") or (data.get("error") or {}).get("leader_url")
    hint = hint or response.headers.get("location")
    if isinstance(hint, str) and hint.startswith(("http://", "https://")):
        # A Location header may carry the full path; keep only scheme://host:port.
        scheme, _, rest = hint.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"
    return None


def _error_message(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message") or data["error"].get("code") or "")
    return None


# ---------------------------------------------------------------------- task documents
class TaskFileError(Exception):
    """A task file is unreadable or malformed; the message names the file and, when known, line/column."""


def load_task_file(path: str | Path) -> list[dict]:
    """Read a task file: a task object, a list of them, or ``{"tasks": [...]}``.

    Relative ``test_file`` / ``working_dir`` paths are made absolute against the file's directory, since
    a worker runs in another directory (and on the same machine only absolute paths mean the same).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError(f"task file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"cannot read task file {path}: {exc}") from None
    try:
        data = jsonsafe.loads(text, root="tasks", what="the file")
    except jsonsafe.JsonInputError as exc:
        raise TaskFileError(f"task file {path}: {exc.message}") from None
    if isinstance(data, dict) and "tasks" in data and "type" not in data:
        data = data["tasks"]
    items = [data] if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise TaskFileError(f"task file {path}: expected a task object, a non-empty list of task objects, "
                            f"or {{\"tasks\": [...]}}; got {type(data).__name__ if data != [] else 'an empty list'}")
    base = file.resolve().parent
    tasks = []
    for i, item in enumerate(items):
        where = f"task file {path}, task {i}" if len(items) > 1 else f"task file {path}"
        tasks.append(check_task(item, where, base_dir=base))
    return tasks


def check_task(task: Any, where: str, *, base_dir: Path | None = None) -> dict:
    """Light client-side checks (the coordinator validates fully) and path resolution."""
    if not isinstance(task, dict):
        raise TaskFileError(f"{where}: a task must be a JSON object, got {type(task).__name__}")
    kind = task.get("type")
    if "callable" in task and kind is None:
        # Shorthand: {"callable": "module:function"} is a custom in-process task.
        task = {"type": "custom", "config": {k: task[k] for k in ("callable", "args", "kwargs") if k in task},
                **{k: v for k, v in task.items() if k not in ("callable", "args", "kwargs")}}
        kind = "custom"
    if kind not in TASK_TYPES:
        raise TaskFileError(f"{where}: \"type\" must be one of {', '.join(TASK_TYPES)}, got {kind!r}")
    if "parameters" in task and "config" not in task:
        # The source design's name for config; the coordinator accepts it too, one name is enough.
        task = {("config" if k == "parameters" else k): v for k, v in task.items()}
    config = task.get("config", {})
    if not isinstance(config, dict):
        raise TaskFileError(f"{where}: \"config\" must be an object, got {type(config).__name__}")
    task = dict(task, config=dict(config))
    if base_dir is not None and kind == "test":
        task["config"] = _absolute_test_paths(task["config"], base_dir)
    return task


def _absolute_test_paths(config: dict, base: Path) -> dict:
    def fix(spec: Any) -> Any:
        if not isinstance(spec, str) or not spec:
            return spec
        file_part, sep, node = spec.partition("::")
        if os.path.isabs(file_part):
            return spec
        return str((base / file_part).resolve()) + sep + node

    if isinstance(config.get("test_file"), list):
        config["test_file"] = [fix(s) for s in config["test_file"]]
    elif "test_file" in config:
        config["test_file"] = fix(config["test_file"])
    if isinstance(config.get("working_dir"), str) and not os.path.isabs(config["working_dir"]):
        config["working_dir"] = str((base / config["working_dir"]).resolve())
    return config


def split_list(text: str, what: str) -> list[str]:
    """``"1,2,4"`` -> ``["1", "2", "4"]``; empty items are an error naming ``what``."""
    items = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise TaskFileError(f"{what}: expected a comma-separated list like 1,2,4, got {text!r}")
    return items


def generate_benchmark_tasks(model: str, batch_sizes: str | Sequence[int], precisions: str | Sequence[str], *,
                             iterations: int | None = None, priority: int | None = None,
                             hardware: Sequence[str] | None = None) -> list[dict]:
    """One benchmark task per (model x precision), each over all batch sizes, from the benchmark template
    (dtf_app/generate.py: family detection, memory estimate in the requirements, priority and dependency
    ordering)."""
    from dtf_app import generate

    models = split_list(model, "--model") if isinstance(model, str) else list(model)
    for name in models:
        try:
            generate.detect_family(name)
        except generate.GenerationError as exc:
            raise TaskFileError(str(exc)) from None
    sizes_text = split_list(batch_sizes, "--batch-sizes") if isinstance(batch_sizes, str) else batch_sizes
    sizes = []
    for size in sizes_text:
        try:
            value = int(size)
        except (TypeError, ValueError):
            raise TaskFileError(f"--batch-sizes: {size!r} is not an integer") from None
        if not BATCH_SIZE_RANGE[0] <= value <= BATCH_SIZE_RANGE[1]:
            raise TaskFileError(f"--batch-sizes: batch sizes must be at least {BATCH_SIZE_RANGE[0]} and at most "
                                f"{BATCH_SIZE_RANGE[1]}, got {value}")
        sizes.append(value)
    precs = split_list(precisions, "--precision") if isinstance(precisions, str) else list(precisions)
    for prec in precs:
        if prec not in PRECISIONS:
            raise TaskFileError(f"--precision {prec!r} is not supported; choose from {', '.join(PRECISIONS)}")
    try:
        return generate.benchmark_tasks(models, sizes, precs, iterations=iterations, priority=priority,
                                        hardware=hardware)
    except generate.GenerationError as exc:
        raise TaskFileError(str(exc)) from None


def generate_test_tasks(model: str, output_dir: str, *, priority: int | None = None,
                        hardware: Sequence[str] | None = None) -> list[dict]:
    """``--generate test``: one pytest file per model family written to ``output_dir``, one test task each."""
    from dtf_app import generate

    models = split_list(model, "--model")
    try:
        return generate.test_tasks(models, output_dir, priority=priority, hardware=hardware)
    except generate.GenerationError as exc:
        raise TaskFileError(str(exc)) from None


# ---------------------------------------------------------------------- waiting
def wait_for_tasks(client: Client, created: Sequence[Mapping[str, Any]], *, interval: float = 0.5,
                   on_counts: Callable[[dict, int], None] | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """Poll the batch summary until every created task is terminal; returns the final task documents."""
    batch_ids = {t.get("batch_id") for t in created}
    ids = [str(t["task_id"]) for t in created]
    batch_id = batch_ids.pop() if len(batch_ids) == 1 and None not in batch_ids else None
    while True:
        summary = client.task_summary(batch_id=batch_id, ids=None if batch_id else ids)
        counts, total = summary.get("counts") or {}, int(summary.get("total") or len(ids))
        if on_counts:
            on_counts(counts, total)
        if summary.get("done"):
            break
        sleep(interval)
    if batch_id:
        listed = client.tasks(batch_id=batch_id, limit=max(len(ids), 1))["tasks"]
        by_id = {t["task_id"]: t for t in listed}
        if all(i in by_id for i in ids):
            return [by_id[i] for i in ids]
    return [client.task(i) for i in ids]


def batch_failed(tasks: Sequence[Mapping[str, Any]]) -> bool:
    """True when any task failed/was cancelled or any result status is ``failure``."""
    for task in tasks:
        if task.get("status") in TERMINAL_STATES - {"completed"} or task.get("status") not in TERMINAL_STATES:
            return True
        result = task.get("result")
        if isinstance(result, Mapping) and result.get("status") == "failure":
            return True
    return False
