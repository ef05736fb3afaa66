"""The coordinator's bounded in-memory tails of running tasks' logs (``GET /api/tasks/{id}`` log_tail).

Log lines are ephemeral (never in the command log): workers stream them in ``log`` frames and the
coordinator keeps the last few per running task for the API and fans them out to ``/ws`` subscribers.
A worker is another process, perhaps buggy or hostile, so everything here is bounded:

- a line is cut to ``protocol.LOG_LINE_MAX_CHARS`` characters;
- a task keeps at most :data:`LOG_LINES_KEPT` lines and :data:`LOG_TASK_MAX_BYTES` bytes (UTF-8), the
  oldest lines rotating out;
- all the tails one worker feeds together hold at most :data:`LOG_WORKER_MAX_BYTES`; lines beyond that
  are dropped;
- lines are only taken for a task the sending worker holds now, for its current attempt; anything else
  (unknown task ids, another worker's task, a stale attempt, malformed frames) is dropped.

Drops are counted by reason (``dtf_log_lines_dropped_total{reason}`` on ``/metrics``).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from dtf_app import protocol as proto

LOG_LINES_KEPT = 200
LOG_TASK_MAX_BYTES = 256 * 1024
LOG_WORKER_MAX_BYTES = 8 * 1024 * 1024

# Drop reasons (labels of dtf_log_lines_dropped_total).
DROP_MALFORMED = "malformed"
DROP_UNKNOWN_TASK = "unknown_task"
DROP_NOT_ASSIGNED = "not_assigned"
DROP_WORKER_LIMIT = "worker_limit"
DROP_REASONS = (DROP_MALFORMED, DROP_UNKNOWN_TASK, DROP_NOT_ASSIGNED, DROP_WORKER_LIMIT)


def _size(line: str) -> int:
    return len(line.encode("utf-8", "replace"))


class _Tail:
    __slots__ = ("bytes", "lines", "owner")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.lines: deque[tuple[str, int]] = deque()
        self.bytes = 0


class TaskLogs:
    """Per-task log tails with per-task and per-worker byte budgets."""

    def __init__(self) -> None:
        self._tails: dict[str, _Tail] = {}
        self._owner_bytes: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})

    def get(self, task_id: str, default: Any = ()) -> list[str] | Any:
        tail = self._tails.get(task_id)
        return default if tail is None else [line for line, _ in tail.lines]

    def pop(self, task_id: str, default: Any = None) -> Any:
        tail = self._tails.pop(task_id, None)
        if tail is None:
            return default
        self._release(tail.owner, tail.bytes)
        return [line for line, _ in tail.lines]

    def __len__(self) -> int:
        return len(self._tails)

    def total_bytes(self) -> int:
        return sum(self._owner_bytes.values())

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def _release(self, owner: str, size: int) -> None:
        left = self._owner_bytes[owner] - size
        if left > 0:
            self._owner_bytes[owner] = left
        else:
            self._owner_bytes.pop(owner, None)

    def add(self, worker_id: str, task_id: str, raw_lines: list[Any]) -> list[str]:
        """Take lines a worker sent for a task it holds (the caller checked that); returns the lines
        kept, capped, for fan-out."""
        tail = self._tails.get(task_id)
        if tail is None:
            tail = self._tails[task_id] = _Tail(worker_id)
        elif tail.owner != worker_id:  # the task moved to another worker: its tail moves with it
            self._release(tail.owner, tail.bytes)
            self._owner_bytes[worker_id] += tail.bytes
            tail.owner = worker_id
        # Only the newest lines of an oversized frame could survive the rotation anyway.
        skipped = max(0, len(raw_lines) - LOG_LINES_KEPT)
        kept: list[str] = []
        for raw in raw_lines[skipped:]:
            if not isinstance(raw, str):
                self.dropped[DROP_MALFORMED] += 1
                continue
            line = proto.cap_log_line(raw)
            size = _size(line)
            # Make room in this task's own tail first (a tail, so the oldest lines go).
            while tail.lines and (len(tail.lines) >= LOG_LINES_KEPT or tail.bytes + size > LOG_TASK_MAX_BYTES
                                  or self._owner_bytes[worker_id] + size > LOG_WORKER_MAX_BYTES):
                _, old = tail.lines.popleft()
                tail.bytes -= old
                self._release(worker_id, old)
            if self._owner_bytes[worker_id] + size > LOG_WORKER_MAX_BYTES:
                self.dropped[DROP_WORKER_LIMIT] += 1  # the worker's other tasks hold its whole budget
                continue
            tail.lines.append((line, size))
            tail.bytes += size
            self._owner_bytes[worker_id] += size
            kept.append(line)
        if not tail.lines:
            self._tails.pop(task_id, None)
        return kept


__all__ = ["DROP_REASONS", "LOG_LINES_KEPT", "LOG_TASK_MAX_BYTES", "LOG_WORKER_MAX_BYTES", "TaskLogs"]
