"""Exact sums of floats, so that a mean or a variance kept up to date one value at a time (added or taken away)
equals the one computed again over every value, to the last bit.

A float is a whole multiple of 2**-1074, so ``scaled`` (the value as that multiple, a Python int) adds and subtracts
exactly, in any order; its square is a whole multiple of 2**-2148 (``scaled_square``). ``mean`` and ``variance``
divide those ints, and ``int / int`` is correctly rounded: the float nearest the exact figure, which no float sum
(``math.fsum`` then a division rounds twice; numpy's pairwise sum more) gives for every input.
``Moments`` are a sample's count, sum and sum of squares; ``quantile`` is numpy's default (linear) quantile of a
sorted list, so that a list kept sorted (``bisect``) reads its quantiles without a sort.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

_SHIFT = 1074  # the exponent of the smallest float (a subnormal): every finite float is a whole multiple of it


def scaled(x: float) -> int:
    """``x`` (finite) as a whole multiple of 2**-1074."""
    num, den = x.as_integer_ratio()  # den a power of 2, at most 2**1074
    return num << (_SHIFT + 1 - den.bit_length())


def scaled_square(x: float) -> int:
    """``x * x`` exactly, as a whole multiple of 2**-2148."""
    num, den = x.as_integer_ratio()
    return (num * num) << (2 * (_SHIFT + 1 - den.bit_length()))


def mean(total: int, n: int) -> float:
    """The float nearest ``total`` (a sum of ``scaled`` values) / ``n`` (>= 1)."""
    return total / (n << _SHIFT)


class Moments(NamedTuple):
    """A sample's size, ``scaled`` sum and ``scaled_square`` sum (each value finite)."""

    n: int
    total: int
    squares: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Moments:
        n = total = squares = 0
        for value in values:
            x = float(value)
            n, total, squares = n + 1, total + scaled(x), squares + scaled_square(x)
        return cls(n, total, squares)

    @property
    def mean(self) -> float:
        return mean(self.total, self.n)

    @property
    def constant(self) -> bool:
        """Whether every value is the same (n * sum of squares = sum squared only then)."""
        return self.n * self.squares == self.total * self.total

    @property
    def variance(self) -> float:
        """The sample variance (``n - 1`` in the denominator; ``n`` >= 2), the float nearest the exact figure."""
        return (self.n * self.squares - self.total * self.total) / ((self.n * (self.n - 1)) << (2 * _SHIFT))


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``ordered`` (sorted, not empty) by linear interpolation, as ``numpy.quantile`` computes
    it (virtual index ``(n - 1) * q``, and its ``_lerp``, which interpolates from the nearer end)."""
    last = len(ordered) - 1
    index = last * q
    below = math.floor(index)
    if below >= last:
        return float(ordered[last])
    a, b = float(ordered[below]), float(ordered[below + 1])
    gamma = index - below
    return b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma
