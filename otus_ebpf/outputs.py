"""Sinks for the JSON-lines reporter: a rotating file, or a stream (stdout)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

from otus_ebpf.errors import SetupError

OUT_FILE_MODE = 0o640


class RotatingFile:
    """Appends to ``path``; ``rotate`` renames it to ``<stem>-<UTC time><suffix>``
    and starts a fresh ``path``, so the current file always has the same name."""

    def __init__(self, path: Path, mode: int = OUT_FILE_MODE) -> None:
        self.path = path
        self._mode = mode
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"cannot create {path.parent}: {exc.strerror}") from None
        self._file = self._open()

    def _open(self) -> BinaryIO:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, self._mode)
            os.fchmod(fd, self._mode)  # whatever the umask or an older file said
        except OSError as exc:
            raise SetupError(f"cannot open output {self.path}: {exc.strerror}") from None
        return os.fdopen(fd, "ab")

    def write(self, data: bytes, /) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def rotate(self) -> None:
        self._file.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
        serial = 1
        while target.exists():  # several rotations within one second
            target = self.path.with_name(f"{self.path.stem}-{stamp}.{serial}{self.path.suffix}")
            serial += 1
        os.rename(self.path, target)
        self._file = self._open()

    def close(self) -> None:
        self._file.close()


class StreamSink:
    """stdout and the like: nothing to rotate or sync beyond a flush."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, data: bytes, /) -> int:
        return self._stream.write(data)

    def flush(self) -> None:
        self._stream.flush()

    def sync(self) -> None:
        self._stream.flush()

    def rotate(self) -> None:
        return None

    def close(self) -> None:
        self._stream.flush()
