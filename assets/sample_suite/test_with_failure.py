"""Deliberately contains one failing test: used to check that failures are reported per test."""

import pytest


def test_passes():
    assert sum([1, 2, 3]) == 6


def test_deliberately_fails():
    assert 1 + 1 == 3, "this test fails on purpose"


@pytest.mark.skip(reason="shows how skipped tests are reported")
def test_skipped():
    raise AssertionError("never runs")
