"""``example.csv``: one CSV line per SIP record — time (UTC), Call-ID, method
or status, labels (``k=v;k=v``) — appended to a file.

    outputs:
      plugins:
        - name: example.csv
          options: {path: /var/log/otus/sip.csv}

The factory runs when the config is checked too, so it only judges the
options; the first write that has a SIP record opens the file for appending,
creating it (0640) with its header line if it is not there. With worker
processes each worker has a reporter of its own, all on the one file: the
file appears with its header already in it (made aside, then linked into
place, which only one of them can do), and each batch is one write of whole
lines with O_APPEND, so their lines interleave whole. otus-ebpf calls write
on this reporter's own thread, never two calls at once.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from userspace.records import Record, SipRecord
from userspace.reporters import Reporter

OTUS_API_VERSION = 1  # the plugin API this was written for (see otus_example_plugin.trunk)
HEADER = ("ts", "call_id", "method_or_status", "labels")
FILE_MODE = 0o640
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
OPTIONS = ("path",)


class CsvReporter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def write(self, records: Sequence[Record]) -> None:
        rows = [row(r) for r in records if isinstance(r, SipRecord)]
        if not rows:
            return  # otus-ebpf also calls write([]) when idle: nothing to do here
        if self._fd is None:
            self._fd = self._open()
        _write_all(self._fd, lines(rows))

    def _open(self) -> int:
        try:
            return os.open(self.path, _APPEND)
        except FileNotFoundError:
            pass
        fd, aside = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            _write_all(fd, lines([list(HEADER)]))
            os.fchmod(fd, FILE_MODE)
            os.link(aside, self.path)  # atomic, and refused if another process was first
        except FileExistsError:
            pass  # made by another reporter, header and all
        finally:
            os.close(fd)
            os.unlink(aside)
        return os.open(self.path, _APPEND)

    def flush(self, timeout: float) -> int:
        return 0  # each batch is in the file when write returns: nothing held here

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def row(record: SipRecord) -> list[str]:
    m = record.message
    seconds, ns = divmod(record.ts_ns, 1_000_000_000)
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"
    labels = ";".join(f"{key}={value}" for key, value in sorted((record.labels or {}).items()))
    return [ts, m.call_id, m.method or str(m.status), labels]


def lines(rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def csv_reporter(options: Mapping[str, Any]) -> Reporter:
    """The entry point: judges the options (ValueError says what is wrong), opens nothing."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {', '.join(unknown)} (expected: {', '.join(OPTIONS)})")
    path = options.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ValueError("path: the CSV file to append to")
    if not Path(path).parent.is_dir():
        raise ValueError(f"path: {Path(path).parent} is not a directory")
    return CsvReporter(Path(path))
