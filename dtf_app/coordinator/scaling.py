"""Scaling advice: the leader evaluates utilisation every ``evaluation_interval`` and says what to do.

Each evaluation (:func:`resources.utilisation` over the connected, serving workers, against
``scale_up_threshold`` / ``scale_down_threshold``) becomes a recommendation document, kept in memory
(``GET /api/scaling/recommendations``, ``/metrics``) and as a row of ``scaling_recommendations`` in the
leader's DuckDB. When the recommendation changes to ``scale_up`` or ``scale_down`` (utilisation crossed
a threshold; not on every evaluation) the optional ``autoscale_hook`` command runs with the document as
JSON on its stdin. Advice is not replicated state: a new leader starts its own evaluations (its first
crossing is measured from ``steady``).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from dtf_app.coordinator import resources as resmod

if TYPE_CHECKING:
    from dtf_app.coordinator.service import Coordinator

log = logging.getLogger("dtf.coordinator")

HISTORY = 100
HOOK_TIMEOUT_S = 60.0
RECOMMENDATIONS = ("scale_up", "steady", "scale_down")


class ScalingAdvisor:
    """The leader's utilisation evaluations, their history and the autoscale hook."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.previous = "steady"
        self.hook_calls = 0
        self.hook_failures = 0

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    def evaluate(self) -> dict[str, Any]:
        """One evaluation now (pure reading of the state and the connections)."""
        coord, settings = self.coord, self.coord.settings
        serving = [coord.state.workers[wid] for wid, conn in sorted(coord.conns.items())
                   if not conn.closed and wid in coord.state.workers
                   and not coord.state.workers[wid].get("drained") and not coord.state.workers[wid].get("stopping")]
        util = resmod.utilisation(serving)
        pending = len(coord.queue)
        recommendation = resmod.recommend(util, pending=pending, scale_up=settings.scale_up_threshold,
                                          scale_down=settings.scale_down_threshold)
        return {
            "timestamp": time.time(), "node_id": coord.node_id, "term": coord.replicator.term,
            "recommendation": recommendation, "previous": self.previous,
            "utilisation": util["overall"], "ratios": util["ratios"], "reserved": util["reserved"],
            "capacity": util["capacity"], "workers": util["workers"], "pending_tasks": pending,
            "thresholds": {"scale_up": settings.scale_up_threshold, "scale_down": settings.scale_down_threshold},
            "hook_called": False, "hook_status": None,
        }

    async def loop(self) -> None:
        """Leader duty: evaluate every ``evaluation_interval`` (started and stopped with leadership)."""
        settings = self.coord.settings
        if not settings.resource_management_enabled:
            return
        self.previous = "steady"
        while True:
            await trio.sleep(settings.evaluation_interval)
            await self.round()

    async def round(self) -> dict[str, Any]:
        """Evaluate, record, and call the hook when a threshold was crossed."""
        doc = self.evaluate()
        crossed = doc["recommendation"] != self.previous and doc["recommendation"] != "steady"
        self.previous = doc["recommendation"]
        if crossed and self.coord.settings.autoscale_hook:
            doc["hook_called"] = True
            doc["hook_status"] = await self._call_hook(doc)
        self.history.append(doc)
        store = self.coord.store
        if store is not None:
            store.put(None, [{"kind": "scaling", "row": {
                **{k: doc[k] for k in ("node_id", "term", "recommendation", "utilisation", "ratios", "pending_tasks",
                                       "workers", "hook_called", "hook_status")},
                "timestamp": doc["timestamp"]}}])
        if crossed:
            log.warning("scaling advice: %s (utilisation %s, %d task(s) waiting)", doc["recommendation"],
                        doc["utilisation"], doc["pending_tasks"])
        return doc

    async def _call_hook(self, doc: dict[str, Any]) -> str:
        argv = shlex.split(self.coord.settings.autoscale_hook or "")
        payload = json.dumps({k: v for k, v in doc.items() if k not in ("hook_called", "hook_status")}).encode()
        self.hook_calls += 1
        try:
            with trio.fail_after(HOOK_TIMEOUT_S):
                proc = await trio.run_process(argv, stdin=payload, capture_stdout=True, capture_stderr=True,
                                              check=False)
        except trio.TooSlowError:
            self.hook_failures += 1
            log.error("autoscale hook %s did not finish within %g s", argv[0], HOOK_TIMEOUT_S)
            return "timeout"
        except OSError as exc:
            self.hook_failures += 1
            log.error("autoscale hook %s cannot run: %s", argv[0], exc)
            return f"error: {exc}"
        if proc.returncode != 0:
            self.hook_failures += 1
            log.error("autoscale hook %s exited with %d: %.500s", argv[0], proc.returncode,
                      proc.stderr.decode(errors="replace"))
        return f"exit {proc.returncode}"

    def document(self) -> dict[str, Any]:
        """The API's answer: the latest evaluation (or a fresh one, not recorded) and the recent history."""
        current = self.latest or self.evaluate()
        return {"current": current, "recommendations": list(reversed(self.history)),
                "enabled": self.coord.settings.resource_management_enabled,
                "evaluation_interval": self.coord.settings.evaluation_interval,
                "autoscale_hook": bool(self.coord.settings.autoscale_hook),
                "hook_calls": self.hook_calls, "hook_failures": self.hook_failures}
