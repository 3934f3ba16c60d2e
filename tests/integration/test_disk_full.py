"""Issue 12: a full disk under the outputs and under the fallback. Capture goes
on, every record is in exactly one place (the output, the fallback, or
counted lost), no line or frame is left cut in half, and replay exits
non-zero because records were lost. The disks are small tmpfs mounts."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from otus_ebpf.errors import EXIT_RECORDS_LOST
from tests.support.agent import start_agent
from tests.support.frames import ethernet, ipv4, udp
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.send import send_udp
from tests.support.sinks import ListSink
from tests.support.sip_samples import sip_message
from userspace.event import Direction
from userspace.records import Frame
from userspace.reporters.pcap import PcapReporter

MESSAGES = 3000  # ~1.2 MB of JSON lines, ~1 MB of frames


def options_message(n: int) -> bytes:
    return sip_message("OPTIONS sip:disk SIP/2.0", [
        f"Via: SIP/2.0/UDP 10.77.0.1;branch=z9hG4bK{n}", f"Call-ID: disk-{n}", "From: <sip:a@d>;tag=1",
        "To: <sip:b@d>", f"CSeq: {n} OPTIONS"])


@contextlib.contextmanager
def tiny_disk(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """Each output fills its own disk: JSON lines ~1 batch, fallback ~2, pcap ~600 frames."""
    with tiny_disk(tmp_path / "out", "256k") as out, tiny_disk(tmp_path / "spare", "512k") as spare, \
            tiny_disk(tmp_path / "frames", "256k") as frames:
        yield out, spare, frames


def json_lines(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n"), f"{path} ends in a cut line"
    return [json.loads(line) for line in data.splitlines()]


def accounts(output: str) -> dict[str, dict[str, int]]:
    """The final records: line as {output: {written, to_fallback, lost}}."""
    (line,) = [x for x in output.splitlines() if x.startswith("records: ")]
    found: dict[str, dict[str, int]] = {}
    for part in line.split("; ")[1:]:
        name, *pairs = part.split()
        found[name] = {k: int(v) for k, v in (p.split("=") for p in pairs if "=" in p)}
    return found


def check_every_record_once(output: str, out: Path, spare: Path, produced: int) -> None:
    jsonl = accounts(output)["jsonl"]
    written, fell_back = json_lines(out / "sip.jsonl"), json_lines(spare / "fallback.jsonl")
    assert (len(written), len(fell_back)) == (jsonl["written"], jsonl["to_fallback"])
    assert jsonl["written"] + jsonl["to_fallback"] + jsonl["lost"] == produced
    assert jsonl["lost"] > 0 and jsonl["written"] > 0 and jsonl["to_fallback"] > 0
    ids = [r["call_id"] for r in written + fell_back]
    assert len(ids) == len(set(ids)), "no record in two places"


def test_replay_onto_full_disks_accounts_for_every_record_and_exits_non_zero(
        tmp_path: Path, disks: tuple[Path, Path, Path]) -> None:
    out, spare, frames_disk = disks
    sink = ListSink()
    frames = []
    for n in range(MESSAGES):
        data = ethernet(ipv4(udp(options_message(n))))
        frames.append(Frame(1_800_000_000_000_000_000 + n * 1000, data, len(data), "eth0", Direction.INGRESS))
    PcapReporter(sink).write_frames(frames)
    capture = tmp_path / "in.pcap"
    capture.write_bytes(bytes(sink.files[0]))
    result = subprocess.run([str(AGENT), "replay", str(capture), "--out", str(out / "sip.jsonl"),
                             "--pcap", str(frames_disk / "copy.pcap"),
                             "--fallback", str(spare / "fallback.jsonl")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == EXIT_RECORDS_LOST, result.stderr
    assert "Traceback" not in result.stderr
    check_every_record_once(result.stderr, out, spare, MESSAGES)
    pcap = accounts(result.stderr)["pcap"]
    with (frames_disk / "copy.pcap").open("rb") as copy:
        kept = sum(1 for _ in dpkt.pcap.Reader(copy))  # every frame in it whole, none cut
    assert kept + pcap["failed"] == MESSAGES


def test_attach_onto_full_disks_keeps_capturing(lab: Lab, tmp_path: Path,
                                                disks: tuple[Path, Path, Path]) -> None:
    out, spare, _frames = disks
    agent = start_agent(lab.uas_ns, lab.uas_if, out / "sip.jsonl", tmp_path / "agent.log",
                        ["--fallback", str(spare / "fallback.jsonl")])
    for start in range(0, MESSAGES, 500):
        send_udp(lab.uac_ns, lab.uac_v4, 5060, lab.uas_v4, 5060,
                 [options_message(n) for n in range(start, start + 500)])
        time.sleep(0.2)
    time.sleep(1.0)
    assert agent.proc.poll() is None, "still capturing on a full disk"
    status = agent.stop(signal.SIGTERM)
    output = agent.output()
    assert status == EXIT_RECORDS_LOST, output
    assert "Traceback" not in output
    check_every_record_once(output, out, spare, MESSAGES)
