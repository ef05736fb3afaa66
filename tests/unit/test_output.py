"""CLI tables: `dtf workers list` says why a worker gets no work (drained, quarantined, on a canary)."""

from __future__ import annotations

from dtf_app.output import workers_table


def _worker(worker_id: str, **extra: object) -> dict[str, object]:
    return {"worker_id": worker_id, "hostname": "h", "status": "online", "hardware": ["cpu"], "running": 0,
            "max_concurrent_tasks": 4, "last_heartbeat": "2026-12-02T00:00:00Z", **extra}


def test_the_status_column_names_drain_and_quarantine() -> None:
    text = workers_table([_worker("w1"), _worker("w2", drained=True),
                          _worker("w3", drained=True, quarantine={"state": "quarantined", "reason": "disk"}),
                          _worker("w4", quarantine={"state": "canary"})])
    rows = {line.split()[0]: line for line in text.splitlines()[1:] if line.strip()}
    assert "(drained)" not in rows["w1"] and "(" not in rows["w1"].split("online")[1].split("cpu")[0]
    assert "online (drained)" in rows["w2"]
    assert "online (quarantined)" in rows["w3"] and "drained" not in rows["w3"]
    assert "online (canary)" in rows["w4"]
