"""Health metrics from psutil and threshold alerts."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtf_app.health import DEFAULT_THRESHOLDS, evaluate, sample


def test_sample_has_every_metric(tmp_path: Path) -> None:
    metrics = sample(str(tmp_path))
    for key in ("cpu_percent", "memory_percent", "memory_available_gb", "disk_percent", "disk_free_gb",
                "load_average", "net_bytes_sent", "net_bytes_recv", "process_count", "temperatures"):
        assert key in metrics, key
    assert 0.0 <= metrics["cpu_percent"] <= 100.0 * metrics["cpu_count"]
    assert 0.0 < metrics["memory_percent"] < 100.0
    assert metrics["memory_available_gb"] > 0 and metrics["disk_free_gb"] > 0
    assert metrics["disk_path"] == str(tmp_path.resolve())
    assert metrics["process_count"] > 1
    assert len(metrics["load_average"]) == 3


def test_sample_of_a_missing_data_dir_uses_its_parent(tmp_path: Path) -> None:
    metrics = sample(str(tmp_path / "not" / "yet"))
    assert metrics["disk_path"] == str(tmp_path.resolve())


def test_no_alerts_below_thresholds() -> None:
    assert evaluate({"cpu_percent": 50.0, "memory_percent": 89.9, "disk_percent": 95.0}) == []


def test_alerts_above_default_thresholds() -> None:
    alerts = evaluate({"cpu_percent": 92.0, "memory_percent": 97.0, "disk_percent": 99.0, "temperature_max_c": 70})
    by_metric = {a["metric"]: a for a in alerts}
    assert set(by_metric) == {"cpu_percent", "memory_percent", "disk_percent"}
    assert by_metric["cpu_percent"]["severity"] == "warning"
    assert by_metric["memory_percent"]["severity"] == "critical"
    # The threshold an alert names is the one it crossed: the critical one for a critical alert.
    assert by_metric["cpu_percent"]["threshold"] == DEFAULT_THRESHOLDS["cpu_percent"]
    assert by_metric["disk_percent"]["threshold"] == (DEFAULT_THRESHOLDS["disk_percent"] + 100) / 2
    assert "cpu percent is 92.0%, above the 90% warning threshold" == by_metric["cpu_percent"]["message"]


def test_custom_thresholds_and_temperature() -> None:
    alerts = evaluate({"cpu_percent": 60.0, "temperature_max_c": 96.0, "memory_percent": None},
                      {"cpu_percent": 50.0})
    assert {a["metric"]: a["severity"] for a in alerts} == {"cpu_percent": "warning",
                                                            "temperature_max_c": "critical"}


def test_unknown_threshold_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown health threshold\(s\) \['gpu'\]; accepted"):
        evaluate({}, {"gpu": 1.0})


def test_real_sample_evaluates() -> None:
    # Whatever this machine's state, a real sample must be evaluable and yield well-formed alerts.
    for alert in evaluate(sample()):
        assert alert["value"] >= alert["threshold"]


def test_explicit_critical_threshold_alerts_and_takes_out() -> None:
    from dtf_app.health import takes_out

    alerts = evaluate({"cpu_percent": 3.0, "load_per_cpu": 9.0}, critical={"cpu_percent": 0.0})
    by_metric = {a["metric"]: a for a in alerts}
    assert by_metric["cpu_percent"]["level"] == "critical" and by_metric["cpu_percent"]["threshold"] == 0.0
    assert takes_out(by_metric["cpu_percent"])  # set by the operator: acts
    assert by_metric["load_per_cpu"]["severity"] == "critical"
    assert not takes_out(by_metric["load_per_cpu"])  # a busy machine at a default threshold: only an alert
    assert takes_out(evaluate({"memory_percent": 99.0})[0])


def test_thresholds_from_settings() -> None:
    from dtf_app.config import Settings
    from dtf_app.health import thresholds_from

    warning, critical = thresholds_from(Settings(health_cpu_threshold=70.0, health_disk_critical=99.0))
    assert warning["cpu_percent"] == 70.0 and critical == {"disk_percent": 99.0}
    assert "net_mb_per_s" not in warning  # off unless set
