"""The one error family for bad input.

The capture loop catches ``DecodeError`` only, counts it and carries on;
any other exception out of a parser is a bug.
"""

from __future__ import annotations


class DecodeError(ValueError):
    """Input that cannot be decoded; says which layer and where."""

    def __init__(self, layer: str, offset: int, reason: str) -> None:
        super().__init__(f"{layer} at offset {offset}: {reason}")
        self.layer = layer
        self.offset = offset
        self.reason = reason


class Truncated(DecodeError):
    """The input ends before the structure it announces."""


class Malformed(DecodeError):
    """The input is long enough but breaks the protocol's rules."""


class LimitExceeded(DecodeError):
    """The input is valid but exceeds a configured bound."""
