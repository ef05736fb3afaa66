"""Settings for every mode of ``dtf``.

Precedence (lowest first): defaults < TOML file (``--config``) < ``DTF_*`` environment < CLI flags.
The JSON ``coordinator.json`` / ``worker.json`` files of the source deployment guide are accepted too.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(Exception):
    """A setting is wrong: the message names the key, the value and what is accepted (exit code 2)."""


@dataclass
class Settings:
    """Every setting a node, worker or CLI command reads. Field names are the TOML/env/flag keys."""

    mode: str = "peer"
    """coordinator | worker | peer."""
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./dtf-data"
    db_path: str | None = None
    """DuckDB file; default ``<data_dir>/dtf.duckdb`` (coordinator) or ``<data_dir>/worker-<id>.duckdb``."""
    coordinator: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8080"])
    api_key: str | None = None
    node_id: str | None = None
    peers: dict[str, str] = field(default_factory=dict)
    max_concurrent_tasks: int = 4
    tags: list[str] = field(default_factory=list)
    worker_id: str | None = None
    heartbeat_interval: float = 10.0
    worker_timeout: float = 30.0
    max_retries: int = 3
    batch_size: int = 10
    reconnect_attempts: int = 10
    simulate_hardware: str | None = None
    log_level: str = "info"

    def coordinator_db_path(self) -> Path:
        """Where the coordinator's DuckDB file lives."""
        return Path(self.db_path) if self.db_path else Path(self.data_dir) / "dtf.duckdb"

    def worker_db_path(self, worker_id: str) -> Path:
        """Where a worker keeps its DuckDB outbox."""
        return Path(self.db_path) if self.db_path else Path(self.data_dir) / f"worker-{worker_id}.duckdb"

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def default_data_dir() -> str:
    """``DTF_DATA_DIR`` or ``./dtf-data``."""
    return os.environ.get("DTF_DATA_DIR", "./dtf-data")
