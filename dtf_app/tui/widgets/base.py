"""The view protocol: each tab refreshes itself from the store and what changed since last time."""

from __future__ import annotations

from typing import Any

from textual.containers import Vertical

from dtf_app.live import LiveStore
from dtf_app.tui.messages import Changes


class View(Vertical):
    """One tab of the dashboard. ``refresh_view`` must be cheap when little changed (it runs at 4 Hz)."""

    def refresh_view(self, store: LiveStore, changes: Changes) -> None:
        """Bring the widgets up to date with ``store``."""

    def set_remote(self, key: str, data: Any) -> None:
        """Data the app fetched over HTTP for this view (cluster, results); default: ignore."""
