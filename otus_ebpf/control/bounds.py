"""Whole and real numbers within a range, one parser for the config checker
and the command line: a value outside its range, not finite, or written with
other than ASCII digits is refused with a one-line error before anything
starts, so that whatever validates can also be loaded and reloaded. Each
setting's range is declared with it (otus_ebpf.control.settings)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from userspace.numbers import is_ascii_digits


@dataclass(frozen=True, slots=True)
class Bound:
    low: float
    high: float

    def describe(self) -> str:
        return f"between {shown(self.low)} and {shown(self.high)}"


def shown(value: float) -> str:
    """A number as an operator writes it: 2048, 0.1, 1e+06 for the huge."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


REPLAY_SPEED = Bound(0.001, 1_000_000)


MAX_DIGITS = 20  # more than any bound has (2**64 has 20)


def parse_int(text: str, bound: Bound) -> int:
    """A whole number in ``bound``; ValueError with the reason otherwise."""
    value = text.strip().removeprefix("-")
    if not is_ascii_digits(value):
        raise ValueError(f"must be a whole number, not {text!r}")
    significant = value.lstrip("0") or "0"
    if len(significant) > MAX_DIGITS:  # past any bound; and int() refuses 4,300 digits in words of its own
        raise ValueError(f"must be {bound.describe()}, not a {len(significant)}-digit number")
    number = -int(significant) if text.strip().startswith("-") else int(significant)
    if not bound.low <= number <= bound.high:
        raise ValueError(f"must be {bound.describe()}, not {number}")
    return number


def parse_float(text: str, bound: Bound) -> float:
    """A finite number in ``bound``; ValueError with the reason otherwise."""
    try:
        number = float(text) if text.isascii() else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"must be a number, not {text!r}")
    if not bound.low <= number <= bound.high:
        raise ValueError(f"must be {bound.describe()}, not {text}")
    return number
