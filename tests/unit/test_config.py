"""Settings loading: precedence, the deployment guide's JSON files, and strict, helpful errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dtf_app.config import ConfigError, Settings, load_settings, load_settings_with_sources

ASSETS = Path(__file__).resolve().parents[2] / "assets"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own DTF_* variables must not leak into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("DTF_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_any_source() -> None:
    assert load_settings(None, mode=None) == Settings()


def test_precedence_defaults_then_toml_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, "dtf.toml", 'port = 9001\nhost = "0.0.0.0"\nmax_concurrent_tasks = 2\n'
                                         'tags = ["from-file"]\nlog_level = "debug"\n')
    monkeypatch.setenv("DTF_PORT", "9002")
    monkeypatch.setenv("DTF_MAX_CONCURRENT_TASKS", "3")
    monkeypatch.setenv("DTF_TAGS", "env-a,env-b")
    settings, sources = load_settings_with_sources({"config": config, "port": 9003}, mode="worker")
    assert settings.port == 9003 and sources["port"] == "flag"           # flag beats env and file
    assert settings.max_concurrent_tasks == 3 and sources["max_concurrent_tasks"] == "env"  # env beats file
    assert settings.tags == ["env-a", "env-b"]
    assert settings.host == "0.0.0.0" and sources["host"] == "file"      # file beats default
    assert settings.log_level == "debug"
    assert settings.heartbeat_interval == 10.0 and "heartbeat_interval" not in sources  # default
    assert settings.mode == "worker"


def test_namespace_flags_none_means_not_given(tmp_path: Path) -> None:
    config = write(tmp_path, "dtf.toml", "port = 9100\n")
    args = argparse.Namespace(config=config, port=None, command="submit", json=True, workers=3)
    assert load_settings(args, mode=None).port == 9100


def test_mode_tables_apply_only_to_their_mode(tmp_path: Path) -> None:
    config = write(tmp_path, "dtf.toml", """
heartbeat_interval = 5.0
[coordinator]
port = 7000
[worker]
coordinator = ["http://10.0.0.1:7000", "http://10.0.0.2:7000/"]
max_concurrent_tasks = 8
""")
    coord = load_settings({"config": config}, mode="coordinator")
    worker = load_settings({"config": config}, mode="worker")
    peer = load_settings({"config": config}, mode="peer")
    assert (coord.port, coord.max_concurrent_tasks, coord.heartbeat_interval) == (7000, 4, 5.0)
    assert (worker.port, worker.max_concurrent_tasks) == (8080, 8)
    assert worker.coordinator == ["http://10.0.0.1:7000", "http://10.0.0.2:7000"]
    assert (peer.port, peer.max_concurrent_tasks) == (7000, 8)


def test_example_toml_and_deployment_json_assets_load() -> None:
    coord = load_settings({"config": str(ASSETS / "config" / "coordinator.json")}, mode="coordinator")
    assert coord.host == "0.0.0.0" and coord.port == 8080
    assert coord.db_path == "./dtf-data/dtf.duckdb"
    assert (coord.max_retries, coord.batch_size, coord.token_expiry) == (3, 10, 3600)
    worker = load_settings({"config": str(ASSETS / "config" / "worker.json")}, mode="worker")
    assert worker.coordinator == ["http://127.0.0.1:8080"]
    assert worker.tags == ["linux", "lab-a"] and worker.worker_id == "worker-1"
    toml = load_settings({"config": str(ASSETS / "config" / "dtf.toml")}, mode="worker")
    assert toml.tags == ["linux"] and toml.max_concurrent_tasks == 4


def test_deployment_guide_json_shapes(tmp_path: Path) -> None:
    coordinator = {"host": "127.0.0.1", "port": 8181, "db_path": "/tmp/x.duckdb", "heartbeat_interval": 2,
                   "worker_timeout": 6, "task_queue": {"max_retries": 5, "batch_size": 20},
                   "database": {"type": "duckdb", "path": "/tmp/y.duckdb"}, "security": {"token_expiry": 60}}
    settings = load_settings({"config": write(tmp_path, "c.json", json.dumps(coordinator))}, mode="coordinator")
    assert (settings.port, settings.max_retries, settings.batch_size) == (8181, 5, 20)
    assert settings.db_path == "/tmp/y.duckdb" and settings.token_expiry == 60
    assert settings.heartbeat_interval == 2.0 and isinstance(settings.heartbeat_interval, float)
    worker = {"coordinator_url": "http://c:8080", "api_key": "k-123", "max_concurrent_tasks": 2,
              "heartbeat_interval": 3, "reconnect_attempts": 4, "additional_tags": ["gpu-lab"],
              "db_path": "w.duckdb", "worker_id": "w-9"}
    settings = load_settings({"config": write(tmp_path, "w.json", json.dumps(worker))}, mode="worker")
    assert settings.coordinator == ["http://c:8080"] and settings.api_key == "k-123"
    assert (settings.max_concurrent_tasks, settings.reconnect_attempts, settings.tags) == (2, 4, ["gpu-lab"])
    assert settings.worker_id == "w-9"


def test_postgresql_is_refused_naming_database_type(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", json.dumps({"database": {"type": "postgresql", "path": "x"}}))
    with pytest.raises(ConfigError) as err:
        load_settings({"config": path}, mode="coordinator")
    message = str(err.value)
    assert "database.type" in message and "'postgresql'" in message and "duckdb" in message
    assert path in message


def test_unknown_key_suggests_close_matches(tmp_path: Path) -> None:
    path = write(tmp_path, "dtf.toml", "heartbeat_intervall = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'heartbeat_intervall'; did you mean 'heartbeat_interval'"):
        load_settings({"config": path}, mode="worker")
    with pytest.raises(ConfigError, match=r"unknown key 'max_retry'.*'max_retries'"):
        load_settings({"config": write(tmp_path, "c.json", '{"task_queue": {"max_retry": 1}}')}, mode=None)
    with pytest.raises(ConfigError, match="known keys"):
        load_settings({"config": write(tmp_path, "d.json", '{"zzzz": 1}')}, mode=None)


@pytest.mark.parametrize(("text", "expected"), [
    ('port = "8080"', r"key 'port': expected an integer, got str '8080'"),
    ("heartbeat_interval = true", r"key 'heartbeat_interval': expected a number of seconds, got bool"),
    ("tags = [1, 2]", r"key 'tags': expected a list of strings"),
    ("peers = 3", r"key 'peers': expected a table of node id = URL"),
])
def test_file_type_errors_name_key_expected_and_got(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings({"config": write(tmp_path, "dtf.toml", text + "\n")}, mode="coordinator")


@pytest.mark.parametrize(("values", "expected"), [
    ({"port": 70000}, r"port must be between 0 and 65535"),
    ({"port": -1}, r"port must be between 0 and 65535"),
    ({"heartbeat_interval": 0}, r"heartbeat_interval must be a positive"),
    ({"heartbeat_interval": 30, "worker_timeout": 30}, r"worker_timeout \(30.0 s\) must be longer"),
    ({"max_concurrent_tasks": 0}, r"max_concurrent_tasks must be at least 1"),
    ({"mode": "leader"}, r"mode must be one of coordinator, worker, peer"),
    ({"coordinator": "localhost:8080"}, r"'localhost:8080' is not a URL"),
    ({"log_level": "loud"}, r"log level must be one of"),
    ({"simulate_hardware": "/nonexistent/profile.json"}, r"does not exist"),
])
def test_ranges_are_validated(values: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(values, mode=None)


def test_env_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTF_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"DTF_PORT: expected an integer, got 'eighty'"):
        load_settings(None, mode="coordinator")


def test_flag_range_error_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--port: port must be between"):
        load_settings({"port": 99999}, mode="coordinator")


def test_peers_and_lists_parse_from_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTF_COORDINATOR", "http://a:1, http://b:2/")
    settings = load_settings({"peers": "n2=http://h2:8080,n3=http://h3:8080"}, mode="coordinator")
    assert settings.peers == {"n2": "http://h2:8080", "n3": "http://h3:8080"}
    assert settings.coordinator == ["http://a:1", "http://b:2"]
    # An entry without an id is a host: its id is derived from the host (dtf_app/cluster.py).
    assert load_settings({"peers": "n2.svc:9000"}, mode="coordinator").peers == {"n2": "http://n2.svc:9000"}
    with pytest.raises(ConfigError, match="expected id=URL or host:port entries"):
        load_settings({"peers": "n2=ftp://h"}, mode="coordinator")


def test_unreadable_config_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"config": str(tmp_path / "missing.toml")}, mode=None)
    with pytest.raises(ConfigError, match=r"line 2 column 1: invalid JSON"):
        load_settings({"config": write(tmp_path, "bad.json", '{"port": 1,\n}')}, mode=None)
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings({"config": write(tmp_path, "bad.toml", "port = = 3\n")}, mode=None)
    with pytest.raises(ConfigError, match="top level must be"):
        load_settings({"config": write(tmp_path, "list.json", "[1]")}, mode=None)


def test_security_cannot_be_disabled(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"security.enabled = False is not supported"):
        load_settings({"config": write(tmp_path, "c.json", '{"security": {"enabled": false}}')}, mode=None)


def test_unknown_dict_argument_is_refused() -> None:
    with pytest.raises(ConfigError, match="did you mean 'port'"):
        load_settings({"prot": 1}, mode=None)


def test_db_path_helpers_follow_settings() -> None:
    settings = load_settings({"data_dir": "/d"}, mode="coordinator")
    assert settings.coordinator_db_path() == Path("/d/dtf.duckdb")
    assert settings.worker_db_path("w1") == Path("/d/worker-w1.duckdb")
