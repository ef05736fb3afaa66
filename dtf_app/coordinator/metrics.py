"""Prometheus exposition of the coordinator's state (``GET /metrics``), via prometheus_client.

A custom collector reads the live state on each scrape, so nothing is updated on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

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
        status = coord.status()
        workers = GaugeMetricFamily("dtf_workers", "Workers by connection state", labels=["state"])
        workers.add_metric(["online"], status["workers"]["online"])
        workers.add_metric(["offline"], status["workers"]["offline"])
        yield workers
        yield GaugeMetricFamily("dtf_queue_depth", "Ready tasks waiting for a slot", value=len(coord.queue))
        yield GaugeMetricFamily("dtf_log_index", "Last applied command index", value=coord.state.applied_index)
        for name, value in coord.stats.items():
            yield CounterMetricFamily(f"dtf_tasks_{name}", f"Tasks {name} since start", value=value)
        yield CounterMetricFamily("dtf_log_fsyncs", "Group-commit fsyncs since start", value=coord.replicator.fsyncs)
        if coord.store is not None:
            yield CounterMetricFamily(
                "dtf_store_quarantined_events", "Store events that could not be written and were kept in the "
                "quarantine file of the data dir, since start", value=coord.store.statistics()["quarantined"])
        yield GaugeMetricFamily("dtf_ws_updates_dropped", "Updates dropped for slow /ws subscribers now connected",
                                value=sum(sub.dropped for sub in coord.subscribers))


def render(coord: Coordinator) -> bytes:
    """The Prometheus text format for this coordinator."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CoordinatorCollector(coord))
    return generate_latest(registry)
