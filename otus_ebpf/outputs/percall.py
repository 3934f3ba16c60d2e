"""One capture file per call: its SIP messages and the media of its learned
flows, in a directory, for handing a single call to someone with Wireshark.

Files are named after the Call-ID (made safe for a file name, with a short
hash so two Call-IDs never share a file). At most ``max_open`` files are
open at once; the least recently written is closed and reopened in append
mode when its call sends again (a pcapng file then gets a new section, which
Wireshark reads as one capture). A call's file is closed when the call ends.
Frames not tied to a call (yet) stay in the main pcap only, counted.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from otus_ebpf.errors import SetupError
from otus_ebpf.outputs.sinks import AppendFile
from userspace.records import Frame
from userspace.reporters.pcap import FrameEncoder, PcapFormat

DEFAULT_MAX_OPEN = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")


@dataclass(slots=True)
class PerCallStats:
    frames: int = 0
    without_call: int = 0
    files: int = 0
    write_errors: int = 0
    unwritable: int = 0  # stamped where the format has no room (pcap: after 2106)


def file_name(call_id: str, file_format: PcapFormat) -> str:
    digest = hashlib.sha1(call_id.encode(), usedforsecurity=False).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', call_id)[:80]}-{digest}.{file_format.value}"


class _CallFile:
    def __init__(self, path: Path, file_format: PcapFormat) -> None:
        self.file = AppendFile(path)  # all-or-nothing writes: a full disk cuts no frame in half
        self.encoder = FrameEncoder(file_format)
        header = self.encoder.file_header()
        if self.file.size == 0 or file_format is PcapFormat.PCAPNG:  # pcapng: a new section per reopening
            try:
                self.file.write(header)
            except OSError:
                self.file.close()
                raise


class PerCallPcap:
    def __init__(self, directory: Path, file_format: PcapFormat = PcapFormat.PCAPNG,
                 max_open: int = DEFAULT_MAX_OPEN) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"cannot create {directory}: {exc.strerror}") from None
        self._directory = directory
        self._format = file_format
        self._max_open = max_open
        self._open: OrderedDict[str, _CallFile] = OrderedDict()
        self.stats = PerCallStats()

    def write_frames(self, frames: Sequence[Frame]) -> None:
        by_call: dict[str, list[Frame]] = {}
        for frame in frames:
            if frame.call_id is None:
                self.stats.without_call += 1
            else:
                by_call.setdefault(frame.call_id, []).append(frame)
        for call_id, call_frames in by_call.items():
            try:
                call_file = self._file(call_id)
                call_file.file.write(call_file.encoder.frames(call_frames))
            except (OSError, SetupError):
                self.stats.write_errors += len(call_frames)
                self._close(call_id)
            else:
                unwritable = call_file.encoder.unwritable(call_frames)
                self.stats.unwritable += unwritable
                self.stats.frames += len(call_frames) - unwritable

    def calls_ended(self, call_ids: Iterable[str]) -> None:
        for call_id in call_ids:
            self._close(call_id)

    def _file(self, call_id: str) -> _CallFile:
        call_file = self._open.get(call_id)
        if call_file is not None:
            self._open.move_to_end(call_id)
            return call_file
        while len(self._open) >= self._max_open:
            self._close(next(iter(self._open)))
        path = self._directory / file_name(call_id, self._format)
        if not path.exists():
            self.stats.files += 1
        call_file = self._open[call_id] = _CallFile(path, self._format)
        return call_file

    def _close(self, call_id: str) -> None:
        call_file = self._open.pop(call_id, None)
        if call_file is not None:
            call_file.file.close()

    def close(self) -> None:
        for call_id in list(self._open):
            self._close(call_id)
