"""What strict JSON costs at the edge: jsonsafe.loads/dumps against plain json on a big submit body.

    PYTHONPATH=. .venv/bin/python bench/jsonsafe_bench.py [--tasks 100000] [--repeat 3]

The body is ``--tasks`` custom task documents (the shape ``dtf submit`` sends, ~170 bytes each). The
figures are best-of-``--repeat`` wall times; measure, never assert (DESIGN.md §11).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from dtf_app import jsonsafe


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tasks = [{"type": "custom", "name": f"t{i}[param]", "priority": 1, "config": {"command": ["python", "-c", "1"]},
              "requirements": {"hardware": ["cpu"], "min_memory_gb": 0.5}, "metadata": {"suite": "x", "i": i}}
             for i in range(args.tasks)]
    body = json.dumps(tasks).encode()
    print(f"body: {args.tasks} tasks, {len(body) / 1e6:.1f} MB")
    rows = [
        ("json.loads(body)", lambda: json.loads(body)),
        ("jsonsafe.nesting_depth(body)", lambda: jsonsafe.nesting_depth(body)),
        ("jsonsafe.loads(body)", lambda: jsonsafe.loads(body)),
        ("json.dumps(tasks)", lambda: json.dumps(tasks, separators=(",", ":"), default=str)),
        ("jsonsafe.dumps(tasks)", lambda: jsonsafe.dumps(tasks)),
    ]
    for name, fn in rows:
        print(f"{name:<30} {_best(fn, args.repeat):.3f} s")


if __name__ == "__main__":
    main()
