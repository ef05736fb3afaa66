"""Settings for every mode of ``dtf``.

Precedence (lowest first): defaults < TOML file (``--config``) < ``DTF_*`` environment < CLI flags.
The JSON ``coordinator.json`` / ``worker.json`` files of the source deployment guide are accepted too.

Loading is strict but helpful: an unknown key names its closest matches, a wrong type names the expected
one, an unsupported value (``database.type = "postgresql"``) says what is supported, and every message
says where the value came from (file, environment variable or flag) so the user knows what to fix.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    snapshot_every: int = 20_000
    """Coordinator: snapshot the state (and restart the command log) after this many log entries."""
    token_expiry: int = 3600
    """Lifetime of a JWT in seconds (``security.token_expiry`` in the deployment guide's JSON)."""
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
    "test_python": "optstr",
}
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Settings))
assert set(_KINDS) == set(FIELD_NAMES), "every Settings field needs a kind"

# Names used by the source deployment guide's JSON files, mapped to ours.
_ALIASES = {"coordinator_url": "coordinator", "coordinators": "coordinator", "additional_tags": "tags"}
# Nested tables of the deployment guide: table -> {key: field or None (accepted, validated, unused)}.
_SECTIONS: dict[str, dict[str, str | None]] = {
    "task_queue": {"max_retries": "max_retries", "batch_size": "batch_size"},
    "database": {"type": None, "path": "db_path"},
    "security": {"token_expiry": "token_expiry", "enabled": None, "api_keys_enabled": None},
}
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

    # The mode decides which config tables apply, so settle it first from the strongest source.
    effective_mode = mode or flags.get("mode") or env.get("DTF_MODE") or None
    config_path = flags.pop("config", None) or env.get("DTF_CONFIG") or None
    if config_path:
        file_values = load_config_file(str(config_path), mode=effective_mode)
        effective_mode = effective_mode or file_values.get("mode")
        values.update(file_values)
        sources.update(dict.fromkeys(file_values, "file"))
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
    settings = Settings(**values)
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


def load_config_file(path: str, *, mode: str | None = None) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON (``.json``) config file into checked Settings values."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if file.suffix.lower() == ".json":
        import json

        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path}, line {exc.lineno} column {exc.colno}: "
                              f"invalid JSON: {exc.msg}") from None
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc} "
                              "(use a .json suffix for JSON config files)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a table/object of settings, "
                          f"got {type(data).__name__}")
    return normalise_config(data, where=f"config file {path}", mode=mode)


def normalise_config(data: Mapping[str, Any], *, where: str, mode: str | None = None) -> dict[str, Any]:
    """Map a config document (ours or the deployment guide's) to checked Settings values."""
    values: dict[str, Any] = {}
    tables: list[tuple[str, Mapping[str, Any]]] = []
    known = (*FIELD_NAMES, *_ALIASES, *_SECTIONS)
    for key, value in data.items():
        if key in _MODE_TABLES and isinstance(value, Mapping):
            # [coordinator] / [worker] tables: applied after the top level, only for their modes.
            tables.append((key, value))
            continue
        if key in _SECTIONS:
            values.update(_section(key, value, where))
            continue
        name = _ALIASES.get(key, key)
        if name not in FIELD_NAMES:
            raise ConfigError(_unknown_message(key, where, known))
        values[name] = _coerce(name, value, f"{where}: key {key!r}", parse=False)
    effective_mode = mode or values.get("mode")
    for table, body in tables:
        if effective_mode is None or effective_mode in _MODE_TABLES[table]:
            values.update(normalise_config(body, where=f"{where} [{table}]", mode=effective_mode))
    return values


def _section(section: str, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: key {section!r} must be a table/object, got {type(value).__name__}")
    allowed = _SECTIONS[section]
    out: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{section}.{key}"
        if key not in allowed:
            raise ConfigError(_unknown_message(key, f"{where} [{section}]", tuple(allowed)))
        if section == "database" and key == "type":
            if not isinstance(item, str) or item.lower() not in SUPPORTED_DATABASES:
                raise ConfigError(f"{where}: {dotted} = {item!r} is not supported; DTF stores everything in "
                                  f"DuckDB, so the supported values are: {', '.join(SUPPORTED_DATABASES)}")
            continue
        if key in ("enabled", "api_keys_enabled"):
            if item is not True:
                raise ConfigError(f"{where}: {dotted} = {item!r} is not supported: DTF always authenticates "
                                  "API calls (only true is accepted; remove the key to use the default)")
            continue
        target = allowed[key]
        assert target is not None
        out[target] = _coerce(target, item, f"{where}: key {dotted!r}", parse=False)
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
    if parse and isinstance(value, str):
        value = _parse_string(kind, value, where)
    if kind in ("str", "optstr"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if kind == "float":
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
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number of seconds, got {text!r}") from None
    if kind in ("list", "urls"):
        return [part for part in text.split(",")]
    if kind == "peers":
        peers: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            node_id, sep, url = part.partition("=")
            if not sep or not node_id.strip() or not url.strip():
                raise ConfigError(f"{where}: expected id=URL pairs separated by commas "
                                  f"(e.g. n1=http://10.0.0.1:8080,n2=http://10.0.0.2:8080), got {part!r}")
            peers[node_id.strip()] = url.strip()
        return peers
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
                "token_expiry": 1, "snapshot_every": 1}
    for name, minimum in minimums.items():
        if getattr(settings, name) < minimum:
            raise ConfigError(f"{origin(name)}: {name} must be at least {minimum}, got {getattr(settings, name)}")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"{origin('log_level')}: log level must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {settings.log_level!r}")
    settings.log_level = settings.log_level.lower()
    if not settings.coordinator:
        raise ConfigError(f"{origin('coordinator')}: at least one coordinator URL is needed")
    for url in [*settings.coordinator, *settings.peers.values()]:
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
            name = "coordinator" if url in settings.coordinator else "peers"
            raise ConfigError(f"{origin(name)}: {url!r} is not a URL; expected http://HOST:PORT or https://HOST:PORT")
    for name in ("host", "data_dir"):
        if not getattr(settings, name):
            raise ConfigError(f"{origin(name)}: {name} must not be empty")
    if settings.simulate_hardware and not Path(settings.simulate_hardware).is_file():
        raise ConfigError(f"{origin('simulate_hardware')}: hardware profile {settings.simulate_hardware} "
                          "does not exist (examples are in assets/hardware/*.json)")
