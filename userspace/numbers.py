"""Numbers read from untrusted text: ASCII digits only.

``str.isdigit`` accepts superscripts ("²") that ``int`` refuses, and
``int`` accepts every Unicode decimal digit ("١٢" is 12): neither is what a
protocol (or a config file) means by a number, so every number read from
the wire or a file goes through here.
"""

from __future__ import annotations


def is_ascii_digits(text: str) -> bool:
    """One or more of 0-9 and nothing else."""
    return text.isascii() and text.isdigit()  # "".isdigit() is False


def ascii_int(text: str, max_digits: int = 10) -> int | None:
    """The value of ``text`` if it is 1..``max_digits`` ASCII digits, else None."""
    if len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None
