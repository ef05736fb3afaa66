"""Big batches without stalling the event loop.

One submit may carry ``MAX_TASKS_PER_REQUEST`` (100,000) tasks. Everything the coordinator does per
task (validation, feasibility, applying, queueing, the 201 answer) is cheap, but 100,000 of them in one
go used to hold the trio loop for tens of seconds: ``/status`` went unanswered and heartbeats were not
read, so healthy workers were declared lost. The loops over a batch therefore yield to the event loop
every :data:`SLICE_S` seconds of work, the state change is committed as several ``SubmitTasks`` commands of
at most :data:`SUBMIT_COMMAND_TASKS` tasks (one group commit, one fsync: still one durable write that
is acknowledged once), encoded off the event loop, and the 201 answer is encoded in slices.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")

# Longest stretch of batch work between two yields to the event loop. Measured by the clock rather
# than counted in items, so a loaded machine (where each item costs more) still yields often enough.
# Short, because one HTTP request takes a dozen or more scheduler rounds (accept, read, parse, route,
# answer, ...) and each round may wait for one slice.
SLICE_S = 0.003
# Items between two looks at the clock.
CLOCK_EVERY = 32
# Tasks per SubmitTasks command: applying one command is one uninterrupted step of the state machine.
SUBMIT_COMMAND_TASKS = 250
# List items per slice of an encoded answer.
ENCODE_SLICE = 500


class _Slicer:
    def __init__(self) -> None:
        self.since = time.monotonic()

    async def maybe_yield(self) -> None:
        if time.monotonic() - self.since > SLICE_S:
            await trio.sleep(0)
            self.since = time.monotonic()


async def checkpoints(items: Iterable[T]) -> AsyncIterator[tuple[int, T]]:
    """``enumerate(items)`` that lets the event loop run every :data:`SLICE_S` seconds."""
    slicer = _Slicer()
    for i, item in enumerate(items):
        if i % CLOCK_EVERY == CLOCK_EVERY - 1:
            await slicer.maybe_yield()
        yield i, item


async def map_yielding(fn: Callable[[int, T], R], items: Sequence[T]) -> list[R]:
    """``[fn(i, item) for i, item in enumerate(items)]``, letting the event loop run every :data:`SLICE_S`."""
    out: list[R] = []
    slicer = _Slicer()
    for start in range(0, len(items), CLOCK_EVERY):
        out.extend(fn(i, items[i]) for i in range(start, min(start + CLOCK_EVERY, len(items))))
        await slicer.maybe_yield()
    return out


# Bodies at least this big are parsed element by element (a top-level array) with yields in between.
SLICED_PARSE_BYTES = 256 * 1024
_SPACE = re.compile(r"[ \t\n\r]*")


async def loads(raw: bytes | str, **options: Any) -> Any:
    """``json.loads(raw, **options)``, but a big top-level array is decoded one element at a time
    (each a C call of ``JSONDecoder.raw_decode``), letting the event loop run every :data:`SLICE_S`: one
    ``json.loads`` of a 64 MiB body holds the GIL, and so the loop, for a second or more. Same result
    and the same JSONDecodeError positions as ``json.loads``."""
    if len(raw) < SLICED_PARSE_BYTES:
        return json.loads(raw, **options)
    # What json.loads does with bytes; a str (already decoded by the caller) is taken as it is.
    text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")
    pos = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("[", pos):
        return json.loads(text, **options)
    decoder = json.JSONDecoder(**options)
    space = _SPACE.match
    items: list[Any] = []
    pos = space(text, pos + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", pos):
        pos += 1
    else:
        slicer = _Slicer()
        while True:
            item, pos = decoder.raw_decode(text, pos)
            items.append(item)
            pos = space(text, pos).end()  # type: ignore[union-attr]
            if text.startswith(",", pos):
                pos = space(text, pos + 1).end()  # type: ignore[union-attr]
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            if len(items) % CLOCK_EVERY == 0:
                await slicer.maybe_yield()
    end = space(text, pos).end()  # type: ignore[union-attr]
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return items


def dependency_order(ids: Sequence[str], deps: Mapping[str, Iterable[str]]) -> list[str]:
    """The batch's ids with every in-batch dependency before its dependents, otherwise in the given
    order (so a batch split into several commands never applies a task before a task it waits for).
    The batch is known to be acyclic."""
    out: list[str] = []
    done: set[str] = set()
    members = set(ids)
    for root in ids:
        if root in done:
            continue
        stack: list[tuple[str, Any]] = [(root, iter(deps.get(root, ())))]
        done.add(root)
        while stack:
            node, edges = stack[-1]
            for nxt in edges:
                if nxt in members and nxt not in done:
                    done.add(nxt)
                    stack.append((nxt, iter(deps.get(nxt, ()))))
                    break
            else:
                stack.pop()
                out.append(node)
    return out


async def dumps(data: Any, every: int = ENCODE_SLICE) -> str:
    """Compact JSON; a big list is encoded in slices with the event loop running in between (the C
    encoder holds the GIL for a whole call, so a worker thread would not help)."""
    if not isinstance(data, list) or len(data) <= every:
        return _dumps(data)
    parts = []
    for start in range(0, len(data), every):
        if start:
            await trio.sleep(0)
        parts.append(_dumps(data[start:start + every])[1:-1])
    return "[" + ",".join(parts) + "]"


async def encode_snapshot(state: Any, every: int = ENCODE_SLICE) -> bytes:
    """The same bytes as ``state.snapshot()``, with the tasks encoded in slices so a state of hundreds of
    thousands of tasks does not hold the event loop for seconds. The caller (the replicator) applies
    nothing meanwhile, and tasks change only in ``apply``, so the slices form one consistent state."""
    items = list(state.tasks.items())
    parts = []
    for start in range(0, len(items), every):
        if start:
            await trio.sleep(0)
        parts.append(json.dumps(dict(items[start:start + every]), separators=(",", ":"))[1:-1])
    rest = json.dumps(state.snapshot_rest(), separators=(",", ":"))
    return ('{"tasks":{' + ",".join(parts) + "}," + rest[1:]).encode()


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


__all__ = ["SLICE_S", "SUBMIT_COMMAND_TASKS", "checkpoints", "dependency_order", "dumps", "encode_snapshot", "loads", "map_yielding"]
