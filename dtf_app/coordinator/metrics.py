"""Prometheus exposition of the coordinator's state (``GET /metrics``), via prometheus_client.

A custom collector reads the live state on each scrape, so nothing is updated on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dtf_app.coordinator import views

if TYPE_CHECKING:
    from dtf_app.coordinator.service import Coordinator


class _CoordinatorCollector(Collector):
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        coord = self.coord
        tasks = GaugeMetricFamily("dtf_tasks", "Tasks by state", labels=["state"])
        for state, count in coord.state.task_counts().items():
            if state != "total":
                tasks.add_metric([state], count)
        yield tasks
        status = views.status(coord)
        workers = GaugeMetricFamily("dtf_workers", "Workers by connection state", labels=["state"])
        workers.add_metric(["online"], status["workers"]["online"])
        workers.add_metric(["offline"], status["workers"]["offline"])
        yield workers
        yield GaugeMetricFamily("dtf_queue_depth", "Ready tasks waiting for a slot", value=len(coord.queue))
        load = GaugeMetricFamily("dtf_worker_load", "Tasks a connected worker holds per slot (the balancer's load)",
                                 labels=["worker_id"])
        held = GaugeMetricFamily("dtf_worker_tasks", "Tasks a connected worker holds (running or queued on it)",
                                 labels=["worker_id"])
        for worker_id, conn in sorted(coord.conns.items()):
            worker = coord.state.workers.get(worker_id)
            if worker is None or conn.closed:
                continue
            count = len(worker.get("assigned") or ())
            load.add_metric([worker_id], round(count / max(1, int(worker.get("max_concurrent_tasks") or 1)), 3))
            held.add_metric([worker_id], count)
        yield load
        yield held
        yield GaugeMetricFamily("dtf_log_index", "Last applied command index", value=coord.state.applied_index)
        for name, value in coord.stats.items():
            yield CounterMetricFamily(f"dtf_tasks_{name}", f"Tasks {name} since start", value=value)
        rep = coord.replicator
        yield CounterMetricFamily("dtf_log_fsyncs", "Group-commit fsyncs of the Raft log since start",
                                  value=rep.storage.fsyncs if rep.storage is not None else 0)
        raft = GaugeMetricFamily("dtf_raft", "Raft state of this coordinator", labels=["field"])
        raft.add_metric(["term"], rep.term)
        raft.add_metric(["commit_index"], rep.commit_index)
        raft.add_metric(["is_leader"], 1 if rep.is_leader else 0)
        yield raft
        if rep.transport is not None:
            stats = rep.transport.stats
            refused = CounterMetricFamily("dtf_raft_peer_frames_refused", "Peer frames refused", labels=["reason"])
            for reason, count in sorted(stats.dropped_in.items()):
                refused.add_metric([reason], count)
            yield refused
            yield CounterMetricFamily("dtf_raft_peer_messages_in", "Peer messages received", value=stats.messages_in)
            yield CounterMetricFamily("dtf_raft_peer_messages_out", "Peer messages sent", value=stats.messages_out)
            yield CounterMetricFamily("dtf_raft_peer_messages_dropped_out", "Peer messages dropped before sending",
                                      value=stats.dropped_out)
        if coord.store is not None:
            yield CounterMetricFamily(
                "dtf_store_quarantined_events", "Store events that could not be written and were kept in the "
                "quarantine file of the data dir, since start", value=coord.store.statistics()["quarantined"])
        dropped = CounterMetricFamily("dtf_log_lines_dropped", "Task log lines refused or over the bounds, by reason",
                                      labels=["reason"])
        for reason, count in sorted(coord.task_logs.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield GaugeMetricFamily("dtf_log_buffered_bytes", "Bytes of task log tails held in memory",
                                value=coord.task_logs.total_bytes())
        yield from _resource_metrics(coord)
        yield GaugeMetricFamily("dtf_ws_updates_dropped", "Updates dropped for slow /ws subscribers now connected",
                                value=coord.hub.dropped_total())


def _resource_metrics(coord: Coordinator) -> Iterator[GaugeMetricFamily]:
    """Reservations per worker, the latest utilisation evaluation, health alerts and quarantines."""
    from dtf_app.coordinator import resources as resmod

    reserved = GaugeMetricFamily("dtf_worker_reserved", "Resources reserved by tasks on a worker",
                                 labels=["worker_id", "resource"])
    capacity = GaugeMetricFamily("dtf_worker_capacity", "Resources a worker can reserve", labels=["worker_id", "resource"])
    quarantined = 0
    for worker_id, worker in sorted(coord.state.workers.items()):
        doc = resmod.worker_usage(worker)
        for name in ("cpu_cores", "memory_gb", "gpus", "gpu_memory_gb"):
            reserved.add_metric([worker_id, name], doc[name]["reserved"])
            capacity.add_metric([worker_id, name], doc[name]["capacity"])
        quarantined += 1 if worker.get("quarantine") else 0
    yield reserved
    yield capacity
    yield GaugeMetricFamily("dtf_workers_quarantined", "Workers drained by the health monitor", value=quarantined)
    latest = coord.scaling.latest
    util = GaugeMetricFamily("dtf_cluster_utilisation", "Utilisation at the latest evaluation (0-1), by resource "
                             "(overall: the busiest)", labels=["resource"])
    if latest is not None:
        if latest.get("utilisation") is not None:
            util.add_metric(["overall"], latest["utilisation"])
        for name, ratio in (latest.get("ratios") or {}).items():
            if ratio is not None:
                util.add_metric([name], ratio)
    yield util
    advice = {"scale_up": 1, "steady": 0, "scale_down": -1}
    yield GaugeMetricFamily("dtf_scaling_recommendation", "Latest scaling advice: 1 scale up, 0 steady, -1 scale down",
                            value=advice.get((latest or {}).get("recommendation", "steady"), 0))
    alerts = GaugeMetricFamily("dtf_health_alerts", "Current health alerts by level", labels=["level"])
    levels = [level for item in coord.health_monitor.document()["current"] for level in [item["level"]]]
    for level in ("warning", "critical"):
        alerts.add_metric([level], levels.count(level))
    yield alerts


def render(coord: Coordinator) -> bytes:
    """The Prometheus text format for this coordinator."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CoordinatorCollector(coord))
    return generate_latest(registry)
