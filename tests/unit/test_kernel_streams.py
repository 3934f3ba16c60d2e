"""Streams the kernel measures, as user space takes them: the kernel's layout
decoded into the stream that reports, registration from a stream's first
packet, reads every interval, a call's end reading and deleting its own, and
kernel streams nobody owns cleaned up (counted). The map is a dict here; the
kernel's side runs against the real programs in tests/kernel/test_stream_stats.py."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from types import MappingProxyType

from tests.support import calls
from tests.support.calls import OFFERED, PCMU, Datagram, Dialog, Party, Stream
from tests.support.frames import ethernet, ipv4, raw, ring_record, udp
from userspace.calls import CallLimits
from userspace.event import Flag, Kind
from userspace.kernel_streams import (
    JITTER_ONE,
    NO_TYPE,
    STREAM,
    STREAM_KEY,
    StreamState,
    apply_snapshot,
    clock_table,
    key_worker,
    stream_key,
)
from userspace.pipeline import Pipeline
from userspace.records import CallSummary, StreamReport
from userspace.rtp import RtpStream

S = 1_000_000_000
MS = 1_000_000


def record(d: Datagram, kind: Kind = Kind.SIP) -> bytes:
    return ring_record(ethernet(ipv4(udp(d.payload, d.sport, d.dport), src=d.src, dst=d.dst)), ts_ns=d.ts_ns,
                       kind=kind)


def value(packets: int, first_ns: int, last_ns: int, *, max_seq: int = 0, base_seq: int = 0, cycles: int = 0,
          jitter: float = 0.0, types: dict[int, int] | None = None, state: StreamState = StreamState.ARRIVAL,
          duplicates: int = 0, reordered: int = 0, expected_before: int = 0) -> bytes:
    """A kernel stream value, as BPF_MAP_LOOKUP_ELEM returns it (the lock zeroed)."""
    by_type = list((types or {PCMU: packets}).items())[:4]
    type_bytes = bytes(pt for pt, _n in by_type).ljust(4, b"\0")
    counts = [n for _pt, n in by_type] + [0] * (4 - len(by_type))
    return STREAM.pack(packets, packets * 172, first_ns, last_ns, last_ns, int(jitter * JITTER_ONE), 1, 0,
                       cycles, expected_before, reordered, duplicates, 0, 8000, 0, 0, 0, 0, base_seq, max_seq,
                       0, PCMU, int(state), type_bytes, *counts, 0)


class FakeMap:
    """The streams map as a dict; reads and deletes recorded."""

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.read_keys: list[bytes] = []
        self.deleted: list[bytes] = []

    def read_all(self, worker: int | None) -> Iterable[tuple[bytes, bytes]]:
        return [(k, v) for k, v in self.entries.items() if worker is None or key_worker(k) == worker]

    def read(self, keys: list[bytes]) -> list[bytes | None]:
        self.read_keys += keys
        return [self.entries.get(k) for k in keys]

    def delete(self, keys: list[bytes]) -> None:
        self.deleted += keys
        for key in keys:
            self.entries.pop(key, None)


def test_the_kernel_is_told_only_the_clocks_it_cannot_guess() -> None:
    formats = MappingProxyType({0: "PCMU/8000", 8: "PCMA/8000", 9: "G722/8000", 111: "opus/48000/2",
                                101: "telephone-event/8000", 96: "AMR-WB/16000", 200: "bad/16000"})
    assert clock_table(formats) == ((101, 0), (96, 16000), (111, 48000)), "events first; never a PT >= 128"
    many = MappingProxyType({96 + n: "opus/48000/2" for n in range(12)} | {127: "telephone-event/8000"})
    table = clock_table(many)
    assert len(table) == 8 and table[0] == (127, 0), "bounded, and the event kept"


def test_keys_name_their_worker() -> None:
    key = stream_key(ipaddress.ip_address("10.0.0.1").packed, 4000, ipaddress.ip_address("10.0.0.2").packed,
                     5000, 0xDEADBEEF, 7, 3)
    assert len(key) == STREAM_KEY.size == 48 and key_worker(key) == 3
    v6 = stream_key(ipaddress.ip_address("fd00::1").packed, 1, ipaddress.ip_address("fd00::2").packed, 2,
                    1, 0, 0)
    assert v6[44] == 6 and key[44] == 4


def test_a_snapshot_becomes_the_stream_that_reports() -> None:
    flow = (raw("10.0.0.1"), 4000, raw("10.0.0.2"), 5000)
    stream = RtpStream(flow, 1, "c", MappingProxyType({0: "PCMU/8000"}), 0)
    apply_snapshot(stream, value(95, 1 * S, 3 * S, base_seq=65500, max_seq=98, cycles=1, jitter=12.5,
                                 duplicates=2, reordered=3))
    report = stream.report()
    assert (report["packets"], report["expected"], report["lost"]) == (95, 65536 + 98 - 65500 + 1, 40)
    assert (report["duplicates"], report["reordered"], report["jitter_ms"]) == (2, 3, 1.562)
    assert report["duration_ms"] == 2000.0 and report["codec"] == "PCMU/8000"
    apply_snapshot(stream, value(0, 5, 0, state=StreamState(0), types={}))
    assert stream.last_ns == 5 and stream._last_arrival_ns == -1 and stream.by_type == {}
    assert NO_TYPE == 255


def first_packet(datagram: Datagram, worker: int, owner: int) -> bytes:
    """The ring record of a stream's first packet, flagged, as the kernel sends it."""
    header = bytearray(record(datagram, Kind.RTP))
    header[33] |= Flag.STREAM | Flag.OWNED  # flags
    header[20:24] = worker.to_bytes(4, "little")  # flow_hash: the flow's worker
    header[36:40] = owner.to_bytes(4, "little")
    return bytes(header)


def key_of(ssrc: int, owner: int, worker: int) -> bytes:
    return stream_key(ipaddress.ip_address("10.0.0.1").packed, 40000, ipaddress.ip_address("10.0.0.2").packed,
                      50000, ssrc, owner, worker)


def _call(pipeline: Pipeline, kernel: FakeMap, worker: int) -> tuple[Dialog, bytes]:
    """A call set up, and the kernel's first packet of its stream registered; its key."""
    dialog = Dialog("k-1", Party("10.0.0.1", 40000, "a"), Party("10.0.0.2", 50000, "b"), OFFERED,
                    {PCMU: "PCMU/8000"})
    for datagram in calls.signalling(dialog, [(0, "invite"), (0, "ok"), (0, "ack")]):
        pipeline.process([record(datagram)])
    (first,) = calls.media(Stream(0x42, PCMU, 1, 0), dialog.caller, dialog.callee)
    pipeline.process([first_packet(first, worker, owner=1)])
    return dialog, key_of(0x42, 1, worker)


def test_streams_register_from_their_first_packet_and_report_from_the_kernel() -> None:
    kernel = FakeMap()
    pipeline = Pipeline({}, 0, calls=CallLimits(rtp_report_interval_s=10.0))
    pipeline.measure_in_kernel(kernel, worker=1)
    dialog, key = _call(pipeline, kernel, worker=1)
    assert pipeline.calls.media.stats.kernel_streams == 1
    kernel.entries[key] = value(500, 1 * S, 11 * S, max_seq=499)
    other_worker = bytearray(key)
    other_worker[45] = 0
    kernel.entries[bytes(other_worker)] = value(7, 0, 1)  # another worker's: never touched here
    (report,) = pipeline.sync_streams(12 * S)
    assert isinstance(report, StreamReport) and report.report["packets"] == 500
    assert pipeline.sync_streams(13 * S) == [], "the next report is an interval later"
    kernel.entries[key] = value(900, 1 * S, 19 * S, max_seq=909)
    records = []
    for datagram in calls.signalling(dialog, [(20_000 * MS, "bye"), (20_010 * MS, "bye_ok")]):
        records += pipeline.process([record(datagram)])
    (summary,) = [r for r in records if isinstance(r, CallSummary)]
    (stream,) = summary.streams
    assert (stream["packets"], stream["expected"], stream["lost"]) == (900, 910, 10), "the kernel's last word"
    assert kernel.read_keys == [key] and kernel.deleted == [key], "read and deleted at the call's end"
    assert bytes(other_worker) in kernel.entries


def test_kernel_streams_none_registered_are_deleted_an_interval_after_they_began() -> None:
    """Its first packet lost (a full ring) or its stream refused: deleted while still
    busy, so that its next packet comes up flagged and it is not invisible for long."""
    kernel = FakeMap()
    pipeline = Pipeline({}, 0)
    pipeline.measure_in_kernel(kernel, worker=None)
    busy = stream_key(b"\x0a\0\0\x09", 1, b"\x0a\0\0\x0a", 2, 3, 4, 0)
    young = stream_key(b"\x0a\0\0\x09", 1, b"\x0a\0\0\x0a", 2, 5, 4, 0)
    kernel.entries = {busy: value(30, 1 * S, 100 * S), young: value(3, 95 * S, 100 * S)}
    assert pipeline.sync_streams(101 * S) == []
    assert kernel.deleted == [busy], "a stream whose first packet may still be on its way stays"
    stats = pipeline.calls.media.stats
    assert (stats.kernel_orphans, stats.kernel_orphan_packets) == (1, 30)


def test_a_stream_the_kernel_keys_anew_is_a_stream_of_its_own_both_counted() -> None:
    """Its endpoint changed hands in the kernel (a new owner tag) while this call kept the
    SSRC: the second key must not be dropped, or the stream stops being measured."""
    kernel = FakeMap()
    pipeline = Pipeline({}, 0)
    pipeline.measure_in_kernel(kernel, worker=1)
    dialog, first_key = _call(pipeline, kernel, worker=1)
    (later,) = calls.media(Stream(0x42, PCMU, 1, 5 * MS, first_seq=10), dialog.caller, dialog.callee)
    pipeline.process([first_packet(later, 1, owner=9)])
    second_key = key_of(0x42, 9, 1)
    kernel.entries = {first_key: value(10, 0, 1 * S, max_seq=9), second_key: value(40, 2 * S, 3 * S,
                                                                                   base_seq=10, max_seq=49)}
    records = []
    for datagram in calls.signalling(dialog, [(4_000 * MS, "bye")]):
        records += pipeline.process([record(datagram)])
    (summary,) = [r for r in records if isinstance(r, CallSummary)]
    assert sorted(int(str(s["packets"])) for s in summary.streams) == [10, 40]
    assert sorted(kernel.deleted) == sorted([first_key, second_key])


def test_a_stream_gone_from_the_map_at_its_calls_end_is_counted_and_reports_what_was_known() -> None:
    kernel = FakeMap()
    pipeline = Pipeline({}, 0)
    pipeline.measure_in_kernel(kernel, worker=1)
    dialog, _key = _call(pipeline, kernel, worker=1)
    records = []
    for datagram in calls.signalling(dialog, [(1_000 * MS, "bye")]):
        records += pipeline.process([record(datagram)])
    (summary,) = [r for r in records if isinstance(r, CallSummary)]
    assert summary.streams[0]["packets"] == 1, "its first packet, counted here"
    assert pipeline.calls.media.stats.kernel_gone == 1
