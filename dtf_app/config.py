"""Settings for every mode of ``dtf``.

Precedence (lowest first): defaults < TOML file (``--config``) < ``DTF_*`` environment < CLI flags.
The sources' files are accepted as they are written: the deployment guide's ``coordinator.json`` /
``worker.json`` and the design's ``coordinator.yaml`` / ``worker.yaml`` (what each of their keys maps to,
or why it is ignored, is the table in :mod:`dtf_app.config_sources`). ``${VAR}`` in a file's values is
expanded from the environment; ``CONFIG_FILE`` names the file beside ``DTF_CONFIG``; the sources'
``COORDINATOR_URL``, ``WORKER_ID``, ``COORDINATOR_ID``, ``ENABLE_HIGH_AVAILABILITY`` and
``HIGH_AVAILABILITY_PEERS`` variables count as environment settings, below the ``DTF_*`` ones.

Loading is strict but helpful: an unknown key names its closest matches, a wrong type names the expected
one, an unsupported value (``database.type = "postgresql"``) says what is supported, and every message
says where the value came from (file, environment variable or flag) so the user knows what to fix.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtf_app import config_sources as sources_table
from dtf_app.errors import ConfigError

__all__ = ["ConfigError", "Settings", "load_settings", "load_settings_with_sources", "validate"]


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
    snapshot_every: int = 20_000
    """Coordinator: snapshot the state (and restart the command log) after this many log entries."""
    snapshot_keep: int = 5_000
    """Coordinator: log entries kept behind each snapshot when the log is compacted; a follower further
    behind catches up by receiving the snapshot (its DuckDB store is then rebuilt from it)."""
    subscriber_buffer: int = 10_000
    """Coordinator: pushes queued per ``/ws`` subscriber; beyond that a slow reader is told it missed some."""
    orchestrator_enabled: bool = True
    """Coordinator: accept orchestrated tasks (``POST /api/orchestrate``; multi_device_orchestrator.enabled)."""
    subtask_timeout: float | None = None
    """Coordinator: timeout_seconds of a subtask whose task_data gives none (multi_device_orchestrator)."""
    subtask_priority: int | None = None
    """Coordinator: priority of a subtask whose request gives none (multi_device_orchestrator.default_priority)."""
    subtask_max_retries: int | None = None
    """Coordinator: max_retries of a subtask whose task_data gives none (multi_device_orchestrator.retry_limit;
    0 when retry_failed_subtasks is false); default max_retries."""
    aging_rate: float = 1 / 6
    """Coordinator: priority points a waiting task gains per second (task_scheduler.aging_rate); a priority-0
    task reaches the top after 100 / aging_rate seconds (600 s by default). 0 turns aging off."""
    preemption_threshold: int = 0
    """Coordinator: a ready task this many priority points above a running one may preempt it when no slot
    is free (task_scheduler.preemption_threshold); 0 = never preempt."""
    retry_backoff: float = 1.0
    """Coordinator: seconds before the first retry of a failed attempt, doubling per retry (0 = none)."""
    retry_backoff_max: float = 60.0
    """Coordinator: the longest retry backoff, in seconds."""
    balancer_strategy: str = "fair_share"
    """Coordinator: load_balancer.strategy: fair_share | least_loaded | performance_aware | packed."""
    worker_cap: int = 10
    """Coordinator: load_balancer.worker_cap: how many capable free workers each placement compares."""
    task_cap_per_worker: int | None = None
    """Coordinator: load_balancer.task_cap_per_worker: the most tasks one worker holds at once (running and
    queued on it); default its slots plus the prefetch depth."""
    token_expiry: int = 3600
    """Lifetime of a JWT in seconds (``security.token_expiry`` in the deployment guide's JSON)."""
    advertise_url: str | None = None
    """Coordinator: the URL other nodes, workers and clients reach this node at (default from host/port)."""
    cluster_secret: str | None = None
    """Shared secret that authenticates Raft peer traffic (prefer ``DTF_CLUSTER_SECRET`` or a file)."""
    cluster_secret_file: str | None = None
    """A file holding the cluster secret (e.g. a mounted Kubernetes Secret)."""
    tls_cert: str | None = None
    """Coordinator: PEM certificate; with ``tls_key`` the node serves HTTPS and peers dial it over wss://."""
    tls_key: str | None = None
    """Coordinator: the PEM private key of ``tls_cert``."""
    peer_ca: str | None = None
    """Coordinator: PEM CA bundle that peers' certificates are verified against (default: system store)."""
    heartbeat_ms: int = 50
    """Raft heartbeat interval in milliseconds (one tick of the Raft clock)."""
    election_timeout_ms: int = 300
    """Raft election timeout in milliseconds (randomised between this and twice this)."""
    peers_include_self: bool = False
    """The peer list names every member, this node too (``HIGH_AVAILABILITY_PEERS``): this node must be
    found in it, by node id or advertised URL."""
    log_path: str | None = None
    """Directory for the node's log file (``logging.path``); logs go to stderr only when unset."""
    log_format: str = "text"
    """``text`` or ``json`` (one JSON object per line), for the log file and stderr."""
    hostname: str | None = None
    """Worker: the host name it reports (default: the machine's)."""
    worker_name: str | None = None
    """Worker: a display name shown in views (the design's ``worker.name``)."""
    hardware_id: str | None = None
    """Worker: a label for its hardware class shown in views (the design's ``worker.hardware_id``)."""
    task_timeout: float | None = None
    """Worker: the longest a task without its own ``timeout_seconds`` may run (``execution.timeout``)."""
    pid_file: str | None = None
    """A file the node writes its process id to while it runs (removed on a clean exit)."""
    workers_port: int | None = None
    """Coordinator: a second port serving the same API (the design's ``server.workers_port``)."""
    high_availability: dict[str, Any] = field(default_factory=dict)
    """The ``high_availability`` section as written (shape-checked); its semantics belong to Raft."""
    notices: list[tuple[str, str]] = field(default_factory=list, compare=False, repr=False,
                                           metadata={"internal": True})
    """(level, message) about the config file (ignored keys, folded ports), logged once at start."""
    resource_management_enabled: bool = True
    """Coordinator: evaluate utilisation and give scaling advice (``dynamic_resource_management.enabled``);
    task reservations (``resources``) are honoured either way."""
    scale_up_threshold: float = 0.8
    """Coordinator: utilisation (0-1, the busiest resource) at or above which more capacity is advised."""
    scale_down_threshold: float = 0.3
    """Coordinator: utilisation at or below which (nothing waiting) less capacity is advised."""
    evaluation_interval: float = 300.0
    """Coordinator: seconds between two utilisation evaluations (``dynamic_resource_management``)."""
    autoscale_hook: str | None = None
    """Coordinator: a command (split like a shell would, no shell run) called by the leader with the
    recommendation JSON on stdin when utilisation crosses a threshold."""
    health_check_interval: float = 30.0
    """Coordinator: seconds between two samples of its own health (``health_monitor.check_interval``)."""
    health_failure_threshold: int = 3
    """Coordinator: infrastructure failures in a row after which a worker is quarantined."""
    health_recovery_attempts: int = 2
    """Coordinator: canary rounds a quarantined worker gets before it stays out."""
    health_report_interval: float | None = None
    """Worker: seconds between two health samples (``health.report_interval``); default every heartbeat."""
    health_cpu_threshold: float = 90.0
    """Warning threshold of CPU use in percent (the worker's ``health.cpu_threshold``)."""
    health_memory_threshold: float = 90.0
    """Warning threshold of memory use in percent."""
    health_disk_threshold: float = 95.0
    """Warning threshold of disk use in percent (the data dir's disk)."""
    health_temperature_threshold: float = 85.0
    """Warning threshold of the hottest sensor in °C (where the machine has sensors)."""
    health_load_threshold: float = 2.0
    """Warning threshold of the 1-minute load average per CPU."""
    health_network_threshold: float | None = None
    """Warning threshold of network traffic in MB/s (sent + received); off by default."""
    health_cpu_critical: float | None = None
    """Critical threshold of CPU use (default halfway from the warning threshold to 100)."""
    health_memory_critical: float | None = None
    """Critical threshold of memory use (default halfway from the warning threshold to 100)."""
    health_disk_critical: float | None = None
    """Critical threshold of disk use (default halfway from the warning threshold to 100)."""
    health_temperature_critical: float | None = None
    """Critical temperature (default the warning threshold + 10 °C)."""
    health_load_critical: float | None = None
    """Critical load per CPU (default twice the warning threshold)."""
    health_network_critical: float | None = None
    """Critical network traffic in MB/s (default twice the warning threshold)."""
    test_python: str | None = None
    """Worker: the Python that runs ``dtf pytest`` chunks (has pytest and the suite's dependencies);
    default the worker's own interpreter (a frozen worker: ``DTF_PYTHON`` or ``python3`` on PATH)."""

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


MODES = ("coordinator", "worker", "peer")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SUPPORTED_DATABASES = ("duckdb",)

# The kind of each field, used to parse strings (env, flags) and to check values read from files.
_KINDS: dict[str, str] = {
    "mode": "str", "host": "str", "port": "int", "data_dir": "str", "db_path": "optstr",
    "coordinator": "urls", "api_key": "optstr", "node_id": "optstr", "peers": "peers",
    "max_concurrent_tasks": "int", "tags": "list", "worker_id": "optstr", "heartbeat_interval": "float",
    "worker_timeout": "float", "max_retries": "int", "batch_size": "int", "reconnect_attempts": "int",
    "simulate_hardware": "optstr", "log_level": "str", "token_expiry": "int", "snapshot_every": "int",
    "snapshot_keep": "int",
    "advertise_url": "optstr", "cluster_secret": "optstr", "cluster_secret_file": "optstr",
    "tls_cert": "optstr", "tls_key": "optstr", "peer_ca": "optstr",
    "heartbeat_ms": "int", "election_timeout_ms": "int", "peers_include_self": "bool",
    "log_path": "optstr", "log_format": "str", "hostname": "optstr", "worker_name": "optstr",
    "hardware_id": "optstr", "task_timeout": "optfloat", "workers_port": "optint", "high_availability": "ha",
    "pid_file": "optstr",
    "subscriber_buffer": "int",
    "orchestrator_enabled": "bool", "subtask_timeout": "optfloat", "subtask_priority": "optint",
    "subtask_max_retries": "optint",
    "test_python": "optstr",
    "aging_rate": "float", "preemption_threshold": "int", "retry_backoff": "float", "retry_backoff_max": "float",
    "balancer_strategy": "str", "worker_cap": "int", "task_cap_per_worker": "optint",
    "resource_management_enabled": "bool", "scale_up_threshold": "float", "scale_down_threshold": "float",
    "evaluation_interval": "float", "autoscale_hook": "optstr",
    "health_check_interval": "float", "health_failure_threshold": "int", "health_recovery_attempts": "int",
    "health_report_interval": "optfloat",
    "health_cpu_threshold": "float", "health_memory_threshold": "float", "health_disk_threshold": "float",
    "health_temperature_threshold": "float", "health_load_threshold": "float", "health_network_threshold": "optfloat",
    "health_cpu_critical": "optfloat", "health_memory_critical": "optfloat", "health_disk_critical": "optfloat",
    "health_temperature_critical": "optfloat", "health_load_critical": "optfloat",
    "health_network_critical": "optfloat",
}
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Settings) if not f.metadata.get("internal"))
assert set(_KINDS) == set(FIELD_NAMES), "every Settings field needs a kind"
LOG_FORMATS = ("text", "json")

_ALIASES = sources_table.TOP_LEVEL_ALIASES
_SECTIONS = sources_table.SECTIONS
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class _Unset:
    """A file value that was ``${VAR}`` with VAR unset: an error unless an env var or flag overrides it."""

    var: str
    where: str
# Tables that only apply to some modes ([coordinator] / [worker] in dtf.toml).
_MODE_TABLES = {"coordinator": ("coordinator", "peer"), "worker": ("worker", "peer"), "peer": ("peer",)}


def load_settings(args: Any = None, *, mode: str | None = None) -> Settings:
    """Build Settings from defaults < config file < ``DTF_*`` environment < flags.

    ``args`` is an ``argparse.Namespace`` (attributes named like Settings fields; ``None`` means not
    given; ``config`` names the config file) or a plain dict of the same, or None. ``mode`` overrides
    the mode for choosing the ``[coordinator]``/``[worker]`` tables. Raises ConfigError.
    """
    return load_settings_with_sources(args, mode=mode)[0]


def load_settings_with_sources(args: Any = None, *, mode: str | None = None,
                               environ: Mapping[str, str] | None = None) -> tuple[Settings, dict[str, str]]:
    """Like load_settings, plus where each non-default field came from (``"file"``, ``"env"``, ``"flag"``)."""
    flags = _flags_from(args)
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    notices: list[tuple[str, str]] = []

    # The mode decides which config tables apply, so settle it first from the strongest source.
    effective_mode = mode or flags.get("mode") or env.get("DTF_MODE") or None
    config_path = flags.pop("config", None) or next(
        (env[name] for name in sources_table.CONFIG_FILE_ENV if env.get(name)), None)
    if config_path:
        file_values = load_config_file(str(config_path), mode=effective_mode, environ=env)
        notices += file_values.pop("notices", [])
        effective_mode = effective_mode or file_values.get("mode")
        values.update(file_values)
        sources.update(dict.fromkeys(file_values, "file"))
    # The sources' own variable names (Docker/Kubernetes examples), weaker than DTF_*.
    for var, name in sources_table.ENV_ALIASES.items():
        raw = env.get(var)
        if raw and not env.get(f"DTF_{name.upper()}"):
            values[name] = _coerce(name, raw, f"environment variable {var}", parse=True)
            sources[name] = "env"
    ha_env = _ha_from_env(env)
    if ha_env:
        values["high_availability"] = {**values.get("high_availability", {}), **ha_env}
        sources["high_availability"] = "env"
    for name in FIELD_NAMES:
        raw = env.get(f"DTF_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, f"environment variable DTF_{name.upper()}", parse=True)
            sources[name] = "env"
    for name, raw in flags.items():
        values[name] = _coerce(name, raw, "--" + name.replace("_", "-"), parse=True)
        sources[name] = "flag"
    if mode is not None:
        values["mode"] = mode
        sources["mode"] = "flag"
    for name, value in values.items():
        if isinstance(value, _Unset):
            raise ConfigError(f"{value.where} refers to ${{{value.var}}}, but the environment variable "
                              f"{value.var} is not set: export {value.var}=... (or give --{name.replace('_', '-')}"
                              f" / DTF_{name.upper()})")
    settings = Settings(**values, notices=notices)
    validate(settings, sources)
    return settings, sources


def _flags_from(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, Mapping):
        unknown = [k for k in args if k not in FIELD_NAMES and k != "config"]
        if unknown:
            raise ConfigError(_unknown_message(unknown[0], "settings", FIELD_NAMES))
        items = dict(args)
    else:
        # A Namespace carries the CLI's other options too (command, json ...): take only settings.
        items = {k: getattr(args, k) for k in (*FIELD_NAMES, "config") if hasattr(args, k)}
    return {k: v for k, v in items.items() if v is not None}


def load_config_file(path: str, *, mode: str | None = None,
                     environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read a TOML, JSON (``.json``) or YAML (``.yaml``/``.yml``) config file into checked Settings values.

    The result may carry ``"notices"``: (level, message) pairs about keys that were accepted but ignored.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    notices: list[tuple[str, str]] = []
    suffix = file.suffix.lower()
    if suffix == ".json":
        import json

        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path}, line {exc.lineno} column {exc.colno}: "
                              f"invalid JSON: {exc.msg}") from None
    elif suffix in (".yaml", ".yml"):
        data = _load_yaml(text, path, notices)
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc} "
                              "(use a .json or .yaml suffix for JSON or YAML config files)") from None
    if data is None and suffix in (".yaml", ".yml"):
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a table/object of settings, "
                          f"got {type(data).__name__}")
    values = normalise_config(data, where=f"config file {path}", mode=mode, notices=notices,
                              environ=os.environ if environ is None else environ)
    if notices:
        values["notices"] = notices
    return values


def _load_yaml(text: str, path: str, notices: list[tuple[str, str]]) -> Any:
    import yaml  # only for YAML files: keeps other start-ups lean

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as first:
        # Copied from a Markdown page, a file may keep the code fence (```); a fence line is never YAML.
        lines = text.splitlines()
        kept = [line for line in lines if not line.strip().startswith("```")]
        if len(kept) != len(lines):
            try:
                data = yaml.safe_load("\n".join(kept))
            except yaml.YAMLError:
                pass
            else:
                notices.append(("warning", f"config file {path}: ignored a Markdown code fence line (```)"))
                return data
        mark = getattr(first, "problem_mark", None)
        at = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(first, "problem", None) or str(first)
        raise ConfigError(f"config file {path}{at}: invalid YAML: {problem}") from None


def normalise_config(data: Mapping[str, Any], *, where: str, mode: str | None = None,
                     notices: list[tuple[str, str]] | None = None,
                     environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Map a config document (ours, the deployment guide's or the design's) to checked Settings values.

    Ignored keys are reported through ``notices`` (when given); ``${VAR}`` is expanded from ``environ``.
    """
    notes: list[tuple[str, str]] = [] if notices is None else notices
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    tables: list[tuple[str, Mapping[str, Any]]] = []
    known = (*FIELD_NAMES, *_ALIASES, *_SECTIONS)
    for key, value in data.items():
        design_keys = sources_table.DESIGN_TABLE_KEYS.get(key)
        if design_keys is not None and isinstance(value, Mapping) and value and set(value) <= design_keys:
            # The design's worker.yaml: `worker: {id, name, hardware_id}`, `coordinator: {url, api_key}`.
            values.update(_section(key, value, where, notes, env))
            continue
        if key in _MODE_TABLES and isinstance(value, Mapping):
            # [coordinator] / [worker] tables: applied after the top level, only for their modes.
            tables.append((key, value))
            continue
        if key == "high_availability":
            values["high_availability"] = _ha_section(value, where, env)
            continue
        if key in _SECTIONS and design_keys is None:
            values.update(_section(key, value, where, notes, env))
            continue
        name = _ALIASES.get(key, key)
        if name not in FIELD_NAMES:
            raise ConfigError(_unknown_message(key, where, known))
        values[name] = _coerce(name, _expand(value, f"{where}: key {key!r}", env, defer=True),
                               f"{where}: key {key!r}", parse=False)
    effective_mode = mode or values.get("mode")
    for table, body in tables:
        if effective_mode is None or effective_mode in _MODE_TABLES[table]:
            values.update(normalise_config(body, where=f"{where} [{table}]", mode=effective_mode, notices=notes,
                                           environ=env))
    return values


def _section(section: str, value: Any, where: str, notices: list[tuple[str, str]],
             env: Mapping[str, str]) -> dict[str, Any]:
    spec = _SECTIONS[section]
    if isinstance(spec, sources_table.Ignored):
        _expand(value, f"{where}: key {section!r}", env, defer=False)
        notices.append(("warning", f"{where}: section {section!r} ignored: {spec.reason}"))
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: key {section!r} must be a table/object, got {type(value).__name__}")
    out: dict[str, Any] = {}
    ignored: dict[str, list[str]] = {}
    no_subtask_retries = False
    for key, item in value.items():
        dotted = f"{section}.{key}"
        if key not in spec:
            raise ConfigError(_unknown_message(key, f"{where} [{section}]", tuple(spec)))
        target = spec[key]
        if isinstance(target, sources_table.Ignored):
            _expand(item, f"{where}: key {dotted!r}", env, defer=False)
            ignored.setdefault(target.reason, []).append(dotted)
            continue
        if target == sources_table.DATABASE_TYPE:
            if not isinstance(item, str) or item.lower() not in SUPPORTED_DATABASES:
                raise ConfigError(
                    f"{where}: {dotted} = {item!r} is not supported; DTF stores everything in DuckDB, so the "
                    f"supported values are: {', '.join(SUPPORTED_DATABASES)}. Write \"type\": \"duckdb\" "
                    "(optionally \"path\": \"/var/lib/dtf/dtf.duckdb\"; the default is <data-dir>/dtf.duckdb); "
                    "the PostgreSQL connection keys beside it are then ignored")
            continue
        if target == sources_table.SECURITY_SWITCH:
            if item is not True:
                raise ConfigError(f"{where}: {dotted} = {item!r} is not supported: DTF always authenticates "
                                  "API calls (only true is accepted; remove the key to use the default)")
            continue
        if target == sources_table.AUTO_RECOVERY:
            if item is not True:
                ignored.setdefault("DTF always puts a lost worker's tasks back in the queue (bounded by "
                                   "task_queue.max_retries); it cannot be switched off", []).append(dotted)
            continue
        if target == sources_table.FOLDED_PORT:
            notices.append(("warning", f"{where}: {dotted} ignored: there is no web dashboard in this build; "
                                       "the terminal dashboard (dtf dash) uses the API port"))
            continue
        if target == sources_table.RETRY_SUBTASKS:
            if not isinstance(item, bool):
                raise ConfigError(f"{where}: {dotted} must be true or false, got {item!r}")
            no_subtask_retries = not item
            continue
        out[target] = _coerce(target, _expand(item, f"{where}: key {dotted!r}", env, defer=True),
                              f"{where}: key {dotted!r}", parse=False)
    if no_subtask_retries:
        out["subtask_max_retries"] = 0  # retry_failed_subtasks = false: a failed subtask is not run again
    for reason, keys in ignored.items():
        notices.append(("warning", f"{where}: {', '.join(keys)} ignored: {reason}"))
    return out


def _expand(value: Any, where: str, env: Mapping[str, str], *, defer: bool) -> Any:
    """Expand ``${VAR}`` in strings (recursively). An unset VAR in a whole-string value becomes _Unset when
    ``defer`` (a flag or variable may still override the setting), else it is an error naming VAR."""
    if isinstance(value, str):
        missing = [m.group(1) for m in _ENV_VAR.finditer(value) if m.group(1) not in env]
        if missing:
            if defer:
                return _Unset(missing[0], where)
            raise ConfigError(f"{where} refers to ${{{missing[0]}}}, but the environment variable {missing[0]} "
                              f"is not set: export {missing[0]}=... or write the value into the file")
        return _ENV_VAR.sub(lambda m: env[m.group(1)], value)
    if isinstance(value, list | tuple):
        return [_expand(v, where, env, defer=False) for v in value]
    if isinstance(value, Mapping):
        return {k: _expand(v, where, env, defer=False) for k, v in value.items()}
    return value


def _ha_section(value: Any, where: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Shape-check the ``high_availability`` section; returns it as written (peers normalised to a list)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: key 'high_availability' must be a table/object, got {type(value).__name__}")
    value = _expand(dict(value), f"{where}: key 'high_availability'", env, defer=False)
    out: dict[str, Any] = {}
    for key, item in value.items():
        at = f"{where}: key 'high_availability.{key}'"
        if key not in sources_table.HA_KEYS:
            raise ConfigError(_unknown_message(key, f"{where} [high_availability]", sources_table.HA_KEYS))
        if key in sources_table.HA_BOOL_KEYS and not isinstance(item, bool):
            raise ConfigError(f"{at}: expected true or false, got {_describe(item)}")
        if key in sources_table.HA_STR_KEYS and not isinstance(item, str):
            raise ConfigError(f"{at}: expected a string, got {_describe(item)}")
        if key == "consensus_protocol" and item.lower() != "raft":
            raise ConfigError(f"{at}: {item!r} is not supported; DTF's coordinators agree through Raft "
                              "(write \"raft\" or remove the key)")
        if key in sources_table.HA_INT_KEYS and (isinstance(item, bool) or not isinstance(item, int) or item < 1):
            raise ConfigError(f"{at}: expected a positive integer (milliseconds or a count), got {_describe(item)}")
        if key == "peers":
            item = _ha_peers(item, at)
        out[key] = item
    return out


def _ha_peers(item: Any, where: str) -> list[Any]:
    if isinstance(item, str):
        item = [part.strip() for part in item.split(",") if part.strip()]
    if not isinstance(item, list):
        raise ConfigError(f"{where}: expected a list of peers ({{id, host, port}} or \"host:port\"), "
                          f"got {_describe(item)}")
    for peer in item:
        if isinstance(peer, str) and peer:
            continue
        if isinstance(peer, Mapping) and isinstance(peer.get("host"), str) and \
                isinstance(peer.get("port"), int) and set(peer) <= {"id", "host", "port"}:
            continue
        raise ConfigError(f"{where}: each peer must be {{id, host, port}} or \"host:port\", got {_describe(peer)}")
    return list(item)


def _ha_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var, key in sources_table.HA_ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        if key == "enabled":
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"environment variable {var}: expected true or false, got {raw!r}")
            out[key] = lowered in ("true", "1", "yes")
        else:
            out[key] = _ha_peers(raw, f"environment variable {var}")
    return out


def _unknown_message(key: str, where: str, known: tuple[str, ...] | list[str]) -> str:
    import difflib  # only on the error path: keeps `dtf --version` lean

    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        f"known keys: {', '.join(sorted(known))}"
    return f"{where}: unknown key {key!r}; {hint}"


def _coerce(name: str, value: Any, where: str, *, parse: bool) -> Any:
    """Check (file values) or parse (strings from env/flags) one setting into its field's type."""
    kind = _KINDS[name]
    if isinstance(value, _Unset):
        return value  # checked after env and flags had their chance to override it
    if parse and isinstance(value, str):
        value = _parse_string(kind, value, where)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if kind == "optint" and value is None or kind == "optfloat" and value is None:
        return None
    if kind == "ha":
        return _ha_section(value, where, os.environ)
    if kind in ("str", "optstr"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if kind in ("int", "optint"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if kind in ("float", "optfloat"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number of seconds, got {_describe(value)}")
        return float(value)
    if kind in ("list", "urls"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings (or one string), got {_describe(value)}")
        items = [v.strip() for v in value if v.strip()]
        if kind == "urls":
            items = [v.rstrip("/") for v in items]
        return items
    if kind == "peers":
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in value.items()):
            raise ConfigError(f"{where}: expected a table of node id = URL, got {_describe(value)}")
        return {k: v.rstrip("/") for k, v in value.items()}
    raise AssertionError(kind)


def _parse_string(kind: str, text: str, where: str) -> Any:
    text = text.strip()
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    if kind == "ha":
        import json

        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: expected a JSON object such as '{{\"enabled\": true}}': {exc.msg}") from None
        return _ha_section(data, where, os.environ)
    if kind in ("int", "optint"):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
    if kind in ("float", "optfloat"):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number of seconds, got {text!r}") from None
    if kind in ("list", "urls"):
        return [part for part in text.split(",")]
    if kind == "peers":
        from dtf_app.cluster import ClusterConfigError, parse_peer_entries

        # id=URL, URL or host:port entries (ids derived from hosts): the rule of dtf_app/cluster.py.
        try:
            return dict(parse_peer_entries(text, where))
        except ClusterConfigError as exc:
            raise ConfigError(f"{exc} (expected id=URL or host:port entries separated by commas, e.g. "
                              "n1=http://10.0.0.1:8080,n2=http://10.0.0.2:8080)") from None
    return text


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def validate(settings: Settings, sources: Mapping[str, str] | None = None) -> None:
    """Check ranges and cross-field rules; raises ConfigError naming the setting and what is accepted."""
    def origin(name: str) -> str:
        source = (sources or {}).get(name)
        return {"flag": f"--{name.replace('_', '-')}", "env": f"DTF_{name.upper()}",
                "file": f"{name} (config file)"}.get(source or "", name)

    if settings.mode not in MODES:
        raise ConfigError(f"{origin('mode')}: mode must be one of {', '.join(MODES)}, got {settings.mode!r}")
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"{origin('port')}: port must be between 0 and 65535 (0 = any free port), "
                          f"got {settings.port}")
    for name in ("heartbeat_interval", "worker_timeout"):
        if not getattr(settings, name) > 0:
            raise ConfigError(f"{origin(name)}: {name} must be a positive number of seconds, "
                              f"got {getattr(settings, name)}")
    if settings.worker_timeout <= settings.heartbeat_interval:
        raise ConfigError(f"{origin('worker_timeout')}: worker_timeout ({settings.worker_timeout} s) must be "
                          f"longer than heartbeat_interval ({settings.heartbeat_interval} s), or every worker "
                          "would be declared lost between two heartbeats")
    minimums = {"max_concurrent_tasks": 1, "batch_size": 1, "max_retries": 0, "reconnect_attempts": 0,
                "token_expiry": 1, "snapshot_every": 1, "snapshot_keep": 0, "heartbeat_ms": 1, "election_timeout_ms": 2,
                "subscriber_buffer": 1}
    for name, low, high, accepted in (("subtask_timeout", 1e-9, 7 * 24 * 3600, "above 0 and at most 604800"),
                                      ("subtask_priority", 0, 100, "from 0 to 100"),
                                      ("subtask_max_retries", 0, 100, "from 0 to 100")):
        value = getattr(settings, name)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{origin(name)}: {name} must be {accepted}, got {value}")
    if not 0 <= settings.scale_down_threshold < settings.scale_up_threshold <= 1:
        raise ConfigError(f"{origin('scale_up_threshold')} / {origin('scale_down_threshold')}: utilisation "
                          "thresholds must satisfy 0 <= scale_down_threshold < scale_up_threshold <= 1, got "
                          f"{settings.scale_down_threshold} and {settings.scale_up_threshold}")
    for name in ("evaluation_interval", "health_check_interval"):
        if not getattr(settings, name) > 0:
            raise ConfigError(f"{origin(name)}: {name} must be a positive number of seconds, got {getattr(settings, name)}")
    if settings.health_report_interval is not None and not settings.health_report_interval > 0:
        raise ConfigError(f"{origin('health_report_interval')}: health_report_interval must be a positive number "
                          f"of seconds, got {settings.health_report_interval}")
    for name in [f.name for f in dataclasses.fields(Settings) if f.name.startswith("health_")
                 and f.name.endswith(("_threshold", "_critical")) and f.name != "health_failure_threshold"]:
        value = getattr(settings, name)
        if value is not None and not value >= 0:
            raise ConfigError(f"{origin(name)}: {name} must be a number of at least 0, got {value}")
    if settings.autoscale_hook is not None:
        import shlex

        try:
            hook = shlex.split(settings.autoscale_hook)
        except ValueError as exc:
            raise ConfigError(f"{origin('autoscale_hook')}: cannot split the command {settings.autoscale_hook!r}: "
                              f"{exc}") from None
        if not hook:
            raise ConfigError(f"{origin('autoscale_hook')}: the autoscale hook command is empty")
    minimums.update(health_failure_threshold=1, health_recovery_attempts=0)
    for name, minimum in minimums.items():
        if getattr(settings, name) < minimum:
            raise ConfigError(f"{origin(name)}: {name} must be at least {minimum}, got {getattr(settings, name)}")
    from dtf_app.protocol import BALANCER_STRATEGIES as STRATEGIES

    if settings.balancer_strategy not in STRATEGIES:
        raise ConfigError(f"{origin('balancer_strategy')}: load_balancer.strategy must be one of "
                          f"{', '.join(STRATEGIES)}, got {settings.balancer_strategy!r}")
    for name, low, high, accepted in (("aging_rate", 0, 1e6, "a number of priority points per second, 0 or more"),
                                      ("preemption_threshold", 0, 100, "an integer from 0 (off) to 100"),
                                      ("retry_backoff", 0, 86400, "0 (none) to 86400 seconds"),
                                      ("retry_backoff_max", 0, 86400, "0 to 86400 seconds"),
                                      ("worker_cap", 1, 1_000_000, "at least 1"),
                                      ("task_cap_per_worker", 1, 1_000_000, "at least 1")):
        value = getattr(settings, name)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{origin(name)}: {name} must be {accepted}, got {value}")
    if settings.election_timeout_ms < 2 * settings.heartbeat_ms:
        raise ConfigError(f"{origin('election_timeout_ms')}: the election timeout ({settings.election_timeout_ms} ms) "
                          f"must be at least twice the heartbeat ({settings.heartbeat_ms} ms)")
    if settings.mode == "worker":
        given = [name for name in ("tls_cert", "tls_key", "peer_ca") if getattr(settings, name)]
        if given:
            raise ConfigError(f"{origin(given[0])}: TLS certificates are coordinator settings; a worker "
                              "trusts an https:// coordinator through the system store or SSL_CERT_FILE")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"{origin('log_level')}: log level must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {settings.log_level!r}")
    settings.log_level = settings.log_level.lower()
    if not settings.coordinator:
        raise ConfigError(f"{origin('coordinator')}: at least one coordinator URL is needed")
    for url in [*settings.coordinator, *settings.peers.values(), *filter(None, [settings.advertise_url])]:
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
            name = "coordinator" if url in settings.coordinator else (
                "advertise_url" if url == settings.advertise_url else "peers")
            raise ConfigError(f"{origin(name)}: {url!r} is not a URL; expected http://HOST:PORT or https://HOST:PORT")
    from dtf_app.protocol import id_problem

    for name in ("worker_id", "node_id"):
        value = getattr(settings, name)
        problem = id_problem(value, origin(name)) if value is not None else None
        if problem:
            raise ConfigError(problem)
    for peer in settings.peers:
        problem = id_problem(peer, f"{origin('peers')}: node id {peer!r}")
        if problem:
            raise ConfigError(problem)
    for name in ("host", "data_dir"):
        if not getattr(settings, name):
            raise ConfigError(f"{origin(name)}: {name} must not be empty")
    if settings.log_format.lower() not in LOG_FORMATS:
        raise ConfigError(f"{origin('log_format')}: log format must be one of {', '.join(LOG_FORMATS)}, "
                          f"got {settings.log_format!r}")
    settings.log_format = settings.log_format.lower()
    if settings.task_timeout is not None and not settings.task_timeout > 0:
        raise ConfigError(f"{origin('task_timeout')}: task_timeout must be a positive number of seconds, "
                          f"got {settings.task_timeout}")
    if settings.workers_port is not None and not 0 <= settings.workers_port <= 65535:
        raise ConfigError(f"{origin('workers_port')}: workers_port must be between 0 and 65535, "
                          f"got {settings.workers_port}")
    if settings.simulate_hardware and not Path(settings.simulate_hardware).is_file():
        raise ConfigError(f"{origin('simulate_hardware')}: hardware profile {settings.simulate_hardware} "
                          "does not exist (examples are in assets/hardware/*.json)")


def check_high_availability(settings: Settings, sources: Mapping[str, str]) -> None:
    """Turn the sources' ``high_availability`` section into cluster settings (one rule, dtf_app/cluster.py).

    The section comes from a config file (the guide's ``{"enabled": true}``, the design's block with
    ``coordinator_id``, peers as ``{id, host, port}`` without this node, timings in ms) or from the
    StatefulSet's ``ENABLE_HIGH_AVAILABILITY`` / ``HIGH_AVAILABILITY_PEERS`` (every pod, this one too);
    ``--peers`` / ``DTF_PEERS`` win over both. ``enabled`` with no peers is a one-member cluster, which
    every coordinator is anyway: start and say so.
    """
    ha = settings.high_availability
    if settings.mode == "worker":
        if ha:
            settings.notices.append(("info", "high_availability settings apply to coordinators; a worker "
                                             "ignores them"))
        return
    enabled = ha.get("enabled")
    from_env = sources.get("high_availability") == "env" and bool(os.environ.get("HIGH_AVAILABILITY_PEERS"))
    listed = ha.get("peers") or []
    if listed and enabled is False and not settings.peers:
        if from_env:
            raise ConfigError("ENABLE_HIGH_AVAILABILITY is false but HIGH_AVAILABILITY_PEERS lists peers: set "
                              "ENABLE_HIGH_AVAILABILITY=true, or remove the peer list for a single coordinator")
        settings.notices.append(("warning", "high_availability.peers are not used: high_availability.enabled "
                                            "is false, so this coordinator runs alone"))
        listed = []
    if listed and not settings.peers:
        from dtf_app.cluster import ClusterConfigError, parse_peer_entries

        where = "HIGH_AVAILABILITY_PEERS" if from_env else "high_availability.peers"
        try:
            settings.peers = dict(parse_peer_entries(listed, where))
        except ClusterConfigError as exc:
            raise ConfigError(str(exc)) from None
        settings.peers_include_self = settings.peers_include_self or from_env
    if settings.node_id is None and isinstance(ha.get("coordinator_id"), str):
        settings.node_id = ha["coordinator_id"]
    # The design's timings (ms) map to the Raft clock unless a flag or DTF_* variable set them.
    if "heartbeat_ms" not in sources and isinstance(ha.get("heartbeat_interval"), int):
        settings.heartbeat_ms = max(1, ha["heartbeat_interval"])
    if "election_timeout_ms" not in sources and isinstance(ha.get("election_timeout_min"), int):
        settings.election_timeout_ms = max(2 * settings.heartbeat_ms, ha["election_timeout_min"])
    unused = [key for key in ("election_timeout_max", "state_replication_interval", "health_check_interval",
                              "state_snapshot_interval", "leader_lease_duration") if key in ha]
    if unused:
        settings.notices.append(("info", f"high_availability.{', '.join(unused)}: not used (DTF's Raft "
                                         "randomises elections between the election timeout and twice it, "
                                         "replicates on every commit, leases by CheckQuorum and snapshots by "
                                         "entry count)"))
    quorum = ha.get("quorum_size")
    if isinstance(quorum, int) and settings.peers:
        members = len(settings.peers) + (0 if settings.peers_include_self or settings.node_id in settings.peers
                                         else 1)
        if quorum != members // 2 + 1:
            raise ConfigError(f"high_availability.quorum_size = {quorum}, but a cluster of {members} "
                              f"coordinators has a quorum of {members // 2 + 1} (a majority): fix or remove it")
    if enabled and not settings.peers:
        settings.notices.append(("info", "high availability enabled with no other members: starting as a "
                                         "one-member Raft cluster"))
    if ha.get("consensus_protocol") not in (None, "raft"):
        raise ConfigError(f"high_availability.consensus_protocol = {ha['consensus_protocol']!r} is not "
                          "supported: DTF uses Raft (write \"raft\" or remove the key)")
