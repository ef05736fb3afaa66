"""The worker agent against a fake coordinator on a real loopback websocket (trio-websocket server).

The fake speaks the protocol of dtf_app/protocol.py; each test scripts what the coordinator does. Tasks
run through a small in-process runner defined here (so the agent is tested on its own), which really
sleeps, computes and writes into its work dir.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from dtf_app import protocol
from dtf_app.config import Settings
from dtf_app.worker import agent, identity
from dtf_app.worker.agent import WorkerError, run_worker, websocket_url
from dtf_app.worker.outbox import Outbox
from dtf_app.worker.runners import RunContext, TaskError

API_KEY = "worker-key"
TEST_TIMEOUT = 15


class StandInRunner:
    """Runs a task in-process: sleeps, sums a range, writes a file, or fails as its config says."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.contexts: list[RunContext] = []

    async def run(self, task: dict, ctx: RunContext) -> dict:
        config = task.get("config") or {}
        self.contexts.append(ctx)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            ctx.log(f"start {ctx.task_id}")
            (ctx.work_dir / "scratch.txt").write_text("in use")
            if config.get("sleep"):
                await trio.sleep(config["sleep"])
            if config.get("task_error"):
                raise TaskError(config["task_error"])
            if config.get("crash"):
                raise RuntimeError(config["crash"])
            total = sum(range(int(config.get("n", 10))))
            ctx.log(f"sum {total}")
            return {"status": "success", "metrics": {"sum": total}, "execution_time": 0.0, "environment": {},
                    "raw_data": {"env": dict(ctx.env)}, "output": ""}
        finally:
            self.active -= 1


class Connection:
    """One accepted worker connection as the fake coordinator sees it."""

    def __init__(self, ws: WebSocketConnection, hello: dict) -> None:
        self.ws = ws
        self.hello = hello
        self.inbox_send, self.inbox = trio.open_memory_channel[dict](1000)
        self.seen: list[dict] = []
        self.held: list[dict] = []

    async def send(self, message: dict) -> None:
        await self.ws.send_message(protocol.dumps(message))

    async def next(self, kind: str) -> dict:
        """The next message of type ``kind``; others stay queued for a later ``next`` of their type."""
        for index, message in enumerate(self.held):
            if message["type"] == kind:
                return self.held.pop(index)
        while True:
            message = await self.inbox.receive()
            if message["type"] == kind:
                return message
            self.held.append(message)

    async def collect(self, kind: str, count: int) -> list[dict]:
        """Items of ``kind`` messages ("started"/"results") until ``count`` of them arrived."""
        items: list[dict] = []
        while len(items) < count:
            items.extend((await self.next(kind))["items"])
        return items


Script = Callable[[Connection], Awaitable[None]]


class FakeCoordinator:
    """Accepts /ws/worker connections, checks the API key, says welcome, then runs the next script."""

    def __init__(self, scripts: list[Script], *, first_reply: dict | None = None, reject_status: int = 0,
                 close_code: int = 0, close_reason: str = "key revoked",
                 on_hello: Callable[[dict], None] | None = None) -> None:
        self.scripts = scripts
        self.on_hello = on_hello  # called with each hello before the reply goes out
        self.first_reply = first_reply
        self.reject_status = reject_status
        self.close_code = close_code
        self.close_reason = close_reason
        self.connections: list[Connection] = []
        self.credentials: list[bytes | None] = []  # the X-Worker-Credential of each upgrade
        self.port = 0

    async def handler(self, request: WebSocketRequest) -> None:
        headers = {name.lower(): value for name, value in request.headers}
        if request.path != "/ws/worker" or headers.get(b"x-api-key") != API_KEY.encode() or self.reject_status:
            await request.reject(self.reject_status or 401, body=b'{"error": {"code": "unauthorized"}}')
            return
        self.credentials.append(headers.get(protocol.WORKER_CREDENTIAL_HEADER.lower().encode()))
        ws = await request.accept()
        hello = protocol.loads(await ws.get_message())
        assert hello["type"] == protocol.HELLO
        if self.on_hello is not None:
            self.on_hello(hello)
        if self.close_code:
            await ws.aclose(code=self.close_code, reason=self.close_reason)
            return
        connection = Connection(ws, hello)
        self.connections.append(connection)
        await connection.send(self.first_reply or {
            "type": protocol.WELCOME, "worker_id": hello["worker_id"], "heartbeat_interval": 0.05,
            "worker_timeout": 5, "node_id": "fake"})
        script = self.scripts.pop(0) if self.scripts else None
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                try:
                    while True:
                        message = protocol.loads(await ws.get_message())
                        connection.seen.append(message)
                        await connection.inbox_send.send(message)
                except ConnectionClosed:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(reader)
            if script is None:
                await trio.sleep_forever()
            await script(connection)
            await ws.aclose()
            nursery.cancel_scope.cancel()

    async def start(self, nursery: trio.Nursery) -> None:
        server = await nursery.start(serve_websocket, self.handler, "127.0.0.1", 0, None)
        self.port = server.port


def make_settings(tmp_path: Path, port: int, **changes: Any) -> Settings:
    base = Settings(mode="worker", data_dir=str(tmp_path / "data"), coordinator=[f"http://127.0.0.1:{port}"],
                    api_key=API_KEY, worker_id="w1", max_concurrent_tasks=4, heartbeat_interval=0.05,
                    reconnect_attempts=3)
    return base.replace(**changes)


def assignment(task_id: str, attempt: int = 1, timeout: float = 60, **config: Any) -> dict:
    return {"task_id": task_id, "attempt": attempt, "type": "custom", "name": task_id, "config": config,
            "timeout_seconds": timeout, "priority": 1}


def fake_hardware(simulate_file: str | None) -> dict:
    return {"hardware": ["cpu"], "simulated": False, "tags": ["probe-tag"], "cpu": {"cores": 2}}


def fake_health() -> dict:
    return {"cpu_percent": 12.5, "memory_percent": 40.0}


async def start_worker(nursery: trio.Nursery, settings: Settings, runner: Any) -> str:
    """Start a worker whose runner is ``runner`` for every task type, or ``runner(task_type)`` if callable;
    ``None`` means no stand-ins at all (real runners, hardware detection and health sampling)."""
    if runner is None:
        return await nursery.start(lambda task_status: run_worker(settings, task_status=task_status))
    lookup = runner if callable(runner) and not isinstance(runner, StandInRunner) else (lambda task_type: runner)
    return await nursery.start(lambda task_status: run_worker(
        settings, task_status=task_status, get_runner=lookup,
        detect_hardware=fake_hardware, sample_health=fake_health))


async def outbox_rows(settings: Settings) -> list[dict]:
    outbox = await Outbox.open(settings.worker_db_path(settings.worker_id or ""))
    try:
        return await outbox.pending()
    finally:
        await outbox.aclose()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "BACKOFF_INITIAL", 0.01)
    monkeypatch.setattr(agent, "BACKOFF_MAX", 0.05)


async def test_assigned_tasks_run_report_started_logs_results_and_acks_empty_the_outbox(tmp_path: Path) -> None:
    runner = StandInRunner()
    done = trio.Event()
    observed: dict[str, Any] = {}

    async def script(conn: Connection) -> None:
        observed["hello"] = conn.hello
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment(f"t{i}", n=100 + i) for i in range(3)]})
        observed["started"] = await conn.collect(protocol.STARTED, 3)
        observed["results"] = await conn.collect(protocol.RESULTS, 3)
        observed["heartbeat"] = await conn.next(protocol.HEARTBEAT)
        await conn.send({"type": protocol.ACK, "items": [
            {"task_id": item["task_id"], "attempt": item["attempt"]} for item in observed["results"]]})
        # A later assignment's "started" proves the ack before it was processed (one receive loop, in order).
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("probe")]})
        await conn.collect(protocol.RESULTS, 1)
        observed["logs"] = [m for m in conn.seen if m["type"] == protocol.LOG]
        done.set()
        await trio.sleep_forever()

    fake = FakeCoordinator([script])
    settings = None
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            settings = make_settings(tmp_path, fake.port)
            assert await start_worker(nursery, settings, runner) == "w1"
            await done.wait()
            nursery.cancel_scope.cancel()

    hello = observed["hello"]
    assert hello["worker_id"] == "w1" and hello["max_concurrent_tasks"] == 4 and hello["running"] == []
    assert hello["capabilities"]["cpu"] == {"cores": 2} and hello["tags"] == ["probe-tag"]
    assert sorted(item["task_id"] for item in observed["started"]) == ["t0", "t1", "t2"]
    results = {item["task_id"]: item for item in observed["results"]}
    assert set(results) == {"t0", "t1", "t2"}
    for index in range(3):
        outcome = results[f"t{index}"]
        assert outcome["outcome"] == "completed" and outcome["error"] is None and outcome["attempt"] == 1
        assert outcome["result"]["metrics"] == {"sum": sum(range(100 + index))}
        assert outcome["result"]["raw_data"]["env"]["DTF_TASK_ID"] == f"t{index}"
        assert outcome["start_time"] <= outcome["end_time"]
    log_lines = {line for message in observed["logs"] for line in message["lines"]}
    assert {"start t0", f"sum {sum(range(100))}"} <= log_lines
    assert observed["heartbeat"]["metrics"] == fake_health()
    heartbeat = observed["heartbeat"]
    assert heartbeat["free_slots"] == 4 - len(heartbeat["running"]) and heartbeat["free_slots"] >= 1
    # Work dirs existed during the run and are removed after success.
    assert all(ctx.work_dir.parent == Path(settings.data_dir) / "work" for ctx in runner.contexts)
    assert not any(ctx.work_dir.exists() for ctx in runner.contexts)
    # Acked outcomes are gone from the outbox; the un-acked probe is still there, durable.
    assert [row["task_id"] for row in await outbox_rows(settings)] == ["probe"]


async def test_unacked_results_are_resent_after_reconnect_and_after_restart(tmp_path: Path) -> None:
    runner = StandInRunner()
    seen: dict[str, Any] = {}
    second_done = trio.Event()

    async def first(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("a"), assignment("b", attempt=2)]})
        seen["first"] = await conn.collect(protocol.RESULTS, 2)
        # Close without acking: the coordinator "lost" them (e.g. a failover).

    async def second(conn: Connection) -> None:
        seen["second_hello"] = conn.hello
        seen["second"] = await conn.collect(protocol.RESULTS, 2)
        # Re-assigning a task whose outcome is waiting for its ack re-sends the outcome, never re-runs it.
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("a")]})
        seen["reassigned"] = await conn.collect(protocol.RESULTS, 1)
        second_done.set()
        await trio.sleep_forever()  # still no ack

    fake = FakeCoordinator([first, second])
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            settings = make_settings(tmp_path, fake.port)
            await start_worker(nursery, settings, runner)
            await second_done.wait()
            nursery.cancel_scope.cancel()

    assert sorted((o["task_id"], o["attempt"]) for o in seen["second"]) == [("a", 1), ("b", 2)]
    assert {o["task_id"]: o for o in seen["second"]} == {o["task_id"]: o for o in seen["first"]}
    assert seen["second_hello"]["running"] == []
    assert [o["task_id"] for o in seen["reassigned"]] == ["a"]
    assert len(runner.contexts) == 2  # re-sent, not re-run

    # A restarted worker (same id, same data dir) re-sends from the DuckDB file; this time they get acked.
    third_done = trio.Event()

    async def third(conn: Connection) -> None:
        items = await conn.collect(protocol.RESULTS, 2)
        seen["third"] = items
        await conn.send({"type": protocol.ACK, "items": [{"task_id": o["task_id"], "attempt": o["attempt"]}
                                                         for o in items]})
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("probe")]})
        await conn.collect(protocol.RESULTS, 1)
        third_done.set()
        await trio.sleep_forever()

    fake.scripts.append(third)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            settings = make_settings(tmp_path, fake.port)
            await start_worker(nursery, settings, StandInRunner())
            await third_done.wait()
            nursery.cancel_scope.cancel()
    assert sorted(o["task_id"] for o in seen["third"]) == ["a", "b"]
    assert [row["task_id"] for row in await outbox_rows(settings)] == ["probe"]


async def run_script(tmp_path: Path, script: Script, runner: Any, *, before: tuple[Script, ...] = (),
                     **changes: Any) -> None:
    """Run a worker against a fake coordinator until ``script`` (the connection after ``before``) ends."""
    done = trio.Event()

    async def wrapped(conn: Connection) -> None:
        await script(conn)
        done.set()
        await trio.sleep_forever()

    fake = FakeCoordinator([*before, wrapped])
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            await start_worker(nursery, make_settings(tmp_path, fake.port, **changes), runner)
            await done.wait()
            nursery.cancel_scope.cancel()


async def test_cancel_message_stops_the_task_and_reports_it_cancelled(tmp_path: Path) -> None:
    outcomes: list[dict] = []

    async def script(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("slow", sleep=60), assignment("quick")]})
        await conn.collect(protocol.STARTED, 2)
        await conn.send({"type": protocol.CANCEL, "task_id": "slow", "attempt": 1})
        outcomes.extend(await conn.collect(protocol.RESULTS, 2))

    runner = StandInRunner()
    await run_script(tmp_path, script, runner)
    by_id = {o["task_id"]: o for o in outcomes}
    assert by_id["slow"]["outcome"] == "failed" and by_id["slow"]["error"] == "cancelled"
    assert by_id["quick"]["outcome"] == "completed"
    assert runner.active == 0


async def test_timeout_fails_the_task_with_the_limit_in_the_message(tmp_path: Path) -> None:
    outcomes: list[dict] = []

    async def script(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("slow", timeout=0.2, sleep=60)]})
        outcomes.extend(await conn.collect(protocol.RESULTS, 1))

    runner = StandInRunner()
    await run_script(tmp_path, script, runner)
    assert outcomes[0]["outcome"] == "failed" and outcomes[0]["error"] == "timed out after 0.2 s"
    assert 0.15 <= outcomes[0]["end_time"] - outcomes[0]["start_time"] < 5
    # A failed task keeps its work dir for inspection.
    assert (runner.contexts[0].work_dir / "scratch.txt").exists()


async def test_runner_errors_fail_the_task_but_never_the_worker(tmp_path: Path) -> None:
    outcomes: list[dict] = []
    runners: dict[str, Any] = {"custom": StandInRunner()}

    async def script(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [
            assignment("bad-config", task_error="config.command must be a list"),
            assignment("crash", crash="boom"),
            {**assignment("nobody"), "type": "quantum"},
        ]})
        outcomes.extend(await conn.collect(protocol.RESULTS, 3))
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("after")]})
        outcomes.extend(await conn.collect(protocol.RESULTS, 1))

    def lookup(task_type: str) -> Any:
        if task_type not in runners:
            raise TaskError(f"this worker cannot run {task_type!r} tasks")
        return runners[task_type]

    await run_script(tmp_path, script, lookup)
    by_id = {o["task_id"]: o for o in outcomes}
    assert by_id["bad-config"]["error"] == "config.command must be a list"
    assert by_id["crash"]["error"] == "RuntimeError: boom"
    assert by_id["nobody"]["error"] == "this worker cannot run 'quantum' tasks"
    assert all(by_id[name]["outcome"] == "failed" for name in ("bad-config", "crash", "nobody"))
    assert by_id["after"]["outcome"] == "completed"


async def test_slots_bound_concurrency_even_when_over_assigned(tmp_path: Path) -> None:
    outcomes: list[dict] = []

    async def script(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment(f"t{i}", sleep=0.1) for i in range(5)]})
        outcomes.extend(await conn.collect(protocol.RESULTS, 5))

    runner = StandInRunner()
    await run_script(tmp_path, script, runner, max_concurrent_tasks=2)
    assert runner.peak == 2
    assert all(o["outcome"] == "completed" for o in outcomes)


async def revoke_after_welcome(conn: Connection) -> None:
    await conn.send({"type": protocol.ERROR, "code": "forbidden", "message": "key revoked"})
    await trio.sleep_forever()


async def test_bad_key_is_fatal_with_exit_code_4(tmp_path: Path) -> None:
    cases = [
        (FakeCoordinator([]), "wrong-key"),  # upgrade refused with HTTP 401
        (FakeCoordinator([], reject_status=403), API_KEY),
        (FakeCoordinator([], close_code=4403), API_KEY),
        (FakeCoordinator([], first_reply={"type": protocol.ERROR, "code": "unauthorized", "message": "no"}), API_KEY),
        (FakeCoordinator([revoke_after_welcome]), API_KEY),  # mid-session
    ]
    for fake, key in cases:
        with trio.fail_after(TEST_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await fake.start(nursery)
                settings = make_settings(tmp_path, fake.port, api_key=key, worker_id=None)
                with pytest.raises(WorkerError, match="refused this worker's API key") as info:
                    await run_worker(settings, get_runner=lambda t: StandInRunner(),
                                     detect_hardware=fake_hardware, sample_health=fake_health)
                assert info.value.exit_code == 4
                nursery.cancel_scope.cancel()


async def refuse_credential_after_welcome(conn: Connection) -> None:
    # What the coordinator does when an admin forgets the enrolment of a connected worker.
    await conn.send({"type": protocol.ERROR, "code": protocol.CREDENTIAL_REFUSED,
                     "message": "the enrolment of worker 'w1' was revoked by an admin"})
    await conn.ws.aclose(code=4403, reason="credential_refused: the enrolment of worker 'w1' was revoked")


async def test_refused_or_revoked_credential_is_fatal_with_exit_code_4_and_says_what_to_do(tmp_path: Path) -> None:
    cases = [
        FakeCoordinator([], first_reply={"type": protocol.ERROR, "code": protocol.CREDENTIAL_REFUSED,
                                         "message": "not the credential worker 'w1' enrolled with"}),
        FakeCoordinator([], close_code=4403, close_reason="credential_refused: worker 'w1' is enrolled"),
        FakeCoordinator([refuse_credential_after_welcome]),  # mid-session: revoked
    ]
    for fake in cases:
        with trio.fail_after(TEST_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await fake.start(nursery)
                settings = make_settings(tmp_path, fake.port)
                with pytest.raises(WorkerError, match="refused to let this worker act as 'w1'") as info:
                    await run_worker(settings, get_runner=lambda t: StandInRunner(),
                                     detect_hardware=fake_hardware, sample_health=fake_health)
                assert info.value.exit_code == 4
                assert "dtf workers forget w1" in str(info.value) and "worker-w1.credential" in str(info.value)
                assert len(fake.credentials) == 1  # no reconnect loop
                nursery.cancel_scope.cancel()


async def test_credential_is_created_0600_presented_and_kept_across_reconnects_and_restarts(tmp_path: Path) -> None:
    import stat

    async def close_at_once(conn: Connection) -> None:
        pass  # the fake closes the socket after the script: the worker reconnects

    async def connected(conn: Connection) -> None:
        reconnected.set()
        await trio.sleep_forever()

    reconnected = trio.Event()
    fake = FakeCoordinator([close_at_once, connected, connected])
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            settings = make_settings(tmp_path, fake.port)
            for _run in range(2):  # a second run of the worker on the same data dir is a restart
                async with trio.open_nursery() as worker:
                    await start_worker(worker, settings, StandInRunner())
                    await reconnected.wait()
                    reconnected = trio.Event()
                    worker.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    path = identity.credential_path(settings, "w1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = path.read_text().strip().encode()
    assert len(fake.credentials) == 3 and set(fake.credentials) == {stored} and len(stored) >= 32


async def test_a_credential_issued_in_the_welcome_is_stored_and_presented_from_then_on(tmp_path: Path) -> None:
    issued = "dtfw_issued-by-the-coordinator-" + "q" * 20

    async def close_at_once(conn: Connection) -> None:
        pass

    async def connected(conn: Connection) -> None:
        done.set()
        await trio.sleep_forever()

    done = trio.Event()
    fake = FakeCoordinator([close_at_once, connected], first_reply={
        "type": protocol.WELCOME, "worker_id": "w1", "heartbeat_interval": 0.05, "worker_timeout": 5,
        "node_id": "fake", "credential": issued})
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            settings = make_settings(tmp_path, fake.port)
            await start_worker(nursery, settings, StandInRunner())
            await done.wait()
            nursery.cancel_scope.cancel()
    assert fake.credentials[1] == issued.encode() and fake.credentials[0] != issued.encode()
    assert identity.credential_path(settings, "w1").read_text().strip() == issued


async def test_a_damaged_credential_file_is_a_config_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, 9)  # never connects: the file is checked first
    path = identity.credential_path(settings, "w1")
    path.parent.mkdir(parents=True)
    path.write_text("short\n")
    with pytest.raises(WorkerError, match="damaged") as info:
        await run_worker(settings, get_runner=lambda t: StandInRunner(), detect_hardware=fake_hardware,
                         sample_health=fake_health)
    assert info.value.exit_code == 2 and str(path) in str(info.value)


async def test_unreachable_coordinator_gives_up_after_reconnect_attempts(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(tmp_path, port, reconnect_attempts=3)
    with trio.fail_after(TEST_TIMEOUT):
        with pytest.raises(WorkerError, match=rf"cannot reach coordinator at http://127.0.0.1:{port} after 3 "
                                              "attempts") as info:
            await run_worker(settings, get_runner=lambda t: StandInRunner(), detect_hardware=fake_hardware,
                             sample_health=fake_health)
    assert info.value.exit_code == 3


async def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    for changes, message in [
        ({"coordinator": ["ftp://x"]}, "is not valid"),
        ({"max_concurrent_tasks": 0}, "at least 1"),
        ({"heartbeat_interval": 0}, "must be > 0"),
    ]:
        with pytest.raises(WorkerError, match=message) as info:
            await run_worker(make_settings(tmp_path, 1, **changes), detect_hardware=fake_hardware,
                             sample_health=fake_health)
        assert info.value.exit_code == 2
    # A missing --simulate-hardware profile, through the real hardware.detect.
    with pytest.raises(WorkerError, match="cannot use the hardware profile: .*nonexistent.json") as info:
        await run_worker(make_settings(tmp_path, 1, simulate_hardware=str(tmp_path / "nonexistent.json")))
    assert info.value.exit_code == 2


def test_websocket_url_conversion() -> None:
    assert websocket_url("http://h:8080") == "ws://h:8080/ws/worker"
    assert websocket_url("https://h:8443/") == "wss://h:8443/ws/worker"
    assert websocket_url("ws://h:1/ws/worker") == "ws://h:1/ws/worker"
    with pytest.raises(WorkerError, match="expected http://HOST:PORT"):
        websocket_url("h:8080")


def test_generated_worker_id_is_persisted_and_not_shared_by_concurrent_workers(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), worker_id=None)
    first_id, first_lock = identity.claim_worker_id(settings)
    assert first_lock is not None
    assert (tmp_path / "worker-id").read_text().strip() == first_id
    hostname_part, suffix = first_id.rsplit("-", 1)
    assert len(suffix) == 6 and int(suffix, 16) >= 0 and hostname_part
    # A second worker on the same data dir while the first runs gets its own, unpersisted id.
    second_id, second_lock = identity.claim_worker_id(settings)
    assert second_id != first_id and second_lock is None
    first_lock.close()
    # After the first stops, a restart keeps the persisted identity.
    again_id, again_lock = identity.claim_worker_id(settings)
    assert again_id == first_id
    again_lock.close()
    assert identity.claim_worker_id(settings.replace(worker_id="explicit")) == ("explicit", None)


async def test_tasks_keep_running_across_a_reconnect_and_report_on_the_new_connection(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def first(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("long", sleep=0.5)]})
        await conn.collect(protocol.STARTED, 1)  # then drop the connection while the task runs

    async def second(conn: Connection) -> None:
        seen["hello"] = conn.hello
        seen["results"] = await conn.collect(protocol.RESULTS, 1)

    await run_script(tmp_path, second, StandInRunner(), before=(first,))
    assert seen["hello"]["running"] == [{"task_id": "long", "attempt": 1}]
    assert seen["results"][0]["task_id"] == "long" and seen["results"][0]["outcome"] == "completed"


class ChattyRunner:
    """Logs many lines (one of them huge), some from a helper thread, then succeeds."""

    async def run(self, task: dict, ctx: RunContext) -> dict:
        for index in range(300):
            ctx.log(f"line {index}")
        ctx.log("x" * (agent.MAX_LOG_LINE_CHARS + 500))
        await trio.to_thread.run_sync(ctx.log, "from a thread")
        await trio.sleep(0.05)  # lines keep flowing after the task ends too
        return {"status": "success", "metrics": {}}


async def test_log_lines_are_batched_capped_and_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "MAX_LOG_LINES_PER_MESSAGE", 50)
    messages: list[dict] = []

    async def script(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("chatty")]})
        while not messages or messages[-1]["lines"][-1] != "from a thread":
            messages.append(await conn.next(protocol.LOG))

    chatty = ChattyRunner()
    await run_script(tmp_path, script, lambda task_type: chatty)
    lines = [line for message in messages for line in message["lines"]]
    assert all(m["task_id"] == "chatty" and m["attempt"] == 1 for m in messages)
    assert all(len(m["lines"]) <= 50 for m in messages) and len(messages) >= 6
    assert lines[:300] == [f"line {index}" for index in range(300)]
    assert lines[300].endswith(" [truncated]") and len(lines[300]) == agent.MAX_LOG_LINE_CHARS + len(" [truncated]")
    assert lines[301:] == ["from a thread"]


async def test_shutdown_cancels_running_tasks_and_leaves_a_reopenable_outbox(tmp_path: Path) -> None:
    runner = StandInRunner()
    started = trio.Event()

    async def script(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("done"), assignment("forever", sleep=600)]})
        await conn.collect(protocol.RESULTS, 1)
        started.set()
        await trio.sleep_forever()

    fake = FakeCoordinator([script])
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            settings = make_settings(tmp_path, fake.port)
            await start_worker(nursery, settings, runner)
            await started.wait()
            nursery.cancel_scope.cancel()  # what SIGTERM does through node.py
    assert runner.active == 0  # the sleeping task was cancelled, not left behind
    assert [row["task_id"] for row in await outbox_rows(settings)] == ["done"]


async def test_default_runners_hardware_and_health_run_real_commands(tmp_path: Path) -> None:
    """No injection: the real dtf.runners plugins, hardware.detect and health.sample."""
    seen: dict[str, Any] = {}
    marker = tmp_path / "survivor"

    async def script(conn: Connection) -> None:
        seen["hello"] = conn.hello
        await conn.send({"type": protocol.ASSIGN, "tasks": [
            {**assignment("cmd"), "config": {"command": ["python3", "-c", "print('hello from a subprocess')"]}},
            {**assignment("named"), "config": {"name": "echo", "args": [1, 2]}},
            # The subprocess would create the marker after 1.5 s; the 0.5 s timeout must kill it first.
            {**assignment("hang", timeout=0.5), "config": {"command": [
                "python3", "-c", f"import time, pathlib; time.sleep(1.5); pathlib.Path({str(marker)!r}).touch()"]}},
        ]})
        seen["results"] = await conn.collect(protocol.RESULTS, 3)
        seen["heartbeat"] = await conn.next(protocol.HEARTBEAT)

    await run_script(tmp_path, script, None)  # no stand-ins: real runners, detection, health
    assert "cpu" in seen["hello"]["capabilities"]["hardware"] and seen["hello"]["simulated"] is False
    by_id = {o["task_id"]: o for o in seen["results"]}
    assert by_id["cmd"]["outcome"] == "completed" and by_id["cmd"]["result"]["status"] == "success"
    assert "hello from a subprocess" in by_id["cmd"]["result"]["output"]
    assert by_id["named"]["outcome"] == "completed"
    assert by_id["hang"]["outcome"] == "failed" and by_id["hang"]["error"] == "timed out after 0.5 s"
    assert "cpu_percent" in seen["heartbeat"]["metrics"]
    await trio.sleep(2)
    assert not marker.exists()  # the timed-out subprocess was killed, not left running


async def test_unusable_work_dir_fails_the_task_not_the_worker(tmp_path: Path) -> None:
    outcomes: list[dict] = []
    settings_dir = tmp_path / "data"
    settings_dir.mkdir()
    (settings_dir / "work").write_text("a file where the work folder should be")

    async def script(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("t1")]})
        outcomes.extend(await conn.collect(protocol.RESULTS, 1))

    await run_script(tmp_path, script, StandInRunner())
    assert outcomes[0]["outcome"] == "failed" and outcomes[0]["error"].startswith("worker error: ")


async def test_probes_overlap_the_upgrade_and_a_fresh_outbox_opens_only_after_the_welcome(tmp_path: Path) -> None:
    import threading

    upgraded = threading.Event()
    probe_saw_upgrade: list[bool] = []
    at_hello: dict[str, Any] = {}

    def slow_probe(simulate_file: str | None) -> dict:
        # Finishes only once the coordinator has the upgrade request: detection runs while the socket opens.
        probe_saw_upgrade.append(upgraded.wait(TEST_TIMEOUT))
        return fake_hardware(simulate_file)

    def on_hello(hello: dict) -> None:
        at_hello["hello"] = hello
        at_hello["outbox_file"] = settings.worker_db_path("w1").exists()

    async def script(conn: Connection) -> None:
        await conn.send({"type": protocol.ASSIGN, "tasks": [assignment("t1")]})
        results = await conn.collect(protocol.RESULTS, 1)
        await conn.send({"type": protocol.ACK, "items": [{"task_id": "t1", "attempt": 1}]})
        at_hello["results"] = results
        done.set()
        await trio.sleep_forever()

    done = trio.Event()
    fake = FakeCoordinator([script], on_hello=on_hello)
    handler = fake.handler

    async def noting_handler(request: WebSocketRequest) -> None:
        upgraded.set()
        await handler(request)

    fake.handler = noting_handler  # type: ignore[method-assign]
    settings = make_settings(tmp_path, 0)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            settings = make_settings(tmp_path, fake.port)
            await nursery.start(lambda task_status: run_worker(
                settings, task_status=task_status, get_runner=lambda t: StandInRunner(),
                detect_hardware=slow_probe, sample_health=fake_health))
            await done.wait()
            nursery.cancel_scope.cancel()
    assert probe_saw_upgrade == [True]
    # The hello waited for the probe's full document: the scheduler never sees a partial profile.
    assert at_hello["hello"]["capabilities"] == fake_hardware(None) and at_hello["hello"]["finished"] == []
    assert at_hello["outbox_file"] is False  # DuckDB was not opened before the hello
    assert [o["task_id"] for o in at_hello["results"]] == ["t1"]
    assert await outbox_rows(settings) == []  # the outcome went through the (later opened) outbox and was acked
    assert settings.worker_db_path("w1").with_name("worker-w1.duckdb.empty").exists()


async def test_stored_outcomes_are_listed_in_the_hello_and_a_stale_empty_marker_cannot_hide_them(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, 0)
    stored = {"task_id": "old", "attempt": 3, "outcome": "completed", "start_time": 1.0, "end_time": 2.0,
              "error": None, "result": {"status": "success", "metrics": {}}}
    outbox = await Outbox.open(settings.worker_db_path("w1"))
    await outbox.add_many([stored])
    await outbox.aclose()
    marker = settings.worker_db_path("w1").with_name("worker-w1.duckdb.empty")
    hellos: list[dict] = []
    for stale in (False, True):
        if stale:
            marker.touch()  # e.g. an old outbox file copied back under a newer marker
        got: dict[str, Any] = {}

        async def script(conn: Connection) -> None:
            got["results"] = await conn.collect(protocol.RESULTS, 1)  # noqa: B023 - awaited in this loop turn
            done.set()  # noqa: B023
            await trio.sleep_forever()

        done = trio.Event()
        fake = FakeCoordinator([script], on_hello=hellos.append)
        with trio.fail_after(TEST_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await fake.start(nursery)
                await start_worker(nursery, make_settings(tmp_path, fake.port), StandInRunner())
                await done.wait()
                nursery.cancel_scope.cancel()
        assert got["results"] == [stored]  # re-sent either way: never lost
    assert hellos[0]["finished"] == [{"task_id": "old", "attempt": 3}]
    assert hellos[1]["finished"] == []  # the marker is trusted for the hello, the file for the re-send


async def test_a_second_worker_on_the_same_outbox_is_refused_before_it_connects(tmp_path: Path) -> None:
    fake = FakeCoordinator([])
    shared = str(tmp_path / "shared.duckdb")
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            await start_worker(nursery, make_settings(tmp_path, fake.port, db_path=shared), StandInRunner())
            with pytest.raises(WorkerError, match="another running worker holds") as info:
                await run_worker(make_settings(tmp_path / "b", fake.port, db_path=shared, worker_id="w2"),
                                 get_runner=lambda t: StandInRunner(), detect_hardware=fake_hardware,
                                 sample_health=fake_health)
            assert info.value.exit_code == 2 and shared in str(info.value)
            assert len(fake.connections) == 1
            nursery.cancel_scope.cancel()
