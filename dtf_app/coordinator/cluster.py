"""The coordinator cluster as people and tools see it: node views, health, leadership, a drawing.

Every node answers these itself (they describe the cluster from where it stands): its own role, term,
commit and applied index come from its Raft driver; the other members' come from a probe of their open
``GET /status`` every ``PROBE_INTERVAL_S`` (:class:`ClusterMonitor`), which also gives each member's
last contact and uptime. The leadership history is replicated state (``LeaderElected`` commands), so
every node shows the same one. Pushes for the ``cluster_status`` channel (``cluster_status_update``) and
``cluster_health_update`` are published by the monitor after each probe round.
"""

from __future__ import annotations

import html
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from dtf_app.coordinator import views

if TYPE_CHECKING:
    from dtf_app.coordinator.service import Coordinator

log = logging.getLogger("dtf.cluster")

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0


def _iso(ts: float | None) -> str | None:
    return views.iso(ts)


class ClusterMonitor:
    """Probes the other members' ``/status`` and keeps what they said, with when; samples this node's own
    health (cpu, memory, disk, network, load) for the cluster health views and pushes."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.peers: dict[str, dict[str, Any]] = {}
        self.last_contact: dict[str, float] = {}
        self.health: dict[str, Any] = {}
        self._net: tuple[float, int] | None = None

    async def run(self) -> None:
        import httpx

        from dtf_app import health as health_mod

        coord = self.coord
        # TLS members are probed with the context peer links use (it trusts --peer-ca).
        verify = coord.replicator.ssl_context or True
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, verify=verify) as client:
            while True:
                members = {m: u for m, u in coord.cluster.members.items() if m != coord.node_id}
                metrics = await trio.to_thread.run_sync(health_mod.sample, str(coord.data_dir))
                self.health = self._summary(metrics, health_mod.evaluate(metrics))
                async with trio.open_nursery() as nursery:
                    for node_id, url in members.items():
                        nursery.start_soon(self._probe, client, node_id, url)
                if coord.hub:
                    publish(coord, self)
                await trio.sleep(PROBE_INTERVAL_S)

    def _summary(self, metrics: dict[str, Any], alerts: list[Any]) -> dict[str, Any]:
        """The sources' per-node health document: usage percentages, network MB/s, load, status."""
        now = time.monotonic()
        total = (metrics.get("net_bytes_sent") or 0) + (metrics.get("net_bytes_recv") or 0)
        rate = None
        if self._net is not None and now > self._net[0]:
            rate = round((total - self._net[1]) / (now - self._net[0]) / 1e6, 3)
        self._net = (now, total)
        load = metrics.get("load_average")
        levels = {a.get("severity") for a in alerts if isinstance(a, dict)}
        return {"cpu_usage": metrics.get("cpu_percent"), "memory_usage": metrics.get("memory_percent"),
                "disk_usage": metrics.get("disk_percent"), "network_io": rate,
                "load_average": load[0] if isinstance(load, list) and load else None,
                "status": "critical" if "critical" in levels else "warning" if "warning" in levels else "healthy"}

    async def _probe(self, client: Any, node_id: str, url: str) -> None:
        try:
            response = await client.get(url + "/status")
            data = response.json()
        except Exception:  # noqa: BLE001 - unreachable, timed out, not JSON: all mean "no answer"
            self.peers[node_id] = {**self.peers.get(node_id, {}), "reachable": False}
            return
        if isinstance(data, dict):
            self.peers[node_id] = {**data, "reachable": True}
            self.last_contact[node_id] = time.time()


def node_views(coord: Coordinator, monitor: ClusterMonitor | None) -> list[dict[str, Any]]:
    """One document per member: role/state, term, indexes, last contact, uptime, enabled."""
    rep = coord.replicator
    driver = rep.driver
    now = time.time()
    views = []
    for node_id, url in coord.cluster.members.items():
        enabled = node_id not in coord.state.disabled_nodes
        if node_id == coord.node_id:
            view = {"node_id": node_id, "url": coord.url or url, "role": rep.role, "state": rep.role,
                    "term": rep.term, "commit_index": rep.commit_index, "applied_index": coord.state.applied_index,
                    "last_heartbeat": _iso(now), "last_contact_seconds": 0.0, "reachable": True,
                    "uptime_seconds": round(now - coord.started_at, 3), "healthy": True}
        else:
            seen = (monitor.peers.get(node_id) if monitor else None) or {}
            contact = monitor.last_contact.get(node_id) if monitor else None
            role = seen.get("role") if seen.get("reachable") else "unreachable"
            view = {"node_id": node_id, "url": url, "role": role, "state": role, "term": seen.get("term"),
                    "commit_index": seen.get("commit_index"), "applied_index": seen.get("applied_index"),
                    "last_heartbeat": _iso(contact),
                    "last_contact_seconds": round(now - contact, 3) if contact else None,
                    "reachable": bool(seen.get("reachable")), "uptime_seconds": seen.get("uptime_seconds"),
                    "healthy": bool(seen.get("reachable"))}
            if driver is not None and rep.is_leader:
                progress = driver.node.progress(node_id)
                if progress is not None:
                    view["match_index"] = progress.match
        view["enabled"] = enabled
        view["is_leader"] = node_id == coord.leader_id
        view["voter"] = node_id in rep.voters
        views.append(view)
    return views


def health(coord: Coordinator, monitor: ClusterMonitor | None) -> dict[str, Any]:
    """``healthy`` (all members up, a leader), ``degraded`` (a leader, some members down) or
    ``unavailable`` (no leader: writes are refused)."""
    nodes = node_views(coord, monitor)
    up = sum(1 for n in nodes if n["reachable"])
    if coord.leader_id is None:
        state = "unavailable"
    elif up == len(nodes):
        state = "healthy"
    else:
        state = "degraded"
    return {"cluster_health": state, "quorum_size": coord.cluster.quorum, "members": len(nodes),
            "reachable": up, "leader_id": coord.leader_id, "term": coord.replicator.term,
            "nodes": [{"node_id": n["node_id"], "healthy": n["healthy"], "role": n["role"],
                       "last_contact_seconds": n["last_contact_seconds"]} for n in nodes]}


def leader_info(coord: Coordinator) -> dict[str, Any]:
    """The leader, its term, when that term's leadership began, and the replicated history."""
    history = list(coord.state.leaders)
    current = next((h for h in reversed(history) if h["leader_id"] == coord.leader_id
                    and h["term"] == coord.replicator.term), None)
    return {"leader_id": coord.leader_id, "term": coord.replicator.term, "url": coord.leader_url,
            "term_start_time": _iso(current["timestamp"]) if current else None,
            "history": [{**h, "timestamp": _iso(h.get("timestamp"))} for h in history]}


def status(coord: Coordinator, monitor: ClusterMonitor | None) -> dict[str, Any]:
    nodes = node_views(coord, monitor)
    summary = views.status(coord)
    return {"node_id": coord.node_id, "role": coord.replicator.role, "term": coord.replicator.term,
            "leader_id": coord.leader_id, "leader_url": coord.leader_url,
            "commit_index": coord.replicator.commit_index, "applied_index": coord.state.applied_index,
            "quorum_size": coord.cluster.quorum, "cluster_health": health(coord, monitor)["cluster_health"],
            "nodes": nodes, "tasks": summary["tasks"], "workers": summary["workers"]}


def visualize(coord: Coordinator, monitor: ClusterMonitor | None) -> str:
    """A self-contained HTML page: an SVG of the members (role, term, reachability) and the history."""
    nodes = node_views(coord, monitor)
    width = max(360, 180 * len(nodes) + 40)
    colours = {"leader": "#2e7d32", "follower": "#1565c0", "candidate": "#ef6c00", "pre_candidate": "#ef6c00",
               "unreachable": "#9e9e9e"}
    shapes = []
    for i, node in enumerate(nodes):
        x = 40 + i * 180
        role = str(node.get("role") or "unknown")
        fill = colours.get(role, "#616161")
        stroke = "#000" if node["is_leader"] else "none"
        shapes.append(
            f'<g><rect x="{x}" y="30" width="150" height="90" rx="10" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="3"/><text x="{x + 75}" y="60" text-anchor="middle" fill="#fff" font-size="14" '
            f'font-weight="bold">{html.escape(node["node_id"])}</text>'
            f'<text x="{x + 75}" y="82" text-anchor="middle" fill="#fff" font-size="12">{html.escape(role)}'
            f'{" (disabled)" if not node["enabled"] else ""}</text>'
            f'<text x="{x + 75}" y="102" text-anchor="middle" fill="#fff" font-size="12">term '
            f'{html.escape(str(node.get("term")))}</text></g>')
    history = leader_info(coord)["history"]
    rows = "".join(
        f"<tr><td>{h['term']}</td><td>{html.escape(str(h['leader_id']))}</td>"
        f"<td>{html.escape(str(h.get('previous_leader_id') or '-'))}</td><td>{html.escape(str(h.get('reason')))}</td>"
        f"<td>{html.escape(str(h.get('timestamp')))}</td></tr>" for h in reversed(history))
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="150" role="img" '
           f'aria-label="DTF coordinator cluster">{"".join(shapes)}</svg>')
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>DTF cluster</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>"
        f"<h1>DTF cluster</h1><p>Seen from {html.escape(coord.node_id)}: leader "
        f"{html.escape(str(coord.leader_id))}, term {coord.replicator.term}, quorum {coord.cluster.quorum} of "
        f"{len(nodes)}.</p>{svg}<h2>Leadership history</h2><table><tr><th>term</th><th>leader</th>"
        f"<th>previous</th><th>reason</th><th>since</th></tr>{rows}</table></body></html>")


def health_nodes(coord: Coordinator, monitor: ClusterMonitor | None) -> list[dict[str, Any]]:
    """``[{node_id, health: {...}}]`` as the sources' cluster_health messages carry it: this node's own
    measurements; for the others, whether they answer (their own view has their metrics)."""
    out = []
    for node in node_views(coord, monitor):
        if node["node_id"] == coord.node_id:
            doc = dict(monitor.health) if monitor and monitor.health else {"status": "healthy"}
        else:
            doc = {"status": "healthy" if node["reachable"] else "unreachable",
                   "last_contact_seconds": node["last_contact_seconds"]}
        out.append({"node_id": node["node_id"], "role": node["role"], "health": doc})
    return out


def leader_history(coord: Coordinator) -> list[dict[str, Any]]:
    """The sources' ``leadership_history``: each term's leader and how long it led (newest first)."""
    rows = list(coord.state.leaders)
    out = []
    for i, row in enumerate(rows):
        end = rows[i + 1]["timestamp"] if i + 1 < len(rows) else time.time()
        start = row.get("timestamp")
        out.append({"leader_id": row["leader_id"], "term": row["term"],
                    "duration_seconds": round(end - start, 3) if isinstance(start, int | float) else None,
                    "since": _iso(start)})
    return list(reversed(out))


def publish(coord: Coordinator, monitor: ClusterMonitor) -> None:
    """``cluster_status_update`` and ``cluster_health_update`` pushes (after each probe round)."""
    now = _iso(time.time())
    nodes = node_views(coord, monitor)
    doc = {"node_id": coord.node_id}
    coord.hub.publish("cluster_status", lambda: {
        "type": "cluster_status_update", "timestamp": now, "leader_id": coord.leader_id,
        "term": coord.replicator.term,
        "nodes": [{"node_id": n["node_id"], "state": n["state"], "term": n["term"],
                   "last_heartbeat": n["last_heartbeat"], "uptime_seconds": n["uptime_seconds"]} for n in nodes]},
        doc)
    coord.hub.publish("cluster_status", lambda: {"type": "cluster_health_update", "timestamp": now,
                                                 **health(coord, monitor), "nodes": health_nodes(coord, monitor)}, doc)
