"""One full scheduling pass: every worker with free slots offered work, as the leader's dispatch round does.

    python bench/scheduler_bench.py                       # 10,000 pending / 100 workers, 100,000 / 1,000
    python bench/scheduler_bench.py --strategy packed --repeat 5

Pending tasks have mixed priorities (0-100), 4 submitters with 20 task groups each, varied ages (aging
applies), and 10 % need CUDA, which one worker in ten has (4 devices of 80 GB). Reservations are active
(resources.py): a quarter of the CPU tasks reserve cores and memory, and every CUDA task reserves one
whole GPU. Every worker has 4 free slots and already holds nothing. The pass is :func:`dtf_app.coordinator.scheduler.plan_assignments` with the leader's inputs
(the queue policy at the default aging rate, fair-share usage from the state, the balancer strategy with
``worker_cap`` 10). Each repeat starts from a fresh copy of the free slots and the same queue (a pass
does not change the queue; the leader discards placed tasks when AssignTasks applies).

Printed per size: the pass's time (median and best of the repeats, and the median CPU time of the
thread, which a machine loaded by other processes inflates less), the tasks it placed, the cost per
placed task, and how the pass time grows from the first size to the next.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtf_app.coordinator import scheduler  # noqa: E402
from dtf_app.coordinator.balancer import STRATEGIES  # noqa: E402


def build(pending: int, workers: int, seed: int = 1) -> tuple[dict, dict, scheduler.ReadyQueue]:
    rng = random.Random(seed)
    now = 10_000.0
    tasks: dict[str, dict] = {}
    for i in range(pending):
        cuda = i % 10 == 0
        tasks[f"t{i}"] = {
            "task_id": f"t{i}", "type": "custom", "config": {"command": ["true"]}, "status": "pending",
            "priority": rng.choice((0, 1, 1, 1, 5, 10, 50, 100)), "seq": i,
            "create_time": now - rng.uniform(0, 900), "ready_since": now - rng.uniform(0, 900),
            "requirements": {"hardware": ["cuda"]} if cuda else {},
            "submitter": f"user{i % 4}", "group": f"g{i % 80}", "attempts": 0,
        }
        if cuda:
            tasks[f"t{i}"]["resources"] = {"gpus": 1}
        elif i % 4 == 1:
            tasks[f"t{i}"]["resources"] = {"cpu_cores": 2.0, "memory_gb": 8.0}
    fleet: dict[str, dict] = {}
    for w in range(workers):
        gpu = w % 10 == 0
        fleet[f"w{w:04d}"] = {
            "worker_id": f"w{w:04d}", "hardware": ["cpu", "cuda"] if gpu else ["cpu"], "max_concurrent_tasks": 4,
            "assigned": {}, "reserved": {}, "status": "online",
            "capabilities": {"memory": {"total_gb": 64}, "cpu": {"cores": 16},
                             "gpu": {"devices": [{"index": d, "type": "cuda", "memory_gb": 80} for d in range(4)]}
                             if gpu else {}},
        }
    queue = scheduler.ReadyQueue()
    for task in tasks.values():
        queue.push(task)
    return tasks, fleet, queue


def one_pass(tasks: dict, fleet: dict, queue: scheduler.ReadyQueue, strategy: str,
             policy: scheduler.QueuePolicy, now: float) -> tuple[float, float, int]:
    free = {w: 4 for w in fleet}
    cpu_started = time.thread_time()
    started = time.perf_counter()
    usage = scheduler.Usage.of(tasks, fleet)
    plan = scheduler.plan_assignments(queue, tasks, fleet, free, now=now, policy=policy, usage=usage,
                                      strategy=strategy, worker_cap=10)
    elapsed = time.perf_counter() - started
    cpu = time.thread_time() - cpu_started
    queue.last_served.clear()  # the next repeat starts from the same leader memory
    return elapsed, cpu, len(plan)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", choices=STRATEGIES, default="fair_share")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", default="10000:100,100000:1000",
                        help="pending:workers pairs, comma separated (default %(default)s)")
    args = parser.parse_args()
    policy = scheduler.QueuePolicy()
    previous: tuple[int, float] | None = None
    print(f"strategy {args.strategy}, aging rate {policy.aging_rate:.3f}/s, worker_cap 10, 4 free slots per worker")
    for pair in args.sizes.split(","):
        pending, workers = (int(x) for x in pair.split(":"))
        tasks, fleet, queue = build(pending, workers)
        times, cpu_times, placed = [], [], 0
        for _ in range(args.repeat):
            elapsed, cpu, placed = one_pass(tasks, fleet, queue, args.strategy, policy, now=10_000.0)
            times.append(elapsed)
            cpu_times.append(cpu)
        median, best, cpu_median = statistics.median(times), min(times), statistics.median(cpu_times)
        line = (f"{pending:>7} pending / {workers:>5} workers: pass {median * 1000:7.1f} ms median "
                f"({best * 1000:.1f} best, {cpu_median * 1000:.1f} ms CPU), {placed} placed, "
                f"{median / max(1, placed) * 1e6:6.1f} us per placed task")
        if previous is not None:
            ratio = median / previous[1]
            line += f"; x{ratio:.1f} the time for x{pending / previous[0]:.0f} the pending tasks"
        print(line)
        previous = (pending, median)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
