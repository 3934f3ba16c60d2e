"""Secrets (SASL and key passwords, the HEP key) read from files, so they are
never in argv. A secret file is a regular file of at most MAX_SECRET_BYTES
of UTF-8: pointing one at /dev/zero or a multi-gigabyte file gives a
one-line error, not a process reading for ever."""

from __future__ import annotations

from otus_ebpf.files import NotRegularFile, read_bounded

MAX_SECRET_BYTES = 64 << 10


def read_secret(path: str) -> str:
    """The file's text, stripped; ValueError with the reason otherwise."""
    try:
        data = read_bounded(path, MAX_SECRET_BYTES)
    except NotRegularFile:
        raise ValueError(f"{path} is not a regular file") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"{path} is larger than {MAX_SECRET_BYTES} bytes: not a secret")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret
