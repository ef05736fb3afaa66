"""The ``custom`` runner: a command, an in-process callable, or a named task from a plugin.

Config (one of):

- ``command``: an argv list, run in ``working_dir`` with ``env`` in its own process group. A string is
  refused (TaskError): splitting it would guess at shell quoting; write ``["sh", "-c", "..."]`` to use
  a shell. Exit code 0 -> status success, anything else -> failure (the task still *completed*).
- ``callable``: ``"module:function"`` with ``args`` (list) and ``kwargs`` (object), run inside the worker
  process. Coroutine functions are awaited; plain functions are called directly (cheapest, but they
  block the worker while they run) or, with ``"thread": true``, in a worker thread. The return value
  must be JSON-serialisable (else its repr is stored). An exception -> status failure with traceback.
- ``name`` + ``args`` (list or object) [+ ``kwargs``]: a task registered in the ``dtf.custom_tasks``
  entry-point group (built-ins: noop, sleep, cpu_burn, echo, fail in dtf_plugins.runners.builtin_tasks).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import time
import traceback

import trio

from dtf_app.plugins import CUSTOM_TASKS_GROUP, load_plugin
from dtf_app.worker.runners import (
    RunContext,
    TaskError,
    build_env,
    environment_info,
    resolve_working_dir,
    run_process,
)


class CustomRunner:
    """Runs ``custom`` tasks (see the module docstring for the config keys)."""

    def __init__(self) -> None:
        self._callables: dict[str, object] = {}

    async def run(self, task: dict, ctx: RunContext) -> dict:
        config = task.get("config") or {}
        if not isinstance(config, dict):
            raise TaskError(f"custom task config must be an object, got {type(config).__name__}")
        chosen = [key for key in ("command", "callable", "name") if config.get(key) is not None]
        if len(chosen) != 1:
            raise TaskError("custom task config needs exactly one of 'command' (argv list), 'callable' "
                            f"('module:function') or 'name' (a registered custom task); got {chosen or 'none'}")
        if chosen[0] == "command":
            return await self._run_command(config, ctx)
        if chosen[0] == "callable":
            fn = self._resolve_callable(config["callable"])
            args, kwargs = _arguments(config.get("args"), config.get("kwargs"))
            return await _call(fn, args, kwargs, bool(config.get("thread")), {"callable": config["callable"]})
        fn = self._resolve_named(config["name"])
        args, kwargs = _arguments(config.get("args"), config.get("kwargs"))
        return await _call(fn, args, kwargs, bool(config.get("thread")), {"name": config["name"]})

    async def _run_command(self, config: dict, ctx: RunContext) -> dict:
        command = config["command"]
        if isinstance(command, str):
            raise TaskError(f"config.command must be an argv list such as [\"python\", \"-V\"], not a string "
                            f"({command!r}); for shell syntax use [\"sh\", \"-c\", {command!r}]")
        if not isinstance(command, list) or not command or not all(isinstance(a, str | int | float) for a in command):
            raise TaskError(f"config.command must be a non-empty list of strings, got {command!r}")
        argv = [str(a) for a in command]
        cwd = resolve_working_dir(config.get("working_dir"))
        env = build_env(ctx, config.get("env"))
        started = time.perf_counter()
        proc = await run_process(argv, ctx, cwd=cwd, env=env)
        elapsed = time.perf_counter() - started
        return {
            "status": "success" if proc.returncode == 0 else "failure",
            "metrics": {"return_code": proc.returncode, "duration": elapsed},
            "execution_time": elapsed,
            "environment": environment_info(),
            "raw_data": {"command": argv, "working_dir": str(cwd), "return_code": proc.returncode},
            "output": proc.output,
        }

    def _resolve_callable(self, spec: object) -> object:
        if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
            raise TaskError(f"config.callable must be 'module:function' (e.g. "
                            f"'dtf_plugins.runners.builtin_tasks:noop'), got {spec!r}")
        fn = self._callables.get(spec)
        if fn is not None:
            return fn
        module_name, _, attr_path = spec.partition(":")
        try:
            target: object = importlib.import_module(module_name)
        except Exception as exc:  # import of user code can raise anything
            raise TaskError(f"config.callable {spec!r}: cannot import {module_name!r} on this worker: "
                            f"{type(exc).__name__}: {exc}",
                            error_class="missing_file" if isinstance(exc, ImportError) else "crash") from None
        for part in attr_path.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise TaskError(f"config.callable {spec!r}: module {module_name!r} has no {attr_path!r}") from None
        if not callable(target):
            raise TaskError(f"config.callable {spec!r} is not callable")
        self._callables[spec] = target
        return target

    def _resolve_named(self, name: object) -> object:
        if not isinstance(name, str) or not name:
            raise TaskError(f"config.name must be the name of a registered custom task, got {name!r}")
        key = f"name:{name}"
        fn = self._callables.get(key)
        if fn is None:
            try:
                fn = load_plugin(CUSTOM_TASKS_GROUP, name)
            except (LookupError, ImportError) as exc:
                raise TaskError(f"custom task {name!r}: {exc}") from None
            if not callable(fn):
                raise TaskError(f"custom task {name!r} is registered as {fn!r}, which is not callable")
            self._callables[key] = fn
        return fn


def _arguments(args: object, kwargs: object) -> tuple[list, dict]:
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TaskError(f"config.kwargs must be an object, got {kwargs!r}")
    kwargs = dict(kwargs or {})
    if args is None:
        return [], kwargs
    if isinstance(args, dict):  # "args": {"seconds": 2} reads naturally for named tasks
        return [], {**args, **kwargs}
    if isinstance(args, list):
        return args, kwargs
    raise TaskError(f"config.args must be a list (positional) or an object (keyword), got {args!r}")


async def _call(fn: object, args: list, kwargs: dict, in_thread: bool, raw: dict) -> dict:
    started = time.perf_counter()
    try:
        if inspect.iscoroutinefunction(fn):
            value = await fn(*args, **kwargs)  # type: ignore[operator]
        elif in_thread:
            # abandon_on_cancel: a timeout frees the slot now; the thread finishes in the background.
            value = await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),  # type: ignore[arg-type]
                                                  abandon_on_cancel=True)
        else:
            value = fn(*args, **kwargs)  # type: ignore[operator]
            if inspect.isawaitable(value):
                value = await value
    except Exception as exc:  # trio.Cancelled is a BaseException and passes through untouched
        elapsed = time.perf_counter() - started
        return {
            "status": "failure",
            "metrics": {"duration": elapsed},
            "execution_time": elapsed,
            "environment": environment_info(),
            "raw_data": {**raw, "exception": f"{type(exc).__name__}: {exc}"},
            "output": traceback.format_exc()[-8192:],
        }
    elapsed = time.perf_counter() - started
    raw_data = {**raw, "return_value": value}
    if value is not None and not isinstance(value, bool | int | float | str):
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raw_data["return_value"] = repr(value)
            raw_data["return_value_is_repr"] = True
    return {
        "status": "success",
        "metrics": {"duration": elapsed},
        "execution_time": elapsed,
        "environment": environment_info(),
        "raw_data": raw_data,
        "output": "",
    }
