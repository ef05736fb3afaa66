"""Every Message type of the dashboard, in one module (like toolong's messages.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from dtf_app.live import LiveEvent


class LiveUpdate(Message):
    """An event from the data layer (connection change, rows changed, log lines)."""

    def __init__(self, event: LiveEvent) -> None:
        super().__init__()
        self.event = event


class OpenTask(Message):
    """Open the detail screen of a task."""

    def __init__(self, task_id: str) -> None:
        super().__init__()
        self.task_id = task_id


class CancelTask(Message):
    """Ask to cancel a task (the app confirms, then calls the API)."""

    def __init__(self, task_id: str) -> None:
        super().__init__()
        self.task_id = task_id


class DrainWorker(Message):
    """Drain a worker (no new tasks) or enable it again."""

    def __init__(self, worker_id: str, drained: bool) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.drained = drained


@dataclass
class Changes:
    """What changed since a view last refreshed."""

    tasks: set[str] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    full: bool = True

    def add(self, tasks: frozenset[str] | set[str] = frozenset(), workers: frozenset[str] | set[str] = frozenset(),
            full: bool = False) -> None:
        self.tasks |= tasks
        self.workers |= workers
        self.full = self.full or full

    @property
    def dirty(self) -> bool:
        return self.full or bool(self.tasks) or bool(self.workers)
