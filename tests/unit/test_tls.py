"""TLS plaintext chunks (userspace.tls) through the pipeline: decoded, framed as the
streams they continue, recorded with their process; hostile chunks counted."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.btf import KernelTypes
from otus_ebpf.kernel.settings import KernelSettings, TlsSettings
from tests.support.frames import raw
from tests.support.sip_samples import INVITE, OK_200
from tests.support.websocket import Opcode, frame, upgrade_request
from userspace.errors import DecodeError
from userspace.event import EVENT_HEADER, Direction, Kind
from userspace.pipeline import Pipeline
from userspace.records import SipRecord
from userspace.sharding import decode_handoff, owner_of
from userspace.tls import TLS_HEADER, Process, TlsCall, decode_chunk

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
MAPPED = bytes(10) + b"\xff\xff"


def chunk(data: bytes, offset: int, write: bool = False, pid: int = 4242, moved: int | None = None,
          family: int = 4, src: bytes = raw(CLIENT), dst: bytes = raw(SERVER), call: int = TlsCall.READ_EX,
          shard: int = 0) -> bytes:
    """The ring record the TLS probes send: a server process (pid) reading what the client
    sent (write=False) or writing to it."""
    if write:
        src, dst = dst, src
    sport, dport = (5061, 40000) if write else (40000, 5061)
    body = TLS_HEADER.pack(offset, pid, pid, b"kamailio", src.ljust(16, b"\0"), dst.ljust(16, b"\0"),
                           sport, dport, family, call) + data
    moved = len(data) if moved is None else moved
    direction = Direction.EGRESS if write else Direction.INGRESS
    return EVENT_HEADER.pack(1_000 + offset, 0, moved, len(body), 0, 0, 0, TLS_HEADER.size, direction,
                             Kind.TLS, 6, 0, shard, 0) + body


def sip_records(pipeline: Pipeline, records: list[bytes]) -> list[SipRecord]:
    return [r for r in pipeline.process(records) if isinstance(r, SipRecord)]


def test_messages_split_over_chunks_and_several_in_one_are_recorded_with_their_process() -> None:
    pipeline = Pipeline({2: "eth0"}, 0)
    first, rest = INVITE[:100], INVITE[100:]
    records = sip_records(pipeline, [chunk(first, 0), chunk(rest, 100),
                                     chunk(OK_200 + OK_200, 0, write=True)])
    assert [r.message.method or r.message.status for r in records] == ["INVITE", 200, 200]
    invite = records[0]
    assert (invite.transport, invite.interface, invite.process) == (254, "tls", Process(4242, "kamailio"))
    assert (invite.src, invite.sport, invite.dst, invite.dport) == (raw(CLIENT), 40000, raw(SERVER), 5061)
    assert invite.direction == Direction.INGRESS and records[1].direction == Direction.EGRESS
    encoded = invite.to_dict()
    assert encoded["transport"] == "tls" and encoded["process"] == {"pid": 4242, "comm": "kamailio"}
    assert pipeline.stats.tls_chunks == 3 and pipeline.stats.sip_errors == 0


def test_a_chunk_the_ring_lost_is_a_gap_and_framing_goes_on_at_once() -> None:
    """Chunks come in order: a hole will never fill, so the message after it is framed
    with its own chunk, not held for reordering (a quiet trunk would wait minutes)."""
    pipeline = Pipeline({}, 0)
    second_at = len(INVITE) + len(OK_200)
    assert len(sip_records(pipeline, [chunk(INVITE, 0)])) == 1
    # OK_200's chunk is lost; the next one is framed as it comes
    assert len(sip_records(pipeline, [chunk(INVITE, second_at)])) == 1
    assert pipeline.tcp.stats.gaps == 1


def test_a_call_that_moved_more_than_was_copied_leaves_a_gap() -> None:
    """The kernel copies 16 KiB of a call at most; the stream skips the rest."""
    pipeline = Pipeline({}, 0)
    big = INVITE + b"x" * 50
    assert sip_records(pipeline, [chunk(big[:60], 0, moved=len(big))]) == []
    assert len(sip_records(pipeline, [chunk(INVITE, len(big))])) == 1
    assert pipeline.tcp.stats.gaps == 1


def test_ipv4_mapped_addresses_are_recorded_as_ipv4_and_ipv6_as_ipv6() -> None:
    pipeline = Pipeline({}, 0)
    v6 = bytes.fromhex("20010db8000000000000000000000001")
    [mapped] = sip_records(pipeline, [chunk(INVITE, 0, family=6, src=MAPPED + raw(CLIENT),
                                            dst=MAPPED + raw(SERVER))])
    [native] = sip_records(pipeline, [chunk(INVITE, 0, family=6, src=v6, dst=v6[:-1] + b"\2")])
    assert (mapped.src, mapped.dst) == (raw(CLIENT), raw(SERVER))
    assert len(native.src) == 16 and native.to_dict()["src"] == "2001:db8::1"


def test_two_local_processes_on_one_connection_are_two_streams() -> None:
    """The client and the server both probed: each view is its own stream, never one
    stream fed twice (their offsets are each their own)."""
    pipeline = Pipeline({}, 0)
    records = sip_records(pipeline, [chunk(INVITE[:100], 0, pid=1), chunk(INVITE[:100], 0, pid=2),
                                     chunk(INVITE[100:], 100, pid=1), chunk(INVITE[100:], 100, pid=2)])
    assert sorted(r.process.pid for r in records if r.process) == [1, 2]


def test_sip_over_websocket_inside_tls_is_wss() -> None:
    pipeline = Pipeline({}, 0)
    upgrade = upgrade_request()
    framed = frame(INVITE, Opcode.TEXT, mask=b"\1\2\3\4")
    [record] = sip_records(pipeline, [chunk(upgrade + framed, 0)])
    assert record.to_dict()["transport"] == "wss"


def test_a_message_for_another_worker_is_handed_off_with_its_process() -> None:
    workers = 2
    owner = owner_of(INVITE, workers)
    assert owner is not None
    pipeline = Pipeline({}, 0, route=(1 - owner, workers))
    assert sip_records(pipeline, [chunk(INVITE, 0)]) == []
    [(to, record)] = pipeline.take_handoffs()
    assert to == owner
    handed = decode_handoff(record[EVENT_HEADER.size:])
    assert handed.process == Process(4242, "kamailio") and handed.transport == 254
    [received] = sip_records(Pipeline({}, 0, route=(owner, workers)), [record])
    assert received.process == Process(4242, "kamailio") and received.interface == "tls"


@pytest.mark.parametrize(("change", "why"), [
    (lambda b: b[:TLS_HEADER.size - 1], "cut short"),
    (lambda b: b[:68] + b"\x05" + b[69:], "family 5"),
    (lambda b: b[:69] + b"\x09" + b[70:], "call 9"),
])
def test_a_damaged_chunk_is_one_decode_error(change: object, why: str) -> None:
    body = chunk(INVITE, 0)[EVENT_HEADER.size:]
    with pytest.raises(DecodeError):
        decode_chunk(change(body), TLS_HEADER.size, len(INVITE))  # type: ignore[operator]
    with pytest.raises(DecodeError, match="moved"):
        decode_chunk(body, TLS_HEADER.size, 10)  # more bytes than the call moved
    with pytest.raises(DecodeError):
        decode_chunk(body, 12, len(INVITE))  # the plaintext elsewhere than after the header


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
def test_any_tls_record_is_decoded_or_counted(body: bytes, offset: int, moved: int) -> None:
    pipeline = Pipeline({}, 0)
    header = EVENT_HEADER.pack(1, 0, moved, len(body), 0, 0, 0, TLS_HEADER.size, 0, Kind.TLS, 6, 0, 0, 0)
    record = header + body
    pipeline.process([record, chunk(body, offset % 2**40)])
    stats = pipeline.stats
    assert stats.events == 2 and stats.tls_chunks + stats.event_errors == 2


def _btf(types: bytes, strings: bytes) -> bytes:
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_struct_offsets_are_found_through_anonymous_members_and_nested_paths() -> None:
    strings = b"\0int\0outer\0a\0b\0c\0inner\0d\0"
    name = {n: strings.index(n.encode() + b"\0") for n in ("int", "outer", "a", "b", "c", "inner", "d")}
    types = b"".join([
        struct.pack("<III", name["int"], 1 << 24, 4) + struct.pack("<I", 32),               # 1: int
        struct.pack("<III", name["outer"], 4 << 24 | 3, 24)                                 # 2: struct outer
        + struct.pack("<III", name["a"], 1, 0) + struct.pack("<III", 0, 3, 32)
        + struct.pack("<III", name["inner"], 4, 96),
        struct.pack("<III", 0, 5 << 24 | 2, 4)                                      # 3: anonymous union
        + struct.pack("<III", name["b"], 1, 0) + struct.pack("<III", name["c"], 1, 0),
        struct.pack("<III", 0, 4 << 24 | 1, 8) + struct.pack("<III", name["d"], 1, 32),  # 4: struct
    ])
    kernel = KernelTypes(_btf(types, strings))
    assert kernel.offset("outer", "a") == 0 and kernel.offset("outer", "c") == 4
    assert kernel.offset("outer", "inner.d") == 16
    with pytest.raises(SetupError, match="no member e"):
        kernel.offset("outer", "e")
    with pytest.raises(SetupError, match="no struct nothing"):
        kernel.offset("nothing", "a")
    with pytest.raises(SetupError, match="magic"):
        KernelTypes(b"\0" * 24)


@pytest.mark.parametrize(("settings", "said"), [
    (TlsSettings(comms=tuple(f"n{n}" for n in range(65))), "65 TLS process names: the kernel holds"),
    (TlsSettings(comms=("a-name-of-16-byt",)), "longer than the kernel keeps"),
    (TlsSettings(ports=()), "TLS ports must be 1..65535"),
])
def test_tls_settings_the_kernel_cannot_hold_are_one_line(settings: TlsSettings, said: str) -> None:
    with pytest.raises(SetupError, match=said):
        KernelSettings(tls=settings).validate()
