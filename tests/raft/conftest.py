"""Options for the Raft simulation tests: the randomized sweep's seed count and first seed."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("raft", "Raft simulation")
    group.addoption(
        "--raft-seeds",
        type=int,
        default=200,
        help="number of randomized fault schedules tests/raft/test_sweep.py runs (default 200)",
    )
    group.addoption(
        "--raft-seed-start",
        type=int,
        default=0,
        help="first seed of the sweep (replay a failure with --raft-seeds 1 --raft-seed-start SEED)",
    )
