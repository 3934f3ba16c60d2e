"""The JSON-lines file sink: permissions, appending, rotation by rename."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from otus_ebpf.outputs.sinks import OUT_FILE_MODE, RotatingFile


def test_file_is_0640_whatever_the_umask_and_appends_across_opens(tmp_path: Path) -> None:
    path = tmp_path / "out" / "sip.jsonl"
    old_umask = os.umask(0)
    try:
        first = RotatingFile(path)
        first.write(b"one\n")
        first.close()
    finally:
        os.umask(old_umask)
    second = RotatingFile(path)
    second.write(b"two\n")
    second.close()
    assert stat.S_IMODE(path.stat().st_mode) == OUT_FILE_MODE
    assert path.read_bytes() == b"one\ntwo\n"


def test_rotation_renames_the_full_file_and_starts_a_fresh_one(tmp_path: Path) -> None:
    path = tmp_path / "sip.jsonl"
    sink = RotatingFile(path)
    for n in range(3):
        sink.write(f"line {n}\n".encode())
        sink.sync()
        sink.rotate()
    sink.write(b"current\n")
    sink.close()
    rotated = sorted(p for p in tmp_path.iterdir() if p != path)
    assert len(rotated) == 3, "three rotations within a second get distinct names"
    assert all(p.name.startswith("sip-") and p.suffix == ".jsonl" for p in rotated)
    assert sorted(p.read_bytes() for p in rotated) == [b"line 0\n", b"line 1\n", b"line 2\n"]
    assert path.read_bytes() == b"current\n"
    assert all(stat.S_IMODE(p.stat().st_mode) == OUT_FILE_MODE for p in [path, *rotated])
