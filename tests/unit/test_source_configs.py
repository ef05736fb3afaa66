"""The sources' example configs load as they are written (tests/fixtures/sources/ reproduces them byte for byte).

Each key maps to its DTF setting or is reported once as ignored with the reason; PostgreSQL is the one
error and says what to write; ``${VAR}`` comes from the environment; the sources' variables count.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dtf_app.config import ConfigError, check_high_availability, load_settings, load_settings_with_sources

SOURCES = Path(__file__).resolve().parents[1] / "fixtures" / "sources"
# The published files' SHA-256: an edited fixture would no longer prove that the published file loads.
PUBLISHED = {
    "coordinator-baremetal.json": "53391283b22783b7cfb180e540498e35682570fdfb3b331d0e2f1727abac227e",
    "coordinator-ha.yaml": "7f055a486357f875de19e533b596d8ff731546ad24f25bed3844623360de7bb6",
    "coordinator.json": "7c5a53faf0bafa6ce4eba5d1e2f5c481279db6410b62dbd59d2143a7404cf17d",
    "coordinator.yaml": "7369bff63ad44c63931f856d7b12f61fe85af66f018de0ea7746f449cea824bc",
    "k8s-ha-coordinator.yaml": "613adfc65ea4a2d0cbc7c32cd322ab20b96b5655985daedd5acef35b2c9c9f3a",
    "worker.json": "041fd7ade5218dc80dbe4137f95d26549b4a3fc1e6d978ce6c95a955ee658c14",
    "worker.yaml": "76b986a5a64750701e669878c05eeb5cb30e429027cfb0e9d1acdc7656cd96b5",
}
SOURCE_VARS = ("CONFIG_FILE", "COORDINATOR_URL", "WORKER_ID", "COORDINATOR_ID", "ENABLE_HIGH_AVAILABILITY",
               "HIGH_AVAILABILITY_PEERS", "JWT_SECRET", "WORKER_API_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DTF_") or name in SOURCE_VARS:
            monkeypatch.delenv(name)


def fixture(name: str) -> str:
    return str(SOURCES / name)


def notices_text(settings: object) -> str:
    return "\n".join(message for _, message in settings.notices)  # type: ignore[attr-defined]


def with_duckdb(tmp_path: Path, name: str) -> str:
    """The file with only the line the PostgreSQL error asks to change, changed."""
    text = (SOURCES / name).read_text()
    assert text.count('"type": "postgresql"') == 1
    path = tmp_path / name
    path.write_text(text.replace('"type": "postgresql"', '"type": "duckdb"'))
    return str(path)


def test_fixtures_are_the_published_files() -> None:
    for name, digest in PUBLISHED.items():
        assert hashlib.sha256((SOURCES / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", ["coordinator.json", "coordinator-baremetal.json"])
def test_guide_coordinator_json_postgresql_error_says_what_to_write(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"config": fixture(name)}, mode="coordinator")
    message = str(err.value)
    assert "database.type = 'postgresql' is not supported" in message
    assert '"type": "duckdb"' in message and fixture(name) in message


def test_guide_coordinator_json_maps_every_key(tmp_path: Path) -> None:
    settings = load_settings({"config": with_duckdb(tmp_path, "coordinator.json")}, mode="coordinator")
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert (settings.log_level, settings.log_format, settings.log_path) == ("info", "json", "/var/log/distributed-testing")
    assert (settings.batch_size, settings.max_retries) == (10, 3)
    assert (settings.heartbeat_interval, settings.worker_timeout, settings.token_expiry) == (10.0, 30.0, 3600)
    assert settings.high_availability == {"enabled": True, "consensus_protocol": "raft"}
    assert settings.db_path is None  # the default <data-dir>/dtf.duckdb
    text = notices_text(settings)
    assert "section 'redis' ignored: DTF has no Redis" in text
    assert "database.host, database.port, database.name, database.user, database.password ignored" in text
    assert text.count("redis") == 1  # reported once
    check_high_availability(settings, {})
    assert "one-member Raft cluster" in notices_text(settings)


def test_guide_baremetal_json_has_ha_disabled(tmp_path: Path) -> None:
    settings = load_settings({"config": with_duckdb(tmp_path, "coordinator-baremetal.json")}, mode="coordinator")
    assert settings.high_availability == {"enabled": False}
    check_high_availability(settings, {})
    assert "one-member" not in notices_text(settings)


def test_guide_worker_json_maps_every_key() -> None:
    settings = load_settings({"config": fixture("worker.json")}, mode="worker")
    assert settings.coordinator == ["http://coordinator-hostname:8080"]
    assert settings.api_key == "YOUR_API_KEY_HERE"
    assert (settings.heartbeat_interval, settings.reconnect_attempts) == (10.0, 10)
    assert settings.db_path == "/var/lib/distributed-testing-worker/worker.duckdb"
    assert settings.log_path == "/var/log/distributed-testing-worker"
    assert settings.tags == [] and settings.max_concurrent_tasks == 4
    assert settings.notices == []


def test_design_coordinator_yaml_with_jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"security.jwt_secret' refers to \$\{JWT_SECRET\}, but the environment "
                                          r"variable JWT_SECRET is not set"):
        load_settings({"config": fixture("coordinator.yaml")}, mode="coordinator")
    monkeypatch.setenv("JWT_SECRET", "s3cret")
    settings = load_settings({"config": fixture("coordinator.yaml")}, mode="coordinator")
    assert (settings.host, settings.port, settings.workers_port) == ("0.0.0.0", 8080, 8081)
    assert settings.db_path == "./benchmark_db.duckdb" and settings.token_expiry == 86400
    text = notices_text(settings)
    for ignored in ("server.dashboard_port", "task_scheduler.max_queue_size",
                    "multi_device_orchestrator.model_parallel_auto_splitting", "'result_aggregator'",
                    "security.jwt_secret"):
        assert text.count(ignored) == 1, ignored
    # The load balancer's, the resource manager's and the health monitor's sections are used, key by key.
    assert "load_balancer" not in text
    assert (settings.balancer_strategy, settings.worker_cap, settings.task_cap_per_worker) == ("fair_share", 10, 5)
    assert "dynamic_resource_management" not in text and "health_monitor" not in text
    assert (settings.resource_management_enabled, settings.scale_up_threshold, settings.scale_down_threshold,
            settings.evaluation_interval) == (True, 0.8, 0.3, 300.0)
    assert (settings.health_check_interval, settings.health_failure_threshold,
            settings.health_recovery_attempts) == (30.0, 3, 2)
    # The orchestrator's section is used: subtask defaults (retry_failed_subtasks true keeps retry_limit).
    assert settings.orchestrator_enabled is True
    assert (settings.subtask_timeout, settings.subtask_priority, settings.subtask_max_retries) == (3600.0, 5, 3)
    assert "s3cret" not in text  # a secret is never echoed


def test_design_worker_yaml_with_worker_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"refers to \$\{WORKER_API_KEY\}.*--api-key / DTF_API_KEY"):
        load_settings({"config": fixture("worker.yaml")}, mode="worker")
    # A flag or DTF_* variable overriding the key makes the unset reference irrelevant.
    assert load_settings({"config": fixture("worker.yaml"), "api_key": "k"}, mode="worker").api_key == "k"
    monkeypatch.setenv("WORKER_API_KEY", "dtf_worker_key")
    settings = load_settings({"config": fixture("worker.yaml")}, mode="worker")
    assert settings.api_key == "dtf_worker_key"
    assert (settings.worker_id, settings.worker_name, settings.hardware_id) == ("worker-1", "GPU Worker 1", "nvidia-a100")
    assert settings.coordinator == ["https://coordinator.example.com:8081"]
    assert (settings.max_concurrent_tasks, settings.task_timeout, settings.heartbeat_interval) == (4, 3600.0, 15.0)
    text = notices_text(settings)
    for ignored in ("execution.working_dir", "execution.cache_dir", "reporting.result_batch_size"):
        assert ignored in text, ignored
    # The worker's health section: its thresholds and sampling interval are used.
    assert "health." not in text
    assert (settings.health_report_interval, settings.health_cpu_threshold, settings.health_memory_threshold,
            settings.health_disk_threshold) == (30.0, 90.0, 90.0, 90.0)


def test_design_ha_block_makes_a_three_member_cluster() -> None:
    settings, sources = load_settings_with_sources({"config": fixture("coordinator-ha.yaml")}, mode="coordinator")
    ha = settings.high_availability
    assert ha["enabled"] is True and ha["coordinator_id"] == "coordinator-1"
    assert ha["peers"][0] == {"id": "coordinator-2", "host": "coordinator-2.example.com", "port": 8080}
    assert (ha["election_timeout_min"], ha["election_timeout_max"], ha["quorum_size"]) == (150, 300, 2)
    assert "Markdown code fence" in notices_text(settings)
    check_high_availability(settings, sources)
    # Peers exclude this node (coordinator_id), timings are the Raft clock's, the rest is reported.
    assert settings.peers == {"coordinator-2": "http://coordinator-2.example.com:8080",
                              "coordinator-3": "http://coordinator-3.example.com:8080"}
    assert settings.node_id == "coordinator-1" and not settings.peers_include_self
    assert (settings.election_timeout_ms, settings.heartbeat_ms) == (150, 50)
    assert "leader_lease_duration" in notices_text(settings)


def test_kubernetes_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COORDINATOR_ID", "dtf-ha-coordinator-0")
    monkeypatch.setenv("ENABLE_HIGH_AVAILABILITY", "true")
    settings, sources = load_settings_with_sources(None, mode="coordinator")
    assert settings.node_id == "dtf-ha-coordinator-0" and settings.high_availability == {"enabled": True}
    check_high_availability(settings, sources)
    assert "one-member Raft cluster" in notices_text(settings)
    # The StatefulSet's list names every member, this pod included: the others make it multi-node.
    monkeypatch.setenv("HIGH_AVAILABILITY_PEERS", "dtf-ha-coordinator-0.h:8080,dtf-ha-coordinator-1.h:8080")
    settings, sources = load_settings_with_sources(None, mode="coordinator")
    check_high_availability(settings, sources)
    assert settings.peers == {"dtf-ha-coordinator-0": "http://dtf-ha-coordinator-0.h:8080",
                              "dtf-ha-coordinator-1": "http://dtf-ha-coordinator-1.h:8080"}
    assert settings.peers_include_self
    monkeypatch.setenv("HIGH_AVAILABILITY_PEERS", "dtf-ha-coordinator-0.h:8080")
    settings, sources = load_settings_with_sources(None, mode="coordinator")
    check_high_availability(settings, sources)  # only itself: a one-member cluster
    monkeypatch.setenv("ENABLE_HIGH_AVAILABILITY", "maybe")
    with pytest.raises(ConfigError, match="ENABLE_HIGH_AVAILABILITY: expected true or false, got 'maybe'"):
        load_settings(None, mode="coordinator")


def test_peers_flag_wins_over_the_section() -> None:
    settings, sources = load_settings_with_sources({"peers": "n2=http://h2:8080"}, mode="coordinator")
    settings.high_availability = {"enabled": True, "peers": ["other:1"]}
    check_high_availability(settings, sources)
    assert settings.peers == {"n2": "http://h2:8080"}


def test_source_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "w.json"
    config.write_text('{"max_concurrent_tasks": 3}')
    monkeypatch.setenv("CONFIG_FILE", str(config))
    monkeypatch.setenv("COORDINATOR_URL", "http://c1:8080")
    monkeypatch.setenv("WORKER_ID", "w-from-env")
    settings, sources = load_settings_with_sources(None, mode="worker")
    assert settings.max_concurrent_tasks == 3 and sources["max_concurrent_tasks"] == "file"
    assert settings.coordinator == ["http://c1:8080"] and settings.worker_id == "w-from-env"
    # DTF_* beats the sources' names; DTF_CONFIG beats CONFIG_FILE.
    monkeypatch.setenv("DTF_COORDINATOR", "http://c2:8080")
    other = tmp_path / "o.json"
    other.write_text('{"max_concurrent_tasks": 5}')
    monkeypatch.setenv("DTF_CONFIG", str(other))
    settings = load_settings(None, mode="worker")
    assert settings.coordinator == ["http://c2:8080"] and settings.max_concurrent_tasks == 5


def test_env_var_references_expand_and_partial_strings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('server:\n  host: "${BIND}"\nlogging:\n  path: "${LOGROOT}/dtf"\n')
    monkeypatch.setenv("BIND", "127.0.0.2")
    monkeypatch.setenv("LOGROOT", "/srv/logs")
    settings = load_settings({"config": str(config)}, mode="coordinator")
    assert (settings.host, settings.log_path) == ("127.0.0.2", "/srv/logs/dtf")
    monkeypatch.delenv("LOGROOT")
    with pytest.raises(ConfigError, match=r"logging.path' refers to \$\{LOGROOT\}"):
        load_settings({"config": str(config)}, mode="coordinator")


@pytest.mark.parametrize(("text", "expected"), [
    ("high_availability:\n  enabled: yes-please\n", r"high_availability.enabled': expected true or false"),
    ("high_availability:\n  consensus_protocol: paxos\n", r"'paxos' is not supported; DTF's coordinators agree "
                                                          r"through Raft"),
    ("high_availability:\n  peers: [{id: a}]\n", r"each peer must be \{id, host, port\}"),
    ("high_availability:\n  election_timeout_min: -5\n", r"expected a positive integer"),
    ("high_availability:\n  quorum: 2\n", r"unknown key 'quorum'; did you mean 'quorum_size'"),
    ("logging:\n  format: xml\n", r"log format must be one of text, json"),
    ("server:\n  hots: x\n", r"unknown key 'hots'; did you mean 'host'"),
    ("port: [\n", r"line 2 column 1: invalid YAML"),
])
def test_shape_errors_in_yaml(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_settings({"config": str(config)}, mode="coordinator")


def test_auto_recovery_false_is_reported_not_silently_dropped(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"worker_management": {"auto_recovery": false}}')
    settings = load_settings({"config": str(config)}, mode="coordinator")
    assert "worker_management.auto_recovery ignored: DTF always puts a lost worker's tasks back" in \
        notices_text(settings)


def test_orchestrator_section_sets_subtask_defaults_or_switches_it_off(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"multi_device_orchestrator": {"enabled": false, "retry_failed_subtasks": false, '
                      '"retry_limit": 7, "default_priority": 9, "subtask_timeout": 60}}')
    settings = load_settings({"config": str(config)}, mode="coordinator")
    assert settings.orchestrator_enabled is False
    # retry_failed_subtasks = false wins over retry_limit: a failed subtask is not run again.
    assert (settings.subtask_max_retries, settings.subtask_priority, settings.subtask_timeout) == (0, 9, 60.0)
    config.write_text('{"multi_device_orchestrator": {"default_priority": 101}}')
    with pytest.raises(ConfigError, match="subtask_priority must be from 0 to 100"):
        load_settings({"config": str(config)}, mode="coordinator")
    config.write_text('{"multi_device_orchestrator": {"retry_failed_subtasks": "no"}}')
    with pytest.raises(ConfigError, match="retry_failed_subtasks must be true or false"):
        load_settings({"config": str(config)}, mode="coordinator")
