"""Errors an operator can act on: printed as one line, exit status 1."""

from __future__ import annotations


class SetupError(RuntimeError):
    """Something outside the program is not as needed (permissions, interface,
    broker, kernel support). The message is the whole explanation."""
