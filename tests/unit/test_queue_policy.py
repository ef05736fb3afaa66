"""The queue policy and the balancer with an injected clock: aging's bound, fair share, backoff,
preemption planning, wait reasons, and each strategy's placement on a fixed scenario."""

from __future__ import annotations

from typing import Any

import pytest

from dtf_app.coordinator import balancer, scheduler
from dtf_app.coordinator.scheduler import QueuePolicy, ReadyQueue, Usage, plan_assignments
from dtf_app.coordinator.state import State


def _task(task_id: str, *, priority: int = 1, at: float = 0.0, seq: int = 0, submitter: str = "alice",
          group: str = "g", req: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"task_id": task_id, "type": "custom", "config": {"command": ["true"]}, "priority": priority,
            "seq": seq, "create_time": at, "ready_since": at, "requirements": req or {}, "status": "pending",
            "submitter": submitter, "group": group, "attempts": 0, **extra}


def _worker(worker_id: str, slots: int = 1, hardware: tuple[str, ...] = ("cpu",), **extra: Any) -> dict[str, Any]:
    return {"worker_id": worker_id, "hardware": list(hardware), "max_concurrent_tasks": slots, "assigned": {},
            "status": "online", "capabilities": {}, **extra}


class Sim:
    """A cluster whose every task takes ``duration`` seconds, driven by a fake clock."""

    def __init__(self, workers: dict[str, dict[str, Any]], policy: QueuePolicy, duration: float = 1.0,
                 strategy: str = "fair_share") -> None:
        self.workers, self.policy, self.duration, self.strategy = workers, policy, duration, strategy
        self.tasks: dict[str, dict[str, Any]] = {}
        self.queue = ReadyQueue()
        self.seq = 0
        self.now = 0.0
        self.started: dict[str, float] = {}
        self.ends: list[tuple[float, str, str]] = []

    def submit(self, task_id: str, **kw: Any) -> None:
        task = _task(task_id, at=self.now, seq=self.seq, **kw)
        self.seq += 1
        self.tasks[task_id] = task
        self.queue.push(task)

    def step(self, to: float) -> list[tuple[str, str]]:
        """Advance the clock to ``to``: finish what ended, then one full scheduling pass."""
        self.now = to
        for end, task_id, worker_id in [e for e in self.ends if e[0] <= to]:
            self.ends.remove((end, task_id, worker_id))
            del self.workers[worker_id]["assigned"][task_id]
        free = {w: doc["max_concurrent_tasks"] - len(doc["assigned"]) for w, doc in self.workers.items()}
        usage = Usage.of(self.tasks, self.workers)
        plan = plan_assignments(self.queue, self.tasks, self.workers, free, now=to, policy=self.policy,
                                usage=usage, strategy=self.strategy)
        for task_id, worker_id in plan:
            self.queue.discard(task_id)
            self.workers[worker_id]["assigned"][task_id] = 1
            self.started[task_id] = to
            self.ends.append((to + self.duration, task_id, worker_id))
        return plan


# ------------------------------------------------------------------------------------------------ aging
@pytest.mark.parametrize(("submitter", "group"), [("bob", "flood"), ("alice", "flood"), ("alice", "g")])
def test_aging_bound_priority_zero_under_a_flood_of_priority_100(submitter: str, group: str) -> None:
    """A priority-0 task starts within aging_bound (+ one task's run for a slot to free up) whatever the
    stream of priority-100 tasks after it: other submitters, its own submitter, even its own group."""
    policy = QueuePolicy(aging_rate=2.0)  # 100 points in 50 s
    sim = Sim({"w": _worker("w", slots=1)}, policy)
    sim.submit("low", priority=0)
    flood = 0
    t = 0.0
    while "low" not in sim.started and t < 10 * policy.aging_bound:
        for _ in range(5):  # five new top-priority tasks a second: far more than the one slot can run
            sim.submit(f"high-{flood}", priority=100, submitter=submitter, group=group)
            flood += 1
        sim.step(t)
        t += 1.0
    assert "low" in sim.started, "the priority-0 task starved"
    waited = sim.started["low"]
    assert waited <= policy.aging_bound + sim.duration
    # And aging is not instant: for most of the bound the flood went first.
    assert waited >= policy.aging_bound - 2 * sim.duration
    assert sum(1 for t in sim.started if t.startswith("high-")) >= policy.aging_bound - 2


def test_without_aging_a_flood_starves_the_low_task() -> None:
    sim = Sim({"w": _worker("w")}, QueuePolicy(aging_rate=0.0))
    sim.submit("low", priority=0)
    for t in range(300):
        sim.submit(f"high-{t}", priority=100, submitter="bob")
        sim.step(float(t))
    assert "low" not in sim.started
    assert QueuePolicy(aging_rate=0.0).aging_bound == float("inf")
    assert QueuePolicy().aging_bound == pytest.approx(600.0)


def test_effective_priority_is_capped_and_floored() -> None:
    policy = QueuePolicy(aging_rate=1.0)
    assert policy.level(10, 0) == 10 and policy.level(10, 5.9) == 15 and policy.level(10, 10_000) == 100


# ------------------------------------------------------------------------------------------- fair share
def test_fair_share_between_two_submitters() -> None:
    """Alice queues 200 tasks first; Bob's 200 come later at the same priority: from then on every pass
    gives each about half the slots (not Alice's whole backlog first)."""
    workers = {f"w{i}": _worker(f"w{i}", slots=2) for i in range(4)}
    sim = Sim(workers, QueuePolicy(), duration=1.0)
    for i in range(200):
        sim.submit(f"a{i}", submitter="alice", group="a-batch")
    sim.step(0.0)
    sim.step(1.0)
    sim.now = 30.0  # Bob arrives half a minute later: Alice's tasks are older and have aged
    for i in range(200):
        sim.submit(f"b{i}", submitter="bob", group="b-batch")
    per_pass = []
    for t in range(2, 12):
        plan = sim.step(30.0 + t)
        per_pass.append(sum(1 for task_id, _ in plan if task_id.startswith("b")))
        assert len(plan) == 8
    assert all(n == 4 for n in per_pass), per_pass
    # Within one pass they alternate (fewest held first), so a partial pass is even too.
    assert sum(1 for t in sim.started if t.startswith("a")) == 16 + 40
    assert sum(1 for t in sim.started if t.startswith("b")) == 40


def test_fair_share_across_groups_of_one_submitter() -> None:
    workers = {"w": _worker("w", slots=6)}
    sim = Sim(workers, QueuePolicy())
    for i in range(10):
        sim.submit(f"x{i}", group="nightly")
    for i in range(10):
        sim.submit(f"y{i}", group="smoke")
    plan = sim.step(1.0)
    assert sorted(t[0] for t, _ in plan) == ["x", "x", "x", "y", "y", "y"]


def test_higher_priority_still_goes_first_over_fair_share() -> None:
    sim = Sim({"w": _worker("w", slots=2)}, QueuePolicy())
    for i in range(3):
        sim.submit(f"a{i}", priority=50, submitter="alice")
    sim.submit("b0", priority=1, submitter="bob")
    assert [t for t, _ in sim.step(0.0)] == ["a0", "a1"]


# ------------------------------------------------------------------------------------------------ backoff
def test_backed_off_task_waits_for_not_before() -> None:
    queue = ReadyQueue()
    tasks = {"r": _task("r", not_before=100.0), "n": _task("n", seq=1)}
    for task in tasks.values():
        queue.push(task)
    assert list(queue.ordered(50.0, QueuePolicy())) == ["n"]
    assert queue.waiting_backoff("r") and queue.next_due() == 100.0
    assert list(queue.ordered(100.0, QueuePolicy())) == ["r", "n"]
    assert queue.next_due() is None


def test_repush_never_yields_a_task_twice() -> None:
    queue = ReadyQueue()
    task = _task("t")
    queue.push(task)
    queue.discard("t")
    queue.push(task)
    assert list(queue.ordered(1.0, QueuePolicy())) == ["t"]


# ------------------------------------------------------------------------------------------------ state
def _state_with(task_doc: dict[str, Any], worker_id: str = "w") -> State:
    state = State()
    state.apply({"op": "RegisterWorker", "time": 0.0, "worker": {"worker_id": worker_id, "hardware": ["cpu"],
                                                                 "max_concurrent_tasks": 1}})
    state.apply({"op": "SubmitTasks", "time": 1.0, "tasks": [task_doc]})
    return state


def _run(state: State, task_id: str, attempt: int, worker_id: str = "w", at: float = 2.0) -> None:
    state.apply({"op": "AssignTasks", "time": at, "assignments": [
        {"task_id": task_id, "worker_id": worker_id, "attempt": attempt}]})
    state.apply({"op": "StartTasks", "time": at, "items": [{"task_id": task_id, "attempt": attempt}]})


def test_preemption_requeues_without_spending_a_retry() -> None:
    state = _state_with({"task_id": "v", "type": "custom", "priority": 1, "config": {}, "requirements": {},
                         "max_retries": 0})
    _run(state, "v", 1)
    (accepted,), = [state.apply({"op": "PreemptTasks", "time": 3.0, "items": [
        {"task_id": "v", "attempt": 1, "worker_id": "w", "by": "urgent", "by_priority": 90}]})[0]]
    assert accepted["task_id"] == "v"
    task = state.tasks["v"]
    assert task["status"] == "pending" and task["preemptions"] == 1 and task["attempts"] == 1
    assert "preempted by task urgent" in task["error"] and state.workers["w"]["assigned"] == {}
    # The late "cancelled" report of the preempted attempt is ignored.
    state.apply({"op": "FailTasks", "time": 3.5, "items": [{"task_id": "v", "attempt": 1, "worker_id": "w",
                                                             "error": "cancelled", "error_class": "cancelled"}]})
    assert task["status"] == "pending"
    # max_retries 0 still allows the one real attempt, the next (attempt 2).
    _run(state, "v", 2, at=4.0)
    state.apply({"op": "CompleteTasks", "time": 5.0, "items": [{"task_id": "v", "attempt": 2, "worker_id": "w",
                                                                 "result": {"status": "success"}}]})
    assert task["status"] == "completed"
    # Preempting an attempt that is not current does nothing.
    result, _ = state.apply({"op": "PreemptTasks", "time": 6.0, "items": [
        {"task_id": "v", "attempt": 2, "worker_id": "w", "by": "x", "by_priority": 90}]})
    assert result == []


def test_non_retryable_error_fails_at_once_with_its_reason() -> None:
    state = _state_with({"task_id": "t", "type": "test", "priority": 1, "config": {"test_file": "missing.py"},
                         "requirements": {}, "max_retries": 3})
    _run(state, "t", 1)
    state.apply({"op": "FailTasks", "time": 3.0, "backoff": [1.0, 60.0], "items": [
        {"task_id": "t", "attempt": 1, "worker_id": "w", "retry": True, "error_class": "missing_file",
         "error": "config.test_file 'missing.py' does not exist on this worker"}]})
    task = state.tasks["t"]
    assert task["status"] == "failed" and task["attempts"] == 1 and task["error_class"] == "missing_file"
    assert "does not exist on this worker" in task["error"] and "not retried: missing_file" in task["error"]


def test_retryable_error_backs_off_exponentially() -> None:
    state = _state_with({"task_id": "t", "type": "custom", "priority": 1, "config": {}, "requirements": {},
                         "max_retries": 5})
    task = state.tasks["t"]
    for attempt, (at, delay) in enumerate([(10.0, 2.0), (20.0, 4.0), (30.0, 8.0)], start=1):
        _run(state, "t", attempt, at=at - 1)
        state.apply({"op": "FailTasks", "time": at, "backoff": [2.0, 6.0 if attempt == 3 else 60.0], "items": [
            {"task_id": "t", "attempt": attempt, "worker_id": "w", "error": "boom", "error_class": "crash"}]})
        assert task["status"] == "pending"
        assert task["not_before"] == at + min(delay, 6.0 if attempt == 3 else 60.0)
    _run(state, "t", 4, at=40.0)
    assert "not_before" not in task


# ------------------------------------------------------------------------------------------ preemption
def test_plan_preemptions_picks_the_lowest_priority_victim() -> None:
    workers = {"a": _worker("a", slots=1), "b": _worker("b", slots=1),
               "gpu": _worker("gpu", slots=1, hardware=("cpu", "cuda"))}
    tasks = {"lowest": _task("lowest", priority=0, status="running", attempts=1, start_time=5.0),
             "mid": _task("mid", priority=20, status="running", attempts=1, start_time=5.0),
             "onGpu": _task("onGpu", priority=0, status="running", attempts=1, start_time=5.0),
             "urgent": _task("urgent", priority=90, seq=1),
             "gpuJob": _task("gpuJob", priority=95, seq=2, req={"hardware": ["cuda"]})}
    workers["a"]["assigned"] = {"lowest": 1}
    workers["b"]["assigned"] = {"mid": 1}
    workers["gpu"]["assigned"] = {"onGpu": 1}
    queue = ReadyQueue()
    queue.push(tasks["urgent"])
    queue.push(tasks["gpuJob"])
    policy = QueuePolicy(preemption_threshold=50)
    out = scheduler.plan_preemptions(queue, tasks, workers, workers, now=10.0, policy=policy)
    assert [(o["by"], o["task_id"], o["worker_id"]) for o in out] == [("gpuJob", "onGpu", "gpu"),
                                                                      ("urgent", "lowest", "a")]
    # A threshold above the difference, a task already preempted once, or preemption off: nothing.
    assert scheduler.plan_preemptions(queue, tasks, workers, workers, now=10.0,
                                      policy=QueuePolicy(preemption_threshold=96)) == []
    assert scheduler.plan_preemptions(queue, tasks, workers, workers, now=10.0, policy=QueuePolicy()) == []
    for victim in ("lowest", "mid", "onGpu"):
        tasks[victim]["preemptions"] = 1
    assert scheduler.plan_preemptions(queue, tasks, workers, workers, now=10.0, policy=policy) == []


def test_plan_preemptions_skips_workers_with_queued_extras() -> None:
    workers = {"a": _worker("a", slots=1)}
    tasks = {"v": _task("v", priority=0, status="running", attempts=1),
             "queued": _task("queued", priority=0, status="assigned", attempts=1),
             "urgent": _task("urgent", priority=100)}
    workers["a"]["assigned"] = {"v": 1, "queued": 1}
    queue = ReadyQueue()
    queue.push(tasks["urgent"])
    assert scheduler.plan_preemptions(queue, tasks, workers, workers, now=1.0,
                                      policy=QueuePolicy(preemption_threshold=10)) == []


# ------------------------------------------------------------------------------------------ wait reasons
def test_wait_reasons() -> None:
    workers = {"w": _worker("w", slots=1)}
    tasks = {"dep": _task("dep", status="running"), "blocked": _task("blocked", status="blocked",
                                                                      dependencies=["dep"]),
             "backoff": _task("backoff", not_before=50.0, error="boom"),
             "gpu": _task("gpu", req={"hardware": ["cuda"]}),
             "first": _task("first", priority=9, seq=1), "second": _task("second", priority=1, seq=2)}
    queue = ReadyQueue()
    for task_id in ("backoff", "gpu", "first", "second"):
        queue.push(tasks[task_id])
    policy = QueuePolicy()

    def reason(task_id: str) -> dict[str, Any] | None:
        return scheduler.wait_reason(tasks[task_id], tasks, workers, queue, now=10.0, policy=policy)

    assert reason("blocked")["blocked_by"] == ["dep"] and "blocked by dep" in reason("blocked")["message"]
    assert reason("backoff")["code"] == "backoff" and reason("backoff")["until"] == 50.0
    assert reason("gpu")["code"] == "no_capable_worker"
    assert reason("first")["code"] == "next"
    assert reason("second") == {"code": "behind", "ahead": 2, "message": "behind 2 task(s) of higher priority"}
    workers["w"]["assigned"] = {"dep": 1}
    assert reason("first")["code"] == "no_capable_worker_free"
    assert reason("dep") is None


# ------------------------------------------------------------------------------------------- strategies
def _scenario() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Three CPU workers of 4 slots: w1 holds 2 of alice's tasks, w2 holds 1 of bob's, w3 nothing; bob
    submits three more."""
    workers = {w: _worker(w, slots=4) for w in ("w1", "w2", "w3")}
    workers["w1"]["hardware_id"] = "box-1"
    workers["w3"]["hardware_id"] = "slow-box"
    tasks = {"held-a1": _task("held-a1", status="running", submitter="alice"),
             "held-a2": _task("held-a2", status="running", submitter="alice"),
             "held-b": _task("held-b", status="running", submitter="bob")}
    workers["w1"]["assigned"] = {"held-a1": 1, "held-a2": 1}
    workers["w2"]["assigned"] = {"held-b": 1}
    for i in range(3):
        tasks[f"new{i}"] = _task(f"new{i}", seq=10 + i, submitter="bob", group="new")
    return workers, tasks


def _place(strategy: str, history: balancer.PerfHistory | None = None,
           worker_cap: int | None = None) -> list[tuple[str, str]]:
    workers, tasks = _scenario()
    queue = ReadyQueue()
    for task_id in ("new0", "new1", "new2"):
        queue.push(tasks[task_id])
    free = {w: 4 - len(doc["assigned"]) for w, doc in workers.items()}
    return plan_assignments(queue, tasks, workers, free, now=0.0, policy=QueuePolicy(), strategy=strategy,
                            history=history, worker_cap=worker_cap)


def test_strategy_least_loaded() -> None:
    # Lowest load each time (ties by worker id): w3 0/4, then w2 and w3 at 1/4, then w3 at 1/4.
    assert _place("least_loaded") == [("new0", "w3"), ("new1", "w2"), ("new2", "w3")]


def test_strategy_packed_fills_one_worker_first() -> None:
    assert _place("packed") == [("new0", "w1"), ("new1", "w1"), ("new2", "w2")]


def test_strategy_fair_share_spreads_a_submitters_tasks() -> None:
    # Bob already holds a task on w2: after w3 his next goes to w1, where he holds none (least_loaded
    # would stack it on w2 with his other one); then one each everywhere, the least loaded first.
    assert _place("fair_share") == [("new0", "w3"), ("new1", "w1"), ("new2", "w2")]


def test_strategy_performance_aware_uses_history() -> None:
    history = balancer.PerfHistory()
    kind = balancer.perf_kind(_task("x"))
    history.record("w2", "cpu", kind, 0.5)
    history.record("w3", "slow-box", kind, 9.0)
    # w2 is fastest for this kind (w1, unknown, counts as the mean): all to w2 while it has free slots.
    assert _place("performance_aware", history) == [("new0", "w2"), ("new1", "w2"), ("new2", "w2")]
    # Without any history it is least_loaded's choice.
    assert _place("performance_aware", balancer.PerfHistory()) == _place("least_loaded")


def test_history_by_hardware_class_covers_a_new_worker() -> None:
    history = balancer.PerfHistory()
    history.record("old-box", "cuda/A100", "custom:x", 2.0)
    assert history.expected("new-box", "cuda/A100", "custom:x") == 2.0
    assert history.expected("new-box", "cpu", "custom:x") is None


def test_worker_cap_bounds_the_comparison() -> None:
    # With a window of one worker, each choice looks at the next worker in turn (rotating), not the best.
    assert len(_place("least_loaded", worker_cap=1)) == 3
    with pytest.raises(ValueError, match="strategy must be one of"):
        _place("random")


def test_usage_counts_held_tasks() -> None:
    workers, tasks = _scenario()
    usage = Usage.of(tasks, workers)
    assert usage.submitters == {"alice": 2, "bob": 1}


def test_submitter_and_group_are_validated_in_one_place() -> None:
    doc = scheduler.validate_task({"type": "custom", "config": {"command": ["x"]}, "submitter": "ci@team",
                                   "group": "nightly-1"})
    assert (doc["submitter"], doc["group"]) == ("ci@team", "nightly-1")
    assert scheduler.validate_task({"type": "custom", "config": {"command": ["x"]}})["submitter"] is None
    with pytest.raises(scheduler.TaskValidationError, match="task.submitter must be 1-128 characters"):
        scheduler.validate_task({"type": "custom", "config": {"command": ["x"]}, "submitter": "two words"})


# ------------------------------------------------------------------- reservations inside the balancer
def _gpu_box(worker_id: str, devices: int, memory_gb: float = 64) -> dict[str, Any]:
    return _worker(worker_id, slots=8, hardware=("cpu", "cuda"), reserved={}, capabilities={
        "cpu": {"cores": 8}, "memory": {"total_gb": memory_gb},
        "gpu": {"devices": [{"index": i, "type": "cuda", "memory_gb": 16} for i in range(devices)]}})


@pytest.mark.parametrize("strategy", balancer.STRATEGIES)
def test_every_strategy_chooses_only_among_workers_whose_capacity_fits(strategy: str) -> None:
    # Slots alone would put everything on g1 (packed) or spread 2/2 (the others); its 2 devices and
    # the memory left after a planned reservation decide instead, in the same pass.
    workers = {"g1": _gpu_box("g1", 2), "g2": _gpu_box("g2", 4)}
    tasks = {f"gpu{i}": _task(f"gpu{i}", seq=i, req={"hardware": ["cuda"]}, resources={"gpus": 1})
             for i in range(5)}
    tasks["big"] = _task("big", seq=9, resources={"memory_gb": 60})
    tasks["big2"] = _task("big2", seq=10, resources={"memory_gb": 60})
    queue = ReadyQueue()
    for task in tasks.values():
        queue.push(task)
    plan = plan_assignments(queue, tasks, workers, {"g1": 8, "g2": 8}, now=0.0, policy=QueuePolicy(),
                            strategy=strategy, worker_cap=10)
    placed = dict(plan)
    gpus_on = {w: sum(1 for t, wid in plan if wid == w and t.startswith("gpu")) for w in workers}
    assert gpus_on["g1"] <= 2 and gpus_on["g2"] <= 4 and sum(gpus_on.values()) == 5
    # One 60 GB task per 64 GB box: never both on one.
    assert {placed["big"], placed["big2"]} == {"g1", "g2"}
    # What the planner chose is what apply accepts: the state machine reserves every one of them.
    state = State()
    for worker in workers.values():
        state.workers[worker["worker_id"]] = worker
    for task in tasks.values():
        state.tasks[task["task_id"]] = task
    accepted, _ = state.apply({"op": "AssignTasks", "time": 1.0, "assignments": [
        {"task_id": t, "worker_id": w, "attempt": 1} for t, w in plan]})
    assert len(accepted) == len(plan) == 7


def test_one_error_vocabulary_for_retries_and_quarantine() -> None:
    from dtf_app import protocol
    from dtf_app.coordinator import quarantine

    assert protocol.NON_RETRYABLE_ERRORS <= set(protocol.ERROR_CLASSES)
    assert protocol.INFRASTRUCTURE_ERRORS <= set(protocol.ERROR_CLASSES)
    assert not protocol.NON_RETRYABLE_ERRORS & protocol.INFRASTRUCTURE_ERRORS  # the worker's fault: retried
    assert not hasattr(quarantine, "is_infrastructure_error")  # defined once, in protocol.py
    assert [c for c in protocol.ERROR_CLASSES if protocol.is_infrastructure_error(c)] == ["worker_error",
                                                                                          "worker_lost"]
    assert protocol.is_retryable(None) and not protocol.is_infrastructure_error(None)


def test_wait_reason_names_reserved_resources() -> None:
    box = _gpu_box("g1", 1)
    box["reserved"] = {"other": {"gpus": [0], "gpu_type": "cuda", "exclusive": True, "gpu_memory_gb": 16.0}}
    task = _task("t", req={"hardware": ["cuda"]}, resources={"gpus": 1})
    queue = ReadyQueue()
    queue.push(task)
    reason = scheduler.wait_reason(task, {"t": task}, {"g1": box}, queue, now=0.0, policy=QueuePolicy())
    assert reason is not None and reason["code"] == "resources_reserved" and "gpus 1" in reason["message"]
    box["reserved"] = {}
    assert scheduler.wait_reason(task, {"t": task}, {"g1": box}, queue, now=0.0, policy=QueuePolicy())["code"] == "next"


def test_preemption_only_where_the_victims_release_makes_the_reservation_fit() -> None:
    # g1's one device is held by a high-priority task; its low-priority task holds only a slot. g2's
    # low-priority task holds g2's device. A GPU job preempts the one whose release frees a device.
    workers = {"g1": _gpu_box("g1", 1), "g2": _gpu_box("g2", 1)}
    for worker in workers.values():
        worker["max_concurrent_tasks"] = 2
    device = {"gpus": [0], "gpu_type": "cuda", "exclusive": True, "gpu_memory_gb": 16.0}
    tasks = {"keep": _task("keep", priority=100, status="running", attempts=1, start_time=1.0),
             "slot-only": _task("slot-only", priority=0, status="running", attempts=1, start_time=2.0),
             "holder": _task("holder", priority=5, status="running", attempts=1, start_time=1.0),
             "other": _task("other", priority=100, status="running", attempts=1, start_time=1.0),
             "job": _task("job", priority=100, req={"hardware": ["cuda"]}, resources={"gpus": 1})}
    workers["g1"]["assigned"] = {"keep": 1, "slot-only": 1}
    workers["g1"]["reserved"] = {"keep": device}
    workers["g2"]["assigned"] = {"holder": 1, "other": 1}
    workers["g2"]["reserved"] = {"holder": device}
    queue = ReadyQueue()
    queue.push(tasks["job"])
    out = scheduler.plan_preemptions(queue, tasks, workers, workers, now=10.0,
                                     policy=QueuePolicy(preemption_threshold=50))
    assert [(o["task_id"], o["worker_id"]) for o in out] == [("holder", "g2")]


def test_performance_history_is_seeded_from_the_duckdb_execution_history() -> None:
    # What a new leader reads (balancer.HISTORY_SEED_SQL on the real schema), replayed oldest first.
    import json

    import duckdb

    from dtf_app.store import schema

    con = duckdb.connect(":memory:")
    schema.ensure_schema(con)
    con.execute("INSERT INTO distributed_tasks (task_id, type, config) VALUES "
                "('t1', 'custom', '{\"command\": [\"train\"]}'), ('t2', 'custom', '{\"command\": [\"train\"]}'), "
                "('t3', 'custom', '{\"command\": [\"train\"]}')")
    con.execute("INSERT INTO task_execution_history (id, task_id, worker_id, attempt, status, "
                "execution_time_seconds) VALUES (1, 't1', 'slow', 1, 'completed', 9.0), "
                "(2, 't2', 'fast', 1, 'completed', 1.0), (3, 't3', 'fast', 1, 'failed', 50.0), "
                "(4, 't3', 'gone', 2, 'completed', 0.1)")
    cursor = con.execute(balancer.HISTORY_SEED_SQL, [balancer.HISTORY_SEED_ROWS])
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row["config"] = json.loads(row["config"])
    history = balancer.PerfHistory()
    workers = {"slow": _worker("slow"), "fast": _worker("fast")}
    assert history.seed(rows, workers) == 2  # the failed run and the unknown worker are left out
    kind = balancer.perf_kind(_task("t", config={"command": ["train"]}))
    assert history.expected("fast", balancer.hardware_class(workers["fast"]), kind) == 1.0
    assert history.expected("slow", balancer.hardware_class(workers["slow"]), kind) == 9.0


@pytest.mark.parametrize("strategy", balancer.STRATEGIES)
def test_a_task_that_fits_only_outside_the_compared_window_still_finds_its_worker(strategy: str) -> None:
    # worker_cap 1 compares one worker; that one (g1, first in id order) has too little memory left, so
    # the choice falls back to the other capable workers that fit.
    workers = {"g1": _gpu_box("g1", 0, memory_gb=8), "g2": _gpu_box("g2", 0, memory_gb=64)}
    tasks = {"big": _task("big", resources={"memory_gb": 32})}
    queue = ReadyQueue()
    queue.push(tasks["big"])
    plan = plan_assignments(queue, tasks, workers, {"g1": 8, "g2": 8}, now=0.0, policy=QueuePolicy(),
                            strategy=strategy, worker_cap=1)
    assert plan == [("big", "g2")]
