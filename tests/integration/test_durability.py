"""What is on disk stays trustworthy and private, and a starting coordinator says it is not ready yet.

Real coordinator and worker processes on 127.0.0.1, real files: a flipped bit in the middle of the Raft
log stops the start (exit 2, file and offset named, nothing truncated); a torn last record is cut
and every complete one kept; a damaged snapshot is a clear error; every dir and file under the data dirs
is private even under umask 000; ``/status`` answers 503 with what it waits for until the node is ready.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import time
from pathlib import Path

import httpx

from dtf_app.coordinator.legacy_log import FILE_MAGIC, encode_record
from dtf_app.raft.log import SEGMENT_MAGIC
from tests.integration.harness import Cluster, wait_for

# A Raft log record header (dtf_app/raft/log.py): magic(2) type(1) reserved(1) length(4) crc(4).
HEADER = 12


def _record_offsets(data: bytes) -> list[int]:
    offsets, pos = [], len(SEGMENT_MAGIC)
    while pos < len(data):
        offsets.append(pos)
        (length,) = struct.unpack_from("<I", data, pos + 4)
        pos += HEADER + length
    assert pos == len(data), "the test expects an intact log"
    return offsets


def _segment(cluster: Cluster) -> Path:
    segments = sorted((cluster.data_dir / "raft").glob("wal-*.log"))
    assert segments, "no Raft log segment"
    return segments[-1]


def _entry_records(data: bytes) -> list[int]:
    """Offsets of the records that carry entries (type 1), whose bodies are the big ones."""
    return [o for o in _record_offsets(data) if data[o + 2] == 1]


def _submit_batches(cluster: Cluster, batches: int, size: int) -> list[list[str]]:
    ids = []
    for b in range(batches):
        response = cluster.submit([{"type": "custom", "name": f"b{b}-{i}", "config": {"command": ["true"]}}
                                   for i in range(size)])
        assert response.status_code == 201, response.text
        ids.append([t["task_id"] for t in response.json()])
    return ids


def _start_fails(cluster: Cluster) -> tuple[int, str]:
    result = cluster.cli("--mode", "coordinator", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                         str(cluster.data_dir), timeout=120)
    return result.returncode, result.stderr


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_flipped_bit_mid_log_stops_the_start_and_changes_nothing(cluster: Cluster) -> None:
    cluster.start_coordinator()
    ids = _submit_batches(cluster, 60, 50)  # 3,000 acknowledged tasks, one log record per batch
    cluster.coordinator.kill(signal.SIGKILL)
    cluster.coordinator.wait()
    path = _segment(cluster)
    intact = path.read_bytes()
    offsets = _entry_records(intact)
    victim = offsets[len(offsets) // 2]
    damaged = bytearray(intact)
    damaged[victim + HEADER + 40] ^= 0x08  # one bit of a payload in the middle
    path.write_bytes(bytes(damaged))

    code, stderr = _start_fails(cluster)
    assert code == 2, stderr
    line = _one_error_line(stderr)
    assert str(path) in line and f"offset {victim}" in line, line
    assert path.read_bytes() == bytes(damaged)  # nothing truncated

    # The same for a flipped bit in a length field (the record CRC covers the header too).
    damaged = bytearray(intact)
    damaged[victim + 5] ^= 0x01
    path.write_bytes(bytes(damaged))
    code, stderr = _start_fails(cluster)
    assert code == 2 and f"offset {victim}" in _one_error_line(stderr), stderr
    assert path.read_bytes() == bytes(damaged)

    # With the bit put back, every acknowledged task is still there.
    path.write_bytes(intact)
    cluster.start_coordinator()
    counts = cluster.api("GET", "/api/status").json()
    assert counts["tasks"]["pending"] == 3000, counts
    for batch in (ids[0], ids[len(ids) // 2], ids[-1]):
        assert cluster.task(batch[-1])["status"] == "pending"


def test_a_torn_last_record_is_cut_and_every_complete_record_kept(cluster: Cluster) -> None:
    cluster.start_coordinator()
    ids = _submit_batches(cluster, 20, 5)
    cluster.coordinator.kill(signal.SIGKILL)  # no worker: the last record is the last submit
    cluster.coordinator.wait()
    path = _segment(cluster)
    data = path.read_bytes()
    last = _record_offsets(data)[-1]
    path.write_bytes(data[:len(data) - 7])  # a crash in the middle of the last write
    cluster.start_coordinator()
    assert "torn tail" in cluster.coordinator.output()
    # Every acknowledged submit was durable before its answer; the cut record came after the last one
    # (the Raft log's last record is the commit index moving past it).
    for batch in ids:
        for task_id in batch:
            assert cluster.task(task_id)["status"] == "pending"
    assert path.read_bytes()[:last] == data[:last]  # the intact part is untouched


def test_a_damaged_snapshot_is_a_clear_error(cluster: Cluster) -> None:
    env = {"DTF_SNAPSHOT_EVERY": "5"}
    cluster.start_coordinator(env=env)
    _submit_batches(cluster, 12, 2)
    snapshot = wait_for(lambda: next(iter(sorted((cluster.data_dir / "raft").glob("snap-*.snap"))), None),
                        what="a snapshot")
    cluster.coordinator.stop()
    snapshot = sorted((cluster.data_dir / "raft").glob("snap-*.snap"))[-1]
    raw = bytearray(snapshot.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    snapshot.write_bytes(bytes(raw))
    code, stderr = _start_fails(cluster)
    assert code == 2, stderr
    line = _one_error_line(stderr)
    assert str(snapshot) in line and "damaged" in line, line
    assert snapshot.read_bytes() == bytes(raw)


def _modes(root: Path) -> dict[str, int]:
    found = {str(root): stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path)] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _loose(modes: dict[str, int]) -> dict[str, str]:
    return {path: oct(mode) for path, mode in modes.items()
            if mode != (0o700 if Path(path).is_dir() else 0o600)}


def test_state_is_private_whatever_the_umask(cluster: Cluster) -> None:
    old = os.umask(0)  # the nodes inherit umask 000 from this process
    try:
        cluster.start_coordinator()
        cluster.start_worker("w1", slots=1)
    finally:
        os.umask(old)
    cluster.wait_workers(1)
    # The task itself runs with the umask the node was started with, not the node's private one.
    check = ["sh", "-c", '[ "$(umask)" = 0000 ] || { umask; exit 3; }']
    created = cluster.submit({"type": "custom", "name": "umask", "config": {"command": check}})
    task = cluster.wait_task(created.json()["task_id"])
    assert task["status"] == "completed" and task["result"]["status"] == "success", task
    worker_dir = cluster.root / "workers" / "w1"
    # The worker's outbox must exist and have been written (the outcome went through it).
    assert list(worker_dir.glob("*.duckdb"))
    modes = {**_modes(cluster.data_dir), **_modes(worker_dir)}
    for wanted in ("admin.key", "worker.key", "node.json", "dtf.duckdb", "raft", "raft/LOCK"):
        assert str(cluster.data_dir / wanted) in modes, sorted(modes)
    assert list((cluster.data_dir / "raft").glob("wal-*.log"))
    assert not _loose(modes), _loose(modes)
    registry = cluster.root / "state"
    assert not _loose(_modes(registry)), _loose(_modes(registry))

    # A data dir left with loose modes (an older version, a restore) is tightened at start.
    cluster.stop()
    for path in {**_modes(cluster.data_dir), **_modes(worker_dir)}:
        os.chmod(path, 0o755 if Path(path).is_dir() else 0o644)
    cluster.workers = []
    cluster.start_coordinator()
    assert "set to 0700" in cluster.coordinator.output() and "set to 0600" in cluster.coordinator.output()
    worker = cluster.start_worker("w1", slots=1)
    cluster.wait_workers(1)
    again = cluster.submit({"type": "custom", "config": {"command": ["true"]}}).json()
    assert cluster.wait_task(again["task_id"])["status"] == "completed"
    assert worker.proc.poll() is None
    modes = {**_modes(cluster.data_dir), **_modes(worker_dir)}
    assert not _loose(modes), _loose(modes)


def test_status_is_503_until_ready_while_a_long_log_replays(cluster: Cluster) -> None:
    # A log of many cheap records (deleting a key that does not exist): seconds of replay, no key in it,
    # so the bootstrap key is written only after recovery.
    log_dir = cluster.data_dir / "log"
    log_dir.mkdir(parents=True)
    record = {"op": "DeleteApiKey", "name": "nobody", "time": 1.0}
    with open(log_dir / "commands.log", "wb") as handle:
        handle.write(FILE_MAGIC)
        for start in range(1, 300_001, 10_000):
            handle.write(b"".join(encode_record(i, record) for i in range(start, start + 10_000)))
    key_path = cluster.data_dir / "admin.key"
    node = cluster.node(["--mode", "coordinator", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                         str(cluster.data_dir)], cluster.root / "coordinator.log")
    cluster.coordinator = node

    def node_url() -> str | None:
        if node.proc.poll() is not None:
            raise AssertionError(f"coordinator exited early:\n{node.output()}")
        info = json.loads((cluster.data_dir / "node.json").read_text())
        return info["url"] if info.get("pid") == node.proc.pid else None

    url = wait_for(node_url, timeout=60, interval=0.01, what="node.json of the new coordinator")
    starting: list[dict] = []
    other_routes: list[httpx.Response] = []
    ready = 0
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=10) as http:
        while ready < 3:
            assert time.monotonic() < deadline, f"never ready; saw {starting[-1:]}"
            assert node.proc.poll() is None, node.output()
            response = http.get(url + "/status")
            body = response.json()
            if response.status_code == 200:
                # Ready means ready: the key a script reads next is there.
                assert body["ready"] is True and body["status"] == "ok", body
                assert key_path.exists() and key_path.read_text().strip(), "200 /status before admin.key"
                ready += 1
                continue
            assert response.status_code == 503, response.text
            assert body["ready"] is False and body["status"] == "starting" and body["waiting_for"], body
            starting.append(body)
            if len(other_routes) < 3:
                other_routes.append(http.get(url + "/api/status", headers={"X-API-Key": "whatever"}))
    assert starting, "the coordinator never answered 503 while replaying 300,000 records"
    assert any("recovery" in body["waiting_for"] for body in starting), starting
    for response in other_routes:
        if response.status_code != 503:
            continue  # it may have become ready between the two requests
        assert response.json()["error"]["code"] == "starting", response.text
    assert any(r.status_code == 503 for r in other_routes), [r.text for r in other_routes]
    cluster.admin_key = key_path.read_text().strip()
    cluster.url = url
    assert cluster.api("GET", "/api/status").status_code == 200
