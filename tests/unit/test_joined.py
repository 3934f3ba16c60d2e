"""One writer per output for all the workers: what a worker forwards arrives
whole, a file that fails hands its lines to the fallback, a queue over its
bytes gives up counted, and a parent that stops taking makes the worker's
output fail (counted there) instead of growing without bound."""

from __future__ import annotations

import errno
import json
import threading
import time
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import pytest

from otus_ebpf.capture import worker
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs.joined import JSONL, PCAP, BlockWriter, ForwardedFrames, ForwardedLines, JoinedOutputs
from otus_ebpf.outputs.sinks import RotatingFile
from userspace.event import Direction
from userspace.records import Frame


def collect() -> tuple[list[tuple[str, Any, int, int, bool]], Any]:
    sent: list[tuple[str, Any, int, int, bool]] = []
    return sent, lambda *block: sent.append(block)


def test_forwarded_lines_are_one_block_of_valid_lines() -> None:
    sent, forward = collect()
    ForwardedLines(JSONL, forward, may_wait=True).write_encoded([b'{"a":1}', b'{"b":"x\\ny"}'])
    ((output, block, records, size, wait),) = sent
    assert (output, records, size, wait) == (JSONL, 2, len(block), True)
    assert [json.loads(line) for line in block.splitlines()] == [{"a": 1}, {"b": "x\ny"}]


def test_forwarded_frames_keep_what_the_pcap_needs() -> None:
    sent, forward = collect()
    frame = Frame(123, b"\x01" * 60, 1500, "eth0", Direction.EGRESS)
    ForwardedFrames(forward).write_frames([frame])
    ((output, payload, records, size, wait),) = sent
    assert (output, records, size, wait) == (PCAP, 1, 60, False), "the loop's thread never waits"
    assert payload == [(123, b"\x01" * 60, 1500, "eth0", int(Direction.EGRESS))]


def joined(tmp_path: Path, **changes: Any) -> JoinedOutputs:
    base = AttachOptions(("lo",), out=str(tmp_path / "out.jsonl"))
    options = AttachOptions(**({f: getattr(base, f) for f in base.__dataclass_fields__} | changes))
    return JoinedOutputs(RotatingFile(tmp_path / "out.jsonl"), options)


def test_blocks_of_several_workers_land_in_one_file_each_once(tmp_path: Path) -> None:
    outputs = joined(tmp_path, pcap=str(tmp_path / "all.pcap"))
    for n in range(100):
        block = b"".join(json.dumps({"w": n % 2, "n": n, "i": i}).encode() + b"\n" for i in range(3))
        outputs.take(JSONL, block, 3, len(block))
    outputs.take(PCAP, [(1, b"\0" * 42, 42, "lo", 1)], 1, 42)
    outputs.close()
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 300 and len({(r["n"], r["i"]) for r in records}) == 300
    assert (tmp_path / "all.pcap").stat().st_size == 24 + 16 + 42
    assert [str(a) for a in outputs.accounts()] == ["jsonl written=300 to_fallback=0 lost=0",
                                                    "pcap frames failed=0"]
    assert outputs.lost() == 0


def test_a_block_for_an_output_the_task_has_not_is_counted(tmp_path: Path) -> None:
    outputs = joined(tmp_path)
    outputs.take(PCAP, [], 5, 0)
    outputs.close()
    assert outputs.unknown == 5 and outputs.lost() == 5


def test_a_file_that_fails_hands_its_block_to_the_fallback_or_counts_it() -> None:
    taken: list[bytes] = []

    def full(_block: bytes) -> None:
        raise OSError(errno.ENOSPC, "full")

    def fallback(block: bytes, _records: int, _size: int) -> bool:
        taken.append(block)
        return True

    failing = BlockWriter("jsonl", full, lambda: None, fallback)
    failing.put(b"x\n", 1, 2)
    failing.close()
    assert (failing.stats.failed, failing.stats.to_fallback, failing.stats.lost) == (1, 1, 0)
    assert taken == [b"x\n"]
    alone = BlockWriter("pcap", full, lambda: None, None)
    alone.put([], 4, 10)
    alone.close()
    assert (alone.stats.failed, alone.stats.lost) == (4, 4)


def test_a_queue_over_its_bytes_gives_up_counted_and_never_blocks() -> None:
    release = threading.Event()
    def slow(_block: bytes) -> None:
        release.wait(5)

    writer = BlockWriter("jsonl", slow, lambda: None, None, max_bytes=100)
    assert writer.put(b"a" * 60, 1, 60)   # taken by the thread, which now waits
    time.sleep(0.05)
    assert writer.put(b"b" * 60, 1, 60)   # queued: 60 of 100 bytes
    started = time.monotonic()
    assert not writer.put(b"c" * 60, 1, 60)  # over the bound: given up at once
    assert time.monotonic() - started < 0.5
    release.set()
    writer.close()
    assert (writer.stats.written, writer.stats.overflow, writer.stats.lost) == (2, 1, 1)


def test_a_huge_single_block_still_goes_through() -> None:
    written: list[int] = []
    writer = BlockWriter("jsonl", lambda b: written.append(len(b)), lambda: None, None, max_bytes=10)
    assert writer.put(b"z" * 1000, 1, 1000)  # alone in the queue: never refused for its size
    writer.close()
    assert written == [1000]


def test_the_outbox_bounds_forwarded_bytes_and_fails_when_the_parent_takes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "FORWARD_WAIT_S", 0.2)
    parent, child = Pipe(duplex=False)
    outbox = worker.Outbox(child, 3, budget=1000)
    outbox.forward(JSONL, b"x" * 600, 1, 600, True)
    assert parent.recv() == ("out", 3, (JSONL, b"x" * 600, 1, 600))
    big = b"y" * 200_000  # over the pipe's buffer: the sending thread waits for the parent
    outbox.forward(JSONL, big, 1, len(big), True)
    started = time.monotonic()
    with pytest.raises(OSError, match="took none of"):
        outbox.forward(PCAP, [], 1, 900, False)  # from the loop's thread: fails at once, never waits
    assert time.monotonic() - started < 0.1
    with pytest.raises(OSError, match="took none of"):
        outbox.forward(JSONL, b"z" * 900, 1, 900, True)
    assert parent.recv()[2][1] == big  # the parent reads again: room again
    outbox.forward(JSONL, b"z" * 900, 1, 900, True)
    assert parent.recv()[2][2] == 1
    outbox.close(5)


def test_the_outbox_fails_at_once_once_the_parent_is_gone() -> None:
    parent, child = Pipe(duplex=False)
    outbox = worker.Outbox(child, 0, budget=1000)
    parent.close()
    outbox.send("sample", {})
    deadline = time.monotonic() + 5
    while True:
        try:
            outbox.forward(JSONL, b"x", 1, 1, True)
        except OSError as exc:
            assert exc.errno == errno.EPIPE
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    outbox.close(5)


def test_a_block_the_file_refuses_is_in_the_fallback_only_once_written_there(tmp_path: Path) -> None:
    outputs = joined(tmp_path, fallback=str(tmp_path / "fallback.jsonl"))
    jsonl, fallback = outputs.writers[JSONL], outputs.writers["fallback"]

    def full(_block: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    jsonl._write = full
    outputs.take(JSONL, b'{"n":1}\n{"n":2}\n', 2, 16)
    outputs.drain(5)
    fallback._write = full  # the spare disk fills too
    outputs.take(JSONL, b'{"n":3}\n', 1, 8)
    outputs.close()
    assert (jsonl.stats.written, jsonl.stats.to_fallback, jsonl.stats.lost) == (0, 2, 1)
    assert (fallback.stats.written, fallback.stats.lost) == (2, 0)
    assert outputs.lost() == 1
    assert (tmp_path / "fallback.jsonl").read_text().splitlines() == ['{"n":1}', '{"n":2}']
