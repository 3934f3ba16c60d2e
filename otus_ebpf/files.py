"""Reading a file an operator names (a config, a secret): a regular file of
bounded size, so that a FIFO, /dev/zero or a multi-gigabyte file gives a
one-line error instead of a reader that blocks or reads for ever."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotRegularFile(OSError):
    pass


def read_bounded(path: str | Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a regular file: more than ``limit`` back means
    too large, which the caller says in its own words. Raises NotRegularFile, or
    OSError when it cannot be opened or read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the reader
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as file:
            return file.read(limit + 1)
    finally:
        os.close(fd)
