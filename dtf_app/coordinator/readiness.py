"""Whether a node has finished starting: named conditions, reported by ``GET /status`` until all hold.

The HTTP server listens before recovery runs (so a long replay answers 503 instead of refusing
connections), which means requests can arrive before the node can serve them. ``/status`` reports
``ready`` and what is still awaited; every other route answers 503 ``starting`` until ready.

A single-node coordinator waits for :data:`RECOVERY` (data dir open, snapshot restored, log replayed),
:data:`BOOTSTRAP_KEY` (the first start's ``admin.key``/``worker.key`` written, so a script that saw
ready can read them) and :data:`LOOPS` (dispatch, results and liveness running). The high-availability
issue adds conditions of its own here (e.g. a follower: "leader known", "caught up") through the same
:meth:`Readiness.require` / :meth:`Readiness.done`, and may make a node unready again
(:meth:`Readiness.require` after start) when it loses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

RECOVERY = "recovery"
BOOTSTRAP_KEY = "bootstrap key"
LOOPS = "dispatch loops"
COORDINATOR_CONDITIONS = (RECOVERY, BOOTSTRAP_KEY, LOOPS)
# A member of a cluster of several coordinators (the leader's key is written on the leader only).
LEADER_KNOWN = "leader known"
CAUGHT_UP = "caught up with the commit index"
MEMBER_CONDITIONS = (RECOVERY, LEADER_KNOWN, CAUGHT_UP)


class Readiness:
    """The conditions a node still waits for, in the order they were required."""

    def __init__(self, conditions: Iterable[str] = COORDINATOR_CONDITIONS) -> None:
        self._waiting: list[str] = list(dict.fromkeys(conditions))

    @property
    def ready(self) -> bool:
        """True once every required condition is done."""
        return not self._waiting

    @property
    def waiting_for(self) -> list[str]:
        """The conditions not yet met (a copy)."""
        return list(self._waiting)

    def require(self, condition: str) -> None:
        """Wait for ``condition`` (again): the node is not ready until :meth:`done` is called for it."""
        if condition not in self._waiting:
            self._waiting.append(condition)

    def done(self, condition: str) -> None:
        """``condition`` now holds."""
        if condition in self._waiting:
            self._waiting.remove(condition)

    def document(self) -> dict[str, Any]:
        """The readiness fields of ``GET /status``."""
        if self.ready:
            return {"status": "ok", "ready": True}
        return {"status": "starting", "ready": False, "waiting_for": self.waiting_for}

    def message(self) -> str:
        """A one-line explanation for the 503 of routes other than /status."""
        return (f"the coordinator is starting (waiting for: {', '.join(self._waiting)}); "
                "retry shortly, GET /status says when it is ready")
