"""Dashboard test fixtures: a fixed clock and time zone (deterministic renders), and the real cluster."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtf_app.tui import format as fmt
from tests.integration.conftest import cluster, pytest_runtest_makereport  # noqa: F401 - shared fixtures

FIXED_NOW = 1767225600.0 + 60  # one minute after the sample data's epoch


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(fmt, "NOW", lambda: FIXED_NOW)
    yield
    os.environ.pop("TZ", None)
    time.tzset()


@pytest.fixture
def repo() -> Path:
    return Path(__file__).resolve().parents[2]
