"""Fixtures for integration tests: a real cluster per test, logs printed when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, HACluster, print_logs_if_failed


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One coordinator (started by the test) and the workers it starts."""
    c = Cluster(tmp_path)
    yield c
    c.stop()
    print_logs_if_failed(request, tmp_path)


@pytest.fixture
def ha(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HACluster]:
    """Three coordinators that share a cluster secret (each started by the test) and their workers."""
    c = HACluster(tmp_path)
    yield c
    c.stop()
    print_logs_if_failed(request, tmp_path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
