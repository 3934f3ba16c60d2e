"""Secrets (SASL and key passwords, the HEP key) read from files, so they are
never in argv. A secret file is a regular file of at most MAX_SECRET_BYTES
of UTF-8: pointing one at /dev/zero or a multi-gigabyte file gives a
one-line error, not a process reading for ever."""

from __future__ import annotations

import os
import stat

MAX_SECRET_BYTES = 64 << 10


def read_secret(path: str) -> str:
    """The file's text, stripped; ValueError with the reason otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"{path} is larger than {MAX_SECRET_BYTES} bytes: not a secret")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret
