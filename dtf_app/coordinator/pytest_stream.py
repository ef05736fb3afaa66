"""Live side channel of ``dtf pytest`` runs: per-test reports as they complete, and work stealing.

Nothing here is replicated or durable, on purpose: the per-chunk result (DuckDB, through the ordinary
``results`` path) stays the source of truth for what ran. This is a bounded, in-memory buffer per run on
the coordinator the workers post to, so a client sees each test's reports as they happen and can ask a
running chunk to give up its tail:

- a worker running a chunk posts its newly finished tests every fraction of a second
  (``POST /api/pytest/runs/{run}/progress``); the answer carries a pending steal request for that chunk;
- the client long-polls ``GET /api/pytest/runs/{run}/events?after=SEQ`` (events have increasing
  sequence numbers; when the buffer rotated past ``after``, ``dropped`` says so and the final results
  fill the gap);
- the client asks for a steal (``POST /api/pytest/runs/{run}/steal``); the worker's session answers with
  exactly the not-yet-started tests it gave up, the coordinator submits them as a new chunk task of the
  run (an ordinary, durable task) and records a ``stolen`` event naming them and the new task.

Everything is bounded: runs, events per run and bytes per run; the oldest rotate out.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import trio

MAX_RUNS = 64
MAX_EVENTS_PER_RUN = 100_000
MAX_RUN_BYTES = 32 * 1024 * 1024
RUN_IDLE_SECONDS = 3600.0
MAX_WAIT_SECONDS = 10.0


class _Run:
    __slots__ = ("bytes", "changed", "events", "first_seq", "next_seq", "steals", "touched")

    def __init__(self) -> None:
        self.events: deque[tuple[dict[str, Any], int]] = deque()
        self.first_seq = 0  # the seq of events[0] (or next_seq when empty)
        self.next_seq = 0
        self.bytes = 0
        self.changed = trio.Event()
        self.steals: dict[str, dict[str, Any]] = {}
        self.touched = time.monotonic()


class RunStreams:
    """Per-run event buffers and pending steal requests (one per coordinator process)."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def _run(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            now = time.monotonic()
            for key in [k for k, r in self._runs.items() if now - r.touched > RUN_IDLE_SECONDS]:
                del self._runs[key]
            while len(self._runs) >= MAX_RUNS:
                # Runs nobody posted to yet (a reader's guess at a run id) go first, then the oldest.
                oldest = min(self._runs, key=lambda k: (self._runs[k].next_seq > 0, self._runs[k].touched))
                del self._runs[oldest]
            run = self._runs[run_id] = _Run()
        run.touched = time.monotonic()
        return run

    def append(self, run_id: str, events: list[dict[str, Any]], sizes: list[int]) -> None:
        """Add events (each gets its ``seq``); wakes the run's waiting readers."""
        run = self._run(run_id)
        for event, size in zip(events, sizes, strict=True):
            event["seq"] = run.next_seq
            run.next_seq += 1
            run.events.append((event, size))
            run.bytes += size
        while run.events and (len(run.events) > MAX_EVENTS_PER_RUN or run.bytes > MAX_RUN_BYTES):
            _, size = run.events.popleft()
            run.bytes -= size
            run.first_seq += 1
        if not run.events:
            run.first_seq = run.next_seq
        run.changed.set()
        run.changed = trio.Event()

    async def read(self, run_id: str, after: int, wait: float) -> dict[str, Any]:
        """Events with ``seq >= after``, waiting up to ``wait`` seconds for the first one."""
        run = self._run(run_id)
        if run.next_seq <= after and wait > 0:
            with trio.move_on_after(min(wait, MAX_WAIT_SECONDS)):
                await run.changed.wait()
        start = max(after, run.first_seq)
        events = [event for event, _ in list(run.events)[start - run.first_seq:]]
        return {"events": events, "next": run.next_seq, "dropped": start > after}

    def request_steal(self, run_id: str, task_id: str, for_worker: str | None, group: str) -> None:
        self._run(run_id).steals[task_id] = {"for_worker": for_worker, "group": group}

    def take_steal(self, run_id: str, task_id: str) -> dict[str, Any] | None:
        run = self._runs.get(run_id)
        return None if run is None else run.steals.pop(task_id, None)
