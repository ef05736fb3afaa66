"""Arithmetic checks: a small, fast, always-passing sample."""

import math

import pytest


def test_addition():
    assert 2 + 2 == 4


def test_integer_division():
    assert divmod(17, 5) == (3, 2)


@pytest.mark.parametrize("n, expected", [(0, 1), (1, 1), (5, 120), (10, 3628800)])
def test_factorial(n, expected):
    assert math.factorial(n) == expected


def test_float_closeness():
    assert math.isclose(0.1 + 0.2, 0.3)


class TestPrimes:
    @staticmethod
    def is_prime(n):
        return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))

    def test_small_primes(self):
        assert [n for n in range(20) if self.is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19]

    def test_composite(self):
        assert not self.is_prime(91)
