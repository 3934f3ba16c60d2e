"""Capture files through dpkt against the hand-written reader and writer, in
the same run: what dpkt costs a whole `otus-ebpf replay`.

    .venv/bin/python scripts/bench/pcap_io.py [--messages 35000] [--rounds 9] [--hand REV] [--dpkt REV]

Both sides are read out of git into this process: the hand-written reader
and writer as of HAND (the tree before dpkt), dpkt's as of DPKT (the tree
that read and wrote both formats with dpkt's header and block classes). This
tree's replay runs with one part swapped for each side's: the reader
(otus_ebpf.capture.replay.CaptureFile) or the frame encoder of the pcap
outputs (userspace.reporters.pcap.FrameEncoder, the per-call files' too).
Inputs: the fair pcap of scripts/bench/replay.py (nanosecond pcap, whole SIP
calls) and the same frames as pcapng (two interface names, both directions).

  replay: read ...     replay to JSON lines
  replay: write ...    replay to JSON lines and --pcap in that format
  reader / encoder alone: the frames read or encoded, nothing else

CPU seconds of the whole process (every thread: other work on a shared
machine stretches wall time, not this). A replay row's ratio is the median
of --rounds pairs, hand and dpkt back to back; a part's is of the best
times. Each replay row checks that the two sides wrote the same bytes
(records, and the pcap). The rule it decides: dpkt is used unless it makes a
whole replay more than 10 % slower.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf import logs
from otus_ebpf.capture import replay
from otus_ebpf.capture.replay import read_frames, run_replay
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs import percall
from scripts.bench.replay import varied_calls, write_pcap
from userspace.event import Direction
from userspace.records import Frame
from userspace.reporters import pcap as pcap_output
from userspace.reporters.pcap import FrameEncoder, PcapFormat

REPO = Path(__file__).resolve().parents[2]
HAND = "5b72791"  # the last tree with the hand-written reader and writer only
DPKT = "f49a85d"  # the tree that read and wrote both formats with dpkt's classes
SLOWER_AT_MOST = 1.10
BATCH = 512
Read = Callable[[Any, str], Iterator[Any]]


# Names an older tree's module imports that this tree no longer has (the log
# callable went with the move to the logging module); the readers and encoders
# the bench takes from them do not use them.
GONE = {"otus_ebpf.outputs.wiring": {"Log": Callable[[str], None]}}


def module_at(revision: str, path: str, name: str) -> types.ModuleType:
    for module_name, names in GONE.items():
        for gone, stand_in in names.items():
            if not hasattr(sys.modules.setdefault(module_name, importlib.import_module(module_name)), gone):
                setattr(sys.modules[module_name], gone, stand_in)
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{path}"], check=False,
                           capture_output=True, text=True)
    if shown.returncode:
        raise SystemExit(f"{revision}:{path}: {shown.stderr.strip()} (name the revision with --hand/--dpkt)")
    source = shown.stdout
    module = sys.modules[name] = types.ModuleType(name)  # dataclasses look their module up
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


@dataclass(frozen=True)
class Side:
    """One side's reader and encoder, in the shape this tree's replay calls them."""

    name: str
    read: Read
    reader: type
    encoder: type


def side(name: str, read: Read, encoder_module: types.ModuleType) -> Side:
    class Reader:
        def __init__(self, stream: Any, default_interface: str) -> None:
            self._frames = read(stream, default_interface)
            self.skipped = 0

        def frames(self) -> Iterator[Any]:
            return self._frames

    class Encoder(encoder_module.FrameEncoder):  # type: ignore[name-defined,misc]
        def __init__(self, file_format: PcapFormat) -> None:
            super().__init__(encoder_module.PcapFormat(file_format.value))  # its own enum, by value

        def unwritable(self, frames: list[Frame]) -> int:
            return 0  # the inputs are of this century

    return Side(name, read, Reader, Encoder)


@contextlib.contextmanager
def swapped(reader: type, encoder: type) -> Iterator[None]:
    saved = replay.CaptureFile, pcap_output.FrameEncoder, percall.FrameEncoder
    replay.CaptureFile = reader  # type: ignore[misc,assignment]
    pcap_output.FrameEncoder = percall.FrameEncoder = encoder  # type: ignore[misc]
    try:
        yield
    finally:
        replay.CaptureFile, pcap_output.FrameEncoder, percall.FrameEncoder = saved  # type: ignore[misc]


@dataclass(frozen=True)
class Row:
    what: str
    hand_s: float
    dpkt_s: float
    ratio: float  # dpkt / hand


def cpu_seconds(work: Callable[[], None]) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def replayed(capture: Path, out: Path, pcap_format: PcapFormat | None) -> Callable[[], None]:
    pcap = out.with_suffix(f".{pcap_format.value}") if pcap_format else None
    options = AttachOptions(("bench",), out=str(out), pcap=str(pcap) if pcap else None,
                            pcap_format=pcap_format or PcapFormat.PCAP)

    def work() -> None:
        for old in (out, pcap):
            if old is not None:
                old.unlink(missing_ok=True)
        assert run_replay(capture, options, None) == 0

    return work


def compare_replays(what: str, capture: Path, sides: tuple[Side, Side], workdir: Path, rounds: int,
                    swap: Callable[[Side], contextlib.AbstractContextManager[None]],
                    pcap_format: PcapFormat | None = None) -> Row:
    outs = [workdir / f"{s.name}.jsonl" for s in sides]
    works = [replayed(capture, out, pcap_format) for out in outs]
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for n, each in enumerate(sides):
            with swap(each):
                times[n].append(cpu_seconds(works[n]))
    assert filecmp.cmp(*outs, shallow=False), f"{what}: the records differ"
    if pcap_format is not None:
        written = [out.with_suffix(f".{pcap_format.value}") for out in outs]
        assert filecmp.cmp(*written, shallow=False), f"{what}: the written files differ"
    ratio = statistics.median(d / h for h, d in zip(*times, strict=True))
    return Row(what, min(times[0]), min(times[1]), ratio)


def as_pcapng(capture: Path, target: Path) -> list[Frame]:
    """The frames of ``capture`` as pcapng, every other one egress on a second interface."""
    with capture.open("rb") as stream:
        frames = [Frame(f.ts_ns, f.data, f.orig_len, ("eth0", "eth1")[n % 2], Direction(n % 2))
                  for n, f in enumerate(read_frames(stream, "x"))]
    encoder = FrameEncoder(PcapFormat.PCAPNG)
    target.write_bytes(encoder.file_header() + encoder.frames(frames))
    return frames


def alone(what: str, rounds: int, hand: Callable[[], None], dpkt: Callable[[], None]) -> Row:
    hand_s = min(cpu_seconds(hand) for _ in range(rounds))
    dpkt_s = min(cpu_seconds(dpkt) for _ in range(rounds))
    return Row(what, hand_s, dpkt_s, dpkt_s / hand_s)


def encoding(encoder: type, file_format: PcapFormat, frames: list[Frame]) -> Callable[[], None]:
    def work() -> None:
        each = encoder(file_format)
        each.file_header()
        for at in range(0, len(frames), BATCH):
            each.frames(frames[at:at + BATCH])

    return work


def reading(read: Read, capture: Path) -> Callable[[], None]:
    def work() -> None:
        with capture.open("rb") as stream:
            for _frame in read(stream, "x"):
                pass

    return work


def show(rows: list[Row], frames: int, replay_s: float) -> None:
    """``replay_s``: a whole replay with the hand code, to say what share of it a part's cost is."""
    print(f"{'':32} {'hand':>8} {'dpkt':>8}  dpkt/hand")
    for row in rows:
        extra = row.dpkt_s - row.hand_s
        print(f"{row.what:32} {row.hand_s:7.3f}s {row.dpkt_s:7.3f}s  {row.ratio:.3f}x"
              f"  ({extra / frames * 1e6:+.2f} us a frame, {extra / replay_s:+.1%} of a replay)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=35_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--hand", default=HAND, help=f"revision with the hand-written code ({HAND})")
    parser.add_argument("--dpkt", default=DPKT, help=f"revision with dpkt's ({DPKT})")
    args = parser.parse_args()
    logs.configure("warning")  # a replay's summary lines, hundreds of them, are not the figures
    hand_read = module_at(args.hand, "otus_ebpf/capture/replay.py", "hand_replay").read_frames
    dpkt_read = module_at(args.dpkt, "otus_ebpf/capture/capture_file.py", "dpkt_capture_file").read_frames
    sides = (side("hand", hand_read, module_at(args.hand, "userspace/reporters/pcap.py", "hand_pcap")),
             side("dpkt", dpkt_read, module_at(args.dpkt, "userspace/reporters/pcap.py", "dpkt_pcap")))
    ours = (replay.CaptureFile, FrameEncoder)

    def reader(each: Side) -> contextlib.AbstractContextManager[None]:
        return swapped(each.reader, ours[1])

    def encoder(each: Side) -> contextlib.AbstractContextManager[None]:
        return swapped(ours[0], each.encoder)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pcap, pcapng = workdir / "calls.pcap", workdir / "calls.pcapng"
        messages = write_pcap(pcap, varied_calls(args.messages))
        frames = as_pcapng(pcap, pcapng)
        whole = [compare_replays("replay: read pcap", pcap, sides, workdir, args.rounds, reader),
                 compare_replays("replay: read pcapng", pcapng, sides, workdir, args.rounds, reader),
                 *(compare_replays(f"replay: write {f.value}", pcap, sides, workdir, args.rounds, encoder, f)
                   for f in PcapFormat)]
        parts = [*(alone(f"reader alone: {c.suffix[1:]}", args.rounds, reading(sides[0].read, c),
                         reading(sides[1].read, c)) for c in (pcap, pcapng)),
                 *(alone(f"encoder alone: {f.value}", args.rounds, encoding(sides[0].encoder, f, frames),
                         encoding(sides[1].encoder, f, frames)) for f in PcapFormat)]
    print(f"{messages:,} frames (SIP messages), {args.rounds} rounds, CPU seconds (best); "
          f"hand = {args.hand}, dpkt = {args.dpkt}; the outputs of both sides the same bytes")
    show(whole, messages, whole[0].hand_s)
    show(parts, messages, whole[0].hand_s)
    for row in whole:
        verdict = "dpkt" if row.ratio <= SLOWER_AT_MOST else "the hand-written code (dpkt > 10 % slower)"
        print(f"  {row.what}: dpkt / hand = {row.ratio:.3f}x -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
