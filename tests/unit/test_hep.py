"""HEPv3 encoding, and the UDP/TCP transports on loopback."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator, Sequence

import pytest

from otus_ebpf.errors import SetupError
from otus_ebpf.outputs.hep_transport import (
    HepCollector,
    HepTransport,
    TcpCollector,
    UdpCollector,
    parse_collector,
)
from tests.support.frames import raw
from tests.support.records import numbered_sip_records
from tests.support.sip_samples import INVITE
from userspace.records import CallSummary, Origin, RtcpRecord, SipRecord, StreamReport
from userspace.reporters.hep import Chunk, HepEncoder, HepIdentity, HepReporter, PayloadType, decode_packet

IDENTITY = HepIdentity(2001, "s3cret", "edge-1")


class ListSink:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send(self, packets: Sequence[bytes]) -> None:
        self.packets += packets

    def flush(self, timeout: float) -> int:
        return 0

    def close(self) -> None:
        pass


def sip_record(src: str = "10.0.0.1", dst: str = "10.0.0.2") -> SipRecord:
    """A SIP record between these addresses (as printed)."""
    (record,) = numbered_sip_records(1, 1)
    record.src, record.dst, record.ts_ns = raw(src), raw(dst), 1_700_000_000_123_456_789
    return record


def test_a_sip_record_becomes_one_hep3_packet_with_every_chunk() -> None:
    record = sip_record()
    chunks = decode_packet(HepEncoder(IDENTITY).sip(record) or b"")
    assert chunks[Chunk.IP_FAMILY] == b"\x02" and chunks[Chunk.IP_PROTOCOL] == b"\x11"
    assert (chunks[Chunk.IPV4_SRC], chunks[Chunk.IPV4_DST]) == (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    assert struct.unpack("!HH", chunks[Chunk.SRC_PORT] + chunks[Chunk.DST_PORT]) == (5060, 5060)
    assert struct.unpack("!II", chunks[Chunk.TIME_SECONDS] + chunks[Chunk.TIME_MICROSECONDS]) == \
        (1_700_000_000, 123_456)
    assert chunks[Chunk.PROTOCOL_TYPE] == bytes([PayloadType.SIP])
    assert struct.unpack("!I", chunks[Chunk.CAPTURE_ID]) == (2001,)
    assert (chunks[Chunk.AUTH_KEY], chunks[Chunk.NODE_NAME]) == (b"s3cret", b"edge-1")
    assert chunks[Chunk.CORRELATION_ID] == record.message.call_id.encode()
    assert chunks[Chunk.PAYLOAD] == record.message.raw
    assert "s3cret" not in repr(IDENTITY)


def test_the_outer_vlan_goes_in_heps_vlan_chunk() -> None:
    record = sip_record()
    assert Chunk.VLAN not in decode_packet(HepEncoder(IDENTITY).sip(record) or b"")
    record.vlans = (100, 200)
    assert decode_packet(HepEncoder(IDENTITY).sip(record) or b"")[Chunk.VLAN] == b"\x00\x64"


def test_ipv6_addresses_use_the_ipv6_chunks() -> None:
    chunks = decode_packet(HepEncoder(HepIdentity()).sip(sip_record("2001:db8::1", "2001:db8::2")) or b"")
    assert chunks[Chunk.IP_FAMILY] == b"\x0a"
    assert chunks[Chunk.IPV6_SRC] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert Chunk.IPV4_SRC not in chunks and Chunk.AUTH_KEY not in chunks


# What heplify-server reads of each JSON payload (its metric/definition.go, rtpPaths and
# rtcpPaths) and stores for Homer's QoS view: a report missing them shows nothing there.
HEPLIFY_RTP_KEYS = {"DELTA", "JITTER", "MOS", "PACKET_LOSS"}
HEPLIFY_RTCP_BLOCK_KEYS = {"fraction_lost", "packets_lost", "ia_jitter", "dlsr"}


def test_stream_reports_go_as_rtp_agent_json_call_summaries_are_counted_out() -> None:
    sink = ListSink()
    reporter = HepReporter(sink, IDENTITY)
    report = StreamReport(5, "call-1", {"src": "10.0.0.1", "sport": 4000, "dst": "10.0.0.2", "dport": 4002,
                                        "ssrc": 7, "lost": 2, "packets": 251, "expected": 253,
                                        "duration_ms": 5000.0, "jitter_ms": 1.5, "mos": 4.2,
                                        "payload_type": 8, "codec": "PCMA/8000"}, final=True)
    summary = CallSummary("call-1", raw("10.0.0.1"), raw("10.0.0.2"), None, None, 0, None, None, None, None,
                          None, "bye")
    reporter.write([report, summary, StreamReport(5, None, {"ssrc": 1})])
    (packet,) = sink.packets
    chunks = decode_packet(packet)
    assert chunks[Chunk.PROTOCOL_TYPE] == bytes([PayloadType.RTP_AGENT_JSON])
    payload = json.loads(chunks[Chunk.PAYLOAD])
    assert set(payload) >= HEPLIFY_RTP_KEYS
    assert all(isinstance(payload[key], int | float) for key in HEPLIFY_RTP_KEYS), "heplify parses floats"
    assert (payload["MOS"], payload["PACKET_LOSS"], payload["DELTA"]) == (4.2, 2, 20.0)
    assert payload["TYPE"] == "HANGUP"
    assert payload["CORRELATION_ID"] == "call-1" and chunks[Chunk.CORRELATION_ID] == b"call-1"
    assert (reporter.stats.encoded, reporter.stats.not_for_hep, reporter.stats.unencodable) == (1, 1, 1)
    assert reporter.detail() == "sent=1 not_for_hep=1 unencodable=1", "as the stats line shows it"


def test_rtcp_goes_as_the_json_homer_stores_for_rtcp() -> None:
    sink = ListSink()
    block = {"source_ssrc": 7, "fraction_lost": 5, "packets_lost": 3, "highest_seq_no": 9, "ia_jitter": 80,
             "lsr": 1, "dlsr": 2}
    rtcp = RtcpRecord(5, "call-1", Origin("eth0"), (raw("10.0.0.2"), 4003, raw("10.0.0.1"), 4001),
                      {"ssrc": 9, "type": 201, "report_count": 1, "report_blocks": [block],
                       "sender_information": {}})
    HepReporter(sink, IDENTITY).write([rtcp])
    (packet,) = sink.packets
    chunks = decode_packet(packet)
    assert chunks[Chunk.PROTOCOL_TYPE] == bytes([PayloadType.RTCP_JSON])
    assert chunks[Chunk.SRC_PORT] == b"\x0f\xa3"
    (sent,) = json.loads(chunks[Chunk.PAYLOAD])["report_blocks"]
    assert set(sent) >= HEPLIFY_RTCP_BLOCK_KEYS and chunks[Chunk.CORRELATION_ID] == b"call-1"


def test_a_message_too_big_for_hep_is_counted_not_sent() -> None:
    record = sip_record()
    record.message.source = INVITE + b"x" * 70_000
    record.message.size = len(record.message.source)
    sink = ListSink()
    reporter = HepReporter(sink, IDENTITY)
    reporter.write([record])
    assert sink.packets == [] and reporter.stats.unencodable == 1


@pytest.mark.parametrize("text", ["nohostport", "udp:host:99999", "tcp::5060", "host:port"])
def test_bad_collectors_are_refused_in_one_line(text: str) -> None:
    with pytest.raises(SetupError, match="expected"):
        parse_collector(text)


def test_collectors_parse() -> None:
    assert parse_collector("tcp:[::1]:9060") == HepCollector(HepTransport.TCP, "::1", 9060)
    assert parse_collector("h.example:9060") == HepCollector(HepTransport.UDP, "h.example", 9060)


def test_udp_to_nobody_counts_and_never_raises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    collector = UdpCollector(HepCollector(HepTransport.UDP, "127.0.0.1", port))
    try:
        for _ in range(5):
            collector.send([b"HEP3\x00\x06"] * 3)
        s = collector.stats
        assert s.sent + s.dropped == 15 and s.errors >= 1  # ICMP port unreachable comes back as ECONNREFUSED
    finally:
        collector.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()


def read_all(conn: socket.socket, size: int) -> bytes:
    data = b""
    conn.settimeout(5)
    while len(data) < size:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_tcp_queues_within_its_bound_while_nobody_listens_then_delivers_in_order(
    listener: socket.socket
) -> None:
    port = listener.getsockname()[1]  # bound, not yet listening: connections are refused
    now = [0.0]
    collector = TcpCollector(HepCollector(HepTransport.TCP, "127.0.0.1", port), lambda: now[0],
                             max_queue_bytes=1000)
    packets = [bytes([n]) * 100 for n in range(15)]
    try:
        collector.send(packets)
        assert (collector.stats.queued, collector.stats.dropped, collector.stats.sent) == (10, 5, 0)
        assert collector.stats.errors == 1
        listener.listen()
        now[0] += 10  # past the reconnect backoff
        assert collector.flush(5) == 0
        conn, _ = listener.accept()
        with conn:
            assert read_all(conn, 1000) == b"".join(packets[:10])
        assert (collector.stats.sent, collector.stats.reconnects) == (10, 1)
    finally:
        collector.close()


def test_tcp_reconnects_after_the_collector_goes_away(listener: socket.socket) -> None:
    listener.listen()
    port = listener.getsockname()[1]
    now = [0.0]
    collector = TcpCollector(HepCollector(HepTransport.TCP, "127.0.0.1", port), lambda: now[0])
    try:
        collector.send([b"a" * 10])
        assert collector.flush(5) == 0
        first, _ = listener.accept()
        assert read_all(first, 10) == b"a" * 10
        first.close()
        deadline = time.monotonic() + 5
        while collector.stats.errors == 0 and time.monotonic() < deadline:
            collector.send([b"b" * 10])  # the first sends after the close fail and reconnect
            time.sleep(0.01)
        now[0] += 10
        collector.send([b"c" * 10])
        assert collector.flush(5) == 0
        second, _ = listener.accept()
        with second:
            tail = read_all(second, 10)
        assert tail.endswith(b"c" * 10) and collector.stats.reconnects == 1
    finally:
        collector.close()


@pytest.mark.parametrize("text", ["10.0.0.1:9060²", "10.0.0.1:٩٠٦٠", "10.0.0.1:", "10.0.0.1:0",
                                  "10.0.0.1:65536", ":9060", "udp:host"])
def test_a_bad_collector_is_a_one_line_error(text: str) -> None:
    with pytest.raises(SetupError, match="expected \\[udp:\\|tcp:\\]HOST:PORT"):
        parse_collector(text)


def test_a_collector_names_transport_host_and_port() -> None:
    assert parse_collector("tcp:[fd00::1]:9060") == HepCollector(HepTransport.TCP, "fd00::1", 9060)
