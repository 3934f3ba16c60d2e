"""Sinks that keep what reporters write, for unit tests."""

from __future__ import annotations


class ListSink:
    """A RotatingSink that keeps each file's bytes in a list, and what it was asked."""

    def __init__(self) -> None:
        self.files: list[bytearray] = [bytearray()]
        self.calls: list[str] = []

    def write(self, data: bytes, /) -> int:
        self.files[-1] += data
        return len(data)

    def flush(self) -> None:
        self.calls.append("flush")

    def sync(self) -> None:
        self.calls.append("sync")

    def rotate(self) -> None:
        self.calls.append("rotate")
        self.files.append(bytearray())

    def close(self) -> None:
        self.calls.append("close")
