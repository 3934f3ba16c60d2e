"""Sinks for the file reporters: a rotating file, or a stream (stdout).

Every write to a file is all or nothing: a write the disk cannot take whole
(ENOSPC, EIO, a quota) is undone by truncating the file back to where it
was, and raised. So a batch of records is either in the file, whole, or
counted as failed (and handed to the fallback) — never both, never a line
cut in half, and nothing buffered that could reach the file later.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path
from typing import BinaryIO

from otus_ebpf.errors import SetupError

OUT_FILE_MODE = 0o640


class AppendFile:
    """An unbuffered file opened for appending whose writes are all or nothing."""

    def __init__(self, path: Path, mode: int = OUT_FILE_MODE) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise SetupError(f"cannot open output {path}: {exc.strerror}") from None
        try:
            os.fchmod(self._fd, mode)  # whatever the umask or an older file said
            self.size = os.fstat(self._fd).st_size
        except OSError as exc:
            os.close(self._fd)
            raise SetupError(f"cannot open output {path}: {exc.strerror}") from None

    def write(self, data: bytes, /) -> int:
        if self._fd < 0:
            raise OSError(errno.EBADF, f"{self.path} is closed")
        view, start = memoryview(data), self.size
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # undo the part that went in
            raise
        self.size += done
        return done

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        """Once: a closed descriptor's number is reused by the next open, and a
        second close (or a write) would hit someone else's file."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class RotatingFile:
    """Appends to ``path``; ``rotate`` renames it to ``<stem>-<UTC time><suffix>``
    and starts a fresh ``path``, so the current file always has the same name.
    ``fresh``: a file already at ``path`` is set aside the same way first — for
    formats whose file header may come only once (pcap), where appending to
    an earlier run's file would leave it unreadable."""

    def __init__(self, path: Path, mode: int = OUT_FILE_MODE, fresh: bool = False) -> None:
        self.path = path
        self._mode = mode
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if fresh and path.is_file() and path.stat().st_size:
                self._set_aside()
        except OSError as exc:
            raise SetupError(f"cannot set up {path}: {exc.strerror}") from None
        self._file: AppendFile | None = AppendFile(path, mode)

    def _current(self) -> AppendFile:
        """The open file; one that failed to reopen at a rotation is tried again."""
        if self._file is None:
            try:
                self._file = AppendFile(self.path, self._mode)
            except SetupError as exc:
                raise OSError(errno.EIO, str(exc)) from None
        return self._file

    def write(self, data: bytes, /) -> int:
        return self._current().write(data)

    def flush(self) -> None:
        return None  # nothing is buffered here

    def sync(self) -> None:
        self._current().sync()

    def rotate(self) -> None:
        """Keep the current file under a time-stamped name and start a fresh one.
        If the file is gone (deleted by hand), the fresh one simply starts; if it
        cannot be opened, the next write tries again and says why."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._set_aside()
        self._current()

    def _set_aside(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
        serial = 1
        while target.exists():  # several rotations within one second
            target = self.path.with_name(f"{self.path.stem}-{stamp}.{serial}{self.path.suffix}")
            serial += 1
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, target)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
