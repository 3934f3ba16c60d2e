"""The program's log lines: at the default level the text operators and the
integration tests grep is what it always was; --log-level warning keeps only
problems; a worker's lines carry its [wN]; and a program that never
configures logging still says what it does."""

from __future__ import annotations

import errno
import io
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from otus_ebpf import logs
from otus_ebpf.capture.replay import run_replay
from otus_ebpf.options import AttachOptions
from tests.support.paths import REPO
from tests.unit.test_replay import written
from userspace.records import Record
from userspace.reporters.jsonl import JsonLinesReporter
from userspace.reporters.pcap import PcapFormat


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where the program's lines go during a test; the default handler comes back after."""
    text = io.StringIO()
    yield text
    logs.configure()


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "c.pcapng"
    path.write_bytes(written(PcapFormat.PCAPNG))
    return path


def replay_lines(capture: Path, out: Path) -> list[str]:
    """What `otus-ebpf replay` has always said of the capture in test_replay."""
    return [f"writing records to {out}",
            f"replayed {capture}: 2 frames, 2 captured, 3 records, errors=0, internal_errors=0",
            "records: 3 produced; jsonl written=3 to_fallback=0 lost=0"]


def test_the_default_level_says_what_it_always_said(stream: io.StringIO, capture: Path,
                                                    tmp_path: Path) -> None:
    logs.configure(stream=stream)
    out = tmp_path / "out.jsonl"
    assert run_replay(capture, AttachOptions(("c",), out=str(out)), None) == 0
    assert stream.getvalue() == "".join(f"{line}\n" for line in replay_lines(capture, out))


def test_warning_hides_what_the_program_did_and_keeps_what_went_wrong(
        stream: io.StringIO, capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs.configure("warning", stream)
    assert run_replay(capture, AttachOptions(("c",), out=str(tmp_path / "quiet.jsonl")), None) == 0
    assert stream.getvalue() == ""

    def no_space(self: JsonLinesReporter, records: Sequence[Record]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JsonLinesReporter, "write", no_space)
    run_replay(capture, AttachOptions(("c",), out=str(tmp_path / "full.jsonl")), None)
    assert stream.getvalue().splitlines() == [
        "jsonl: OSError: [Errno 28] No space left on device",
        "records: 3 produced; jsonl written=0 to_fallback=0 lost=3",
    ]


def test_debug_shows_more_than_info(stream: io.StringIO) -> None:
    logs.configure("debug", stream)
    logs.get("otus_ebpf.control.server").debug("control: 'list'")
    assert logs.level() == "debug"
    assert stream.getvalue() == "control: 'list'\n"


def test_a_workers_lines_carry_its_index_whichever_module_says_them(stream: io.StringIO) -> None:
    logs.configure("info", stream, prefix="[w3] ")
    logs.get("otus_ebpf.capture.worker").info("reading: shard 3")
    logs.get("otus_ebpf.capture.runner").error("task t/w3: internal error\nTraceback ...")
    logs.get("otus_ebpf.capture.runner").debug("not at info")
    assert stream.getvalue() == "[w3] reading: shard 3\n[w3] task t/w3: internal error\nTraceback ...\n"


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level must be one of debug, info, warning, error"):
        logs.configure("verbose")


def test_without_configure_the_info_lines_still_reach_stderr(tmp_path: Path) -> None:
    """An entry that is not the command line (a bench, a script) calls no configure."""
    out = tmp_path / "r.jsonl"
    code = f"from otus_ebpf.outputs.wiring import open_output; open_output({str(out)!r}, 'x').close()"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=True)
    assert result.stderr == f"writing records to {out}\n"
