"""The sources' config files, key by key: what each maps to in DTF, or why it is ignored.

Users copy the deployment guide's ``coordinator.json`` / ``worker.json`` and the design's
``coordinator.yaml`` / ``worker.yaml`` as they are written (DESIGN.md §13). Every section and key those
files use is listed here once, so the decision for each is visible in one table:

* a Settings field name: the value is checked and used;
* :class:`Ignored`: DTF has no such thing; the value is accepted and reported once, with the reason,
  when the node starts;
* a special marker handled by :mod:`dtf_app.config` (the database type, security switches, HA section).

Only a setting that would change where data goes and cannot be honoured (``database.type =
"postgresql"``) is an error, and its message says what to write instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ignored:
    """A key (or whole section) DTF accepts but has no use for; ``reason`` is shown to the user."""

    reason: str


DATABASE_TYPE = "<database.type>"
SECURITY_SWITCH = "<security switch>"
AUTO_RECOVERY = "<auto_recovery>"
FOLDED_PORT = "<folded port>"
RETRY_SUBTASKS = "<retry_failed_subtasks>"

_PG = Ignored("only used by a PostgreSQL server; DTF keeps everything in one DuckDB file "
              "(database.path, default <data-dir>/dtf.duckdb)")

SECTIONS: dict[str, dict[str, str | Ignored] | Ignored] = {
    # -- the deployment guide's coordinator.json / worker.json
    "task_queue": {"max_retries": "max_retries", "batch_size": "batch_size"},
    "database": {"type": DATABASE_TYPE, "path": "db_path", "host": _PG, "port": _PG, "name": _PG,
                 "user": _PG, "password": _PG},
    "security": {"token_expiry": "token_expiry", "enabled": SECURITY_SWITCH, "api_keys_enabled": SECURITY_SWITCH,
                 "jwt_secret": Ignored("this build authenticates with API keys (X-API-Key); JWT sign-in is "
                                       "not available yet, so no JWT secret is used")},
    "redis": Ignored("DTF has no Redis: the task queue and worker registry live in the coordinator's own "
                     "replicated state and DuckDB"),
    "logging": {"level": "log_level", "format": "log_format", "path": "log_path"},
    "worker_management": {"heartbeat_interval": "heartbeat_interval", "worker_timeout": "worker_timeout",
                          "auto_recovery": AUTO_RECOVERY},
    "capabilities": {"additional_tags": "tags"},
    "task_execution": {"max_concurrent_tasks": "max_concurrent_tasks", "timeout": "task_timeout"},
    # -- the design's coordinator.yaml
    "server": {"host": "host", "port": "port", "workers_port": "workers_port", "dashboard_port": FOLDED_PORT},
    "task_scheduler": {"max_queue_size": Ignored("DTF bounds the queue by request size limits, not by a "
                                                 "count; every acknowledged task is kept"),
                       "aging_rate": "aging_rate", "preemption_threshold": "preemption_threshold",
                       "retry_backoff": "retry_backoff", "retry_backoff_max": "retry_backoff_max"},
    "dynamic_resource_management": {
        "enabled": "resource_management_enabled", "scale_up_threshold": "scale_up_threshold",
        "scale_down_threshold": "scale_down_threshold", "evaluation_interval": "evaluation_interval",
        "autoscale_hook": "autoscale_hook"},
    "multi_device_orchestrator": {
        "enabled": "orchestrator_enabled", "subtask_timeout": "subtask_timeout",
        "default_priority": "subtask_priority", "retry_limit": "subtask_max_retries",
        "retry_failed_subtasks": RETRY_SUBTASKS,
        "model_parallel_auto_splitting": Ignored("the orchestrator splits by data, function or hardware "
                                                 "(data_parallel, function_parallel, hardware_parallel); there is "
                                                 "no model-parallel strategy that would split a model itself")},
    "result_aggregator": Ignored("aggregates are computed on demand from DuckDB (dtf results --aggregate); "
                                 "there is no cache or look-back setting"),
    "health_monitor": {
        "check_interval": "health_check_interval", "failure_threshold": "health_failure_threshold",
        "recovery_attempts": "health_recovery_attempts", "cpu_threshold": "health_cpu_threshold",
        "memory_threshold": "health_memory_threshold", "disk_threshold": "health_disk_threshold",
        "temperature_threshold": "health_temperature_threshold", "load_threshold": "health_load_threshold",
        "network_threshold": "health_network_threshold", "cpu_critical": "health_cpu_critical",
        "memory_critical": "health_memory_critical", "disk_critical": "health_disk_critical",
        "temperature_critical": "health_temperature_critical", "load_critical": "health_load_critical",
        "network_critical": "health_network_critical"},
    "load_balancer": {"strategy": "balancer_strategy", "worker_cap": "worker_cap",
                      "task_cap_per_worker": "task_cap_per_worker"},
    # -- the design's worker.yaml (`worker` / `coordinator` as tables of these keys)
    "worker": {"id": "worker_id", "name": "worker_name", "hardware_id": "hardware_id", "hostname": "hostname"},
    "coordinator": {"url": "coordinator", "urls": "coordinator", "api_key": "api_key"},
    "execution": {"concurrent_tasks": "max_concurrent_tasks", "timeout": "task_timeout",
                  "working_dir": Ignored("each task runs in its own directory under <data-dir>/work (or its "
                                         "config.working_dir); start the worker where relative paths should "
                                         "resolve"),
                  "cache_dir": Ignored("DTF keeps no task cache; runners use the task's own directories")},
    "reporting": {"metrics_interval": "heartbeat_interval",
                  "result_batch_size": Ignored("results stream to the coordinator as they finish, batched "
                                               "per websocket frame automatically")},
    "health": {"report_interval": "health_report_interval", "cpu_threshold": "health_cpu_threshold",
               "memory_threshold": "health_memory_threshold", "disk_threshold": "health_disk_threshold",
               "temperature_threshold": "health_temperature_threshold", "load_threshold": "health_load_threshold",
               "network_threshold": "health_network_threshold", "cpu_critical": "health_cpu_critical",
               "memory_critical": "health_memory_critical", "disk_critical": "health_disk_critical"},
}
"""Section name -> {key: Settings field | Ignored | marker}, or Ignored for a whole section."""

TOP_LEVEL_ALIASES: dict[str, str] = {
    "coordinator_url": "coordinator", "coordinators": "coordinator", "additional_tags": "tags",
}
"""Flat keys of the guide's JSON files that are spelled differently from DTF's settings."""

DESIGN_TABLE_KEYS = {"worker": set(SECTIONS["worker"]), "coordinator": set(SECTIONS["coordinator"])}  # type: ignore[arg-type]
"""A ``worker`` / ``coordinator`` table with only these keys is the design's form, not a mode table."""

ENV_ALIASES: dict[str, str] = {
    "COORDINATOR_URL": "coordinator",
    "WORKER_ID": "worker_id",
    "COORDINATOR_ID": "node_id",
}
"""The sources' environment variables (Docker / Kubernetes examples) -> Settings fields (below DTF_*)."""

HA_ENV = {"ENABLE_HIGH_AVAILABILITY": "enabled", "HIGH_AVAILABILITY_PEERS": "peers"}
"""The Kubernetes example's HA variables -> keys of the ``high_availability`` section."""

CONFIG_FILE_ENV = ("DTF_CONFIG", "CONFIG_FILE")
"""Environment variables naming the config file, strongest first."""

HA_BOOL_KEYS = ("enabled",)
HA_STR_KEYS = ("coordinator_id", "consensus_protocol")
HA_INT_KEYS = ("election_timeout_min", "election_timeout_max", "heartbeat_interval", "state_replication_interval",
               "health_check_interval", "quorum_size", "state_snapshot_interval", "leader_lease_duration")
HA_KEYS = (*HA_BOOL_KEYS, *HA_STR_KEYS, *HA_INT_KEYS, "peers")
"""The design's ``high_availability`` block (timings in milliseconds); its semantics belong to Raft."""
