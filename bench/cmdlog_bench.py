"""Command log open (scan + checksum + parse) and replay time, by record count (measure, never assert).

    PYTHONPATH=. .venv/bin/python bench/cmdlog_bench.py [--records 200000]

Writes a format-2 ``commands.log`` of one-task ``SubmitTasks`` records (the common shape) in a temp dir,
then times ``CommandLog.open`` (reads, verifies header and payload checksums, index order) and applying
the records to a fresh ``State`` -- what a coordinator does before ``/status`` says ready. Snapshots
(every 20,000 entries by default) bound the records a real start replays.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dtf_app.coordinator.cmdlog import CommandLog
from dtf_app.coordinator.state import State


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "log"
        log = CommandLog(directory)
        log.open()
        for start in range(0, args.records, 10_000):
            log.append([{"op": "SubmitTasks", "time": 1.0, "tasks": [{
                "task_id": f"t{start + i}", "type": "custom", "config": {"command": ["true"]}, "priority": 3,
                "dependencies": [], "requirements": {}, "timeout_seconds": 60, "max_retries": 1}]}
                for i in range(min(10_000, args.records - start))])
        log.sync()
        log.close()
        size = (directory / "commands.log").stat().st_size
        started = time.perf_counter()
        log = CommandLog(directory)
        _, records = log.open()
        opened = time.perf_counter() - started
        log.close()
        state = State()
        started = time.perf_counter()
        for index, command in records:
            state.apply(command, index)
        applied = time.perf_counter() - started
    print(f"{len(records)} records, {size / 1e6:.1f} MB: open {opened:.2f} s "
          f"({len(records) / opened:,.0f} records/s), apply {applied:.2f} s; {len(state.tasks)} tasks")


if __name__ == "__main__":
    main()
