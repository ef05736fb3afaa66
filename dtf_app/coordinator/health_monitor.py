"""The health monitor: alerts of this node and of the workers, and the quarantine decisions.

- Every coordinator samples its own health every ``health_check_interval`` (:meth:`HealthMonitor.node_loop`)
  and evaluates it against its thresholds (health.thresholds_from: the design's ``health_monitor``
  section); workers evaluate their own samples against theirs (the worker ``health`` section) and send
  the alerts with each heartbeat (the leader evaluates the metrics itself for a worker that sends none).
- A new alert, or one whose level changed, is pushed on the ``health_alerts`` channel as a
  ``health_alert`` message (``node`` or ``worker``, ``metric``, ``value``, ``threshold``, ``level``) and
  written to ``health_alerts`` in DuckDB; an alert that persists is not repeated at every sample.
- On the leader (:meth:`HealthMonitor.leader_loop`): a worker with an alert that takes it out
  (health.takes_out) or ``health_failure_threshold`` infrastructure failures in a row is committed as
  ``QuarantineWorker``; a quarantined worker whose health is no longer critical and that holds no task
  gets a canary round (``StartCanary``); the state machine decides the rest (quarantine.py).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from dtf_app import health
from dtf_app.coordinator import pubsub, quarantine, scheduler
from dtf_app.raft.types import NotLeader, ProposalDropped

if TYPE_CHECKING:
    from dtf_app.coordinator.intake import WorkerConn
    from dtf_app.coordinator.service import Coordinator

log = logging.getLogger("dtf.coordinator")

CHANNEL = "health_alerts"
LEADER_PERIOD_S = 1.0
RECENT_ALERTS = 200


def health_alert(kind: str, source: str, alert: dict[str, Any]) -> dict[str, Any]:
    """A ``health_alert`` push (``kind`` is ``node`` or ``worker``)."""
    return {"type": "health_alert", kind: source, "source": kind, "metric": alert.get("metric"),
            "value": alert.get("value"), "threshold": alert.get("threshold"), "level": alert.get("severity"),
            "message": alert.get("message"), "timestamp": pubsub.now_iso()}


class HealthMonitor:
    """Alert transitions per source, and the leader's quarantine decisions."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.warning, self.critical = health.thresholds_from(coord.settings)
        self._levels: dict[tuple[str, str], dict[str, str]] = {}
        self.recent: list[dict[str, Any]] = []
        self.node_health: dict[str, Any] = {}
        self._wakeup = trio.Event()
        self._to_quarantine: dict[str, str] = {}

    # ------------------------------------------------------------------ alerts
    def note(self, kind: str, source: str, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record the current alerts of a source; push and store those that are new or changed level."""
        before = self._levels.get((kind, source), {})
        now = {str(a.get("metric")): str(a.get("severity")) for a in alerts}
        self._levels[(kind, source)] = now
        fresh = [a for a in alerts if before.get(str(a.get("metric"))) != a.get("severity")]
        if not fresh:
            return []
        coord = self.coord
        rows = []
        for alert in fresh:
            message = health_alert(kind, source, alert)
            self.recent.append(message)
            if coord.hub:
                coord.hub.publish(CHANNEL, message, {"source": kind, kind: source, "node": source if kind == "node"
                                                     else None, "worker": source if kind == "worker" else None,
                                                     "metric": alert.get("metric"), "level": alert.get("severity")})
            rows.append({"kind": "health_alert", "row": {
                "timestamp": time.time(), "source_kind": kind, "source_id": source, "metric": alert.get("metric"),
                "value": alert.get("value"), "threshold": alert.get("threshold"), "level": alert.get("severity"),
                "message": alert.get("message"), "node_id": coord.node_id}})
            log.log(logging.WARNING if alert.get("severity") == "critical" else logging.INFO,
                    "health %s on %s %s: %s", alert.get("severity"), kind, source, alert.get("message"))
        del self.recent[:-RECENT_ALERTS]
        if coord.store is not None:
            coord.store.put(None, rows)
        return fresh

    def worker_heartbeat(self, conn: WorkerConn, message: dict[str, Any]) -> None:
        """A worker's heartbeat (leader): its alerts, and whether they take it out."""
        alerts = message.get("alerts")
        if isinstance(alerts, list):
            alerts = [a for a in alerts if isinstance(a, dict) and isinstance(a.get("metric"), str)
                      and a.get("severity") in ("warning", "critical")]
        else:
            try:
                alerts = health.evaluate(conn.health, self.warning, self.critical) if conn.health else []
            except (TypeError, ValueError):
                alerts = []
        conn.alerts = alerts
        self.note("worker", conn.worker_id, alerts)
        takes_out = [a for a in alerts if health.takes_out(a)]
        worker = self.coord.state.workers.get(conn.worker_id)
        if takes_out and worker is not None and not worker.get("quarantine"):
            first = takes_out[0]
            self._to_quarantine[conn.worker_id] = f"critical health: {first.get('message')}"
            self._wakeup.set()
        elif worker is not None and quarantine.needs_canary(worker):
            self._wakeup.set()

    # ------------------------------------------------------------------ loops
    async def node_loop(self) -> None:
        """Every coordinator: sample and evaluate this node's own health."""
        interval = self.coord.settings.health_check_interval
        while True:
            try:
                metrics = await trio.to_thread.run_sync(health.sample, str(self.coord.data_dir))
                alerts = health.evaluate(metrics, self.warning, self.critical)
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("health sample of this node failed: %s", exc)
            else:
                self.node_health = {"metrics": metrics, "alerts": alerts}
                self.note("node", self.coord.node_id, alerts)
            await trio.sleep(interval)

    async def leader_loop(self) -> None:
        """Leader duty: quarantine unhealthy workers and start their canary rounds."""
        while True:
            with trio.move_on_after(LEADER_PERIOD_S):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            try:
                await self._round()
            except (NotLeader, ProposalDropped):
                raise
            except (KeyError, TypeError, ValueError) as exc:  # one bad worker document must not stop the duty
                log.exception("health monitor round failed: %s", exc)

    async def _round(self) -> None:
        coord = self.coord
        settings = coord.settings
        state = coord.state
        commands: list[dict[str, Any]] = []
        pending, self._to_quarantine = self._to_quarantine, {}
        for worker_id, worker in sorted(state.workers.items()):
            if worker.get("quarantine"):
                continue
            reason = pending.get(worker_id)
            failures = int(worker.get("infra_failures") or 0)
            if reason is None and failures >= settings.health_failure_threshold:
                reason = f"{failures} infrastructure failures in a row"
            if reason is not None:
                log.warning("quarantining worker %s: %s", worker_id, reason)
                commands.append({"op": "QuarantineWorker", "worker_id": worker_id, "reason": reason,
                                 "max_attempts": settings.health_recovery_attempts})
        for worker_id in sorted(state.workers):
            worker = state.workers[worker_id]
            conn = coord.conns.get(worker_id)
            if not quarantine.needs_canary(worker) or conn is None or conn.closed or worker.get("assigned"):
                continue
            if conn.last_heartbeat is None or any(health.takes_out(a) for a in conn.alerts):
                continue  # still unhealthy (or not heard from since it connected): no canary yet
            attempt = int(worker["quarantine"].get("attempts") or 0) + 1
            docs = []
            for raw in quarantine.canary_tasks(worker_id, worker, attempt):
                doc = scheduler.validate_task(raw, "canary")
                doc["batch_id"] = f"canary-{worker_id}-{attempt}"
                docs.append(doc)
            log.warning("worker %s: canary round %d of %d (%s)", worker_id, attempt,
                        worker["quarantine"].get("max_attempts"), ", ".join(quarantine.canary_kinds(worker)))
            commands.append({"op": "StartCanary", "worker_id": worker_id, "tasks": docs})
        if commands:
            await coord.propose(commands)
            coord.wake_dispatcher()

    def document(self) -> dict[str, Any]:
        """``GET /api/health/alerts``: the current alert levels per source and the recent alerts."""
        current = [{"source": kind, kind: source, "metric": metric, "level": level}
                   for (kind, source), levels in sorted(self._levels.items()) for metric, level in sorted(levels.items())]
        return {"current": current, "recent": list(reversed(self.recent)),
                "thresholds": {"warning": self.warning, "critical": self.critical}}
