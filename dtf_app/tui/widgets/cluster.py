"""Cluster: the coordinator nodes, their roles and term, the leader, leadership history.

What this shows is what ``/api/cluster/*`` says: one node until high availability lands; the view
reads whatever nodes and history those endpoints return, so it needs no change when they grow.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Label, Static

from dtf_app.live import LiveStore
from dtf_app.tui import format as fmt
from dtf_app.tui.messages import Changes
from dtf_app.tui.widgets.base import View


class ClusterView(View):
    """Nodes table, leader line and leadership history, refreshed from HTTP every few seconds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.info: dict[str, Any] = {}
        self._dirty = True

    def compose(self) -> ComposeResult:
        yield Static("waiting for /api/cluster ...", id="leader-line")
        yield Label("Nodes", classes="box-title")
        table: DataTable = DataTable(id="nodes", cursor_type="row", zebra_stripes=True)
        table.add_columns("node", "role", "term", "leader", "url", "applied index", "healthy", "enabled",
                          "last contact")
        yield table
        yield Label("Leadership history", classes="box-title")
        yield Static(id="history")

    def set_remote(self, key: str, data: Any) -> None:
        if key == "cluster" and isinstance(data, dict):
            self.info = data
            self._dirty = True

    def refresh_view(self, store: LiveStore, changes: Changes) -> None:
        if not self._dirty:
            return
        self._dirty = False
        status = self.info.get("status") if isinstance(self.info.get("status"), dict) else {}
        leader = self.info.get("leader") if isinstance(self.info.get("leader"), dict) else {}
        nodes = [n for n in self.info.get("nodes") or [] if isinstance(n, dict)]
        if not self.info:
            return
        leader_id = leader.get("leader_id") or status.get("leader_id")
        line = Text("leader ", style="grey70") + Text(str(leader_id or "none"), style="bold green")
        line += Text(f"   term {leader.get('term', status.get('term', '-'))}   ", style="")
        line += Text(f"{leader.get('url') or ''}   ", style="grey70")
        line += Text(f"{len(nodes)} node(s)")
        self.query_one("#leader-line", Static).update(line)
        table = self.query_one("#nodes", DataTable)
        table.clear()
        for node in nodes:
            node_id = str(node.get("node_id") or "-")
            table.add_row(node_id, fmt.state(node.get("role") or node.get("state")), str(node.get("term", "-")),
                          "yes" if node_id == leader_id else "", str(node.get("url") or "-"),
                          str(node.get("applied_index", "-")), fmt.state("healthy" if node.get("healthy") else
                                                                         "unknown" if node.get("healthy") is None
                                                                         else "critical"),
                          "yes" if node.get("enabled", True) else "no",
                          fmt.ago(node.get("last_contact") or node.get("last_heartbeat")), key=node_id)
        history = leader.get("leadership_history") or status.get("leadership_history")
        if isinstance(history, list) and history:
            text = Text()
            for entry in history:
                if isinstance(entry, dict):
                    text += Text(f"term {entry.get('term', '-')}: {entry.get('leader_id', '-')}"
                                 f" for {entry.get('duration_seconds', '-')} s\n")
            self.query_one("#history", Static).update(text)
        else:
            self.query_one("#history", Static).update(Text(
                "no leader changes recorded (a single coordinator has led since it started)", style="grey70"))
