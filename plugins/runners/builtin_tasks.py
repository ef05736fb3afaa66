"""Built-in in-process tasks for the custom runner.

Usable as ``{"callable": "dtf_plugins.runners.builtin_tasks:noop"}`` or by name through the
``dtf.custom_tasks`` group (``{"name": "sleep", "args": {"seconds": 1}}``). ``noop`` is what the
project's throughput benchmark schedules, so it must cost next to nothing.
"""

from __future__ import annotations

import time

import trio


def noop() -> None:
    """Do nothing: measures the framework's own per-task cost."""
    return None


async def sleep(seconds: float = 1.0) -> dict:
    """Sleep without blocking the worker (a trio sleep, so timeouts and cancel apply immediately)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError(f"sleep: seconds must be a non-negative number, got {seconds!r}")
    await trio.sleep(seconds)
    return {"slept_seconds": seconds}


async def cpu_burn(seconds: float = 1.0) -> dict:
    """Keep a CPU busy for ``seconds`` (floating-point loop), yielding to the worker every ~10 ms.

    The slices keep the worker's heartbeats and websocket alive and let a timeout interrupt the burn.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError(f"cpu_burn: seconds must be a non-negative number, got {seconds!r}")
    deadline = time.perf_counter() + seconds
    iterations = 0
    x = 0.0
    while time.perf_counter() < deadline:
        slice_end = min(deadline, time.perf_counter() + 0.01)
        while time.perf_counter() < slice_end:
            for i in range(1000):
                x += (i * 0.5) ** 0.5
            iterations += 1000
        await trio.sleep(0)
    return {"seconds": seconds, "iterations": iterations, "checksum": round(x, 3)}


def echo(*args: object, **kwargs: object) -> dict:
    """Return the arguments it was given (for checking the plumbing end to end)."""
    return {"args": list(args), "kwargs": kwargs}


def fail(message: str = "deliberate failure") -> None:
    """Raise RuntimeError: exercises failure reporting."""
    raise RuntimeError(message)
