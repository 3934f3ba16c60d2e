"""HEPv3 (HEP3/EEP) for Homer and heplify-server: SIP messages, RTCP reports
and RTP quality reports, each as one HEP packet of chunks.

A packet is "HEP3", its total length (16 bits), then chunks of vendor id,
type id and length (16 bits each, the length counting the 6-byte chunk
header) followed by the value; all big-endian. The chunk types used here are
the generic ones (vendor 0) of the HEP3 specification. Payload types are the
ones Homer files: 1 SIP (the message as captured), 5 RTCP (the JSON Homer's
QoS view and heplify-server's RTCP metrics read: report_blocks[].
fraction_lost, packets_lost, ia_jitter, dlsr ...) and 34 RTP agent reports
(JSON with the keys heplify-server reads — MOS, JITTER, PACKET_LOSS, DELTA —
stored by it for Homer's QoS view beside the RTCP). Every one carries the
Call-ID as correlation id, which is how Homer joins them to the call. Call
summaries have no HEP form and are left out (counted).

This module only encodes; the sink that carries packets to collectors over
UDP or TCP is handed in (otus_ebpf.outputs.hep_transport).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Protocol

import orjson

from userspace.records import CallSummary, Record, RtcpRecord, SipRecord, StreamReport
from userspace.sdp import packed_literal
from userspace.tls import TLS, WSS
from userspace.websocket import WS

HEP_ID = b"HEP3"
MAX_PACKET = 65_535  # the 16-bit total length
_CHUNK = struct.Struct("!HHH")
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_HEADER = struct.Struct("!4sH")
# Room left for the payload after the header and the other chunks (at most
# ~300 bytes of them); the exact total is checked once the packet is built.
_MAX_PAYLOAD = MAX_PACKET - 1024


class Chunk(IntEnum):
    IP_FAMILY = 0x0001
    IP_PROTOCOL = 0x0002
    IPV4_SRC = 0x0003
    IPV4_DST = 0x0004
    IPV6_SRC = 0x0005
    IPV6_DST = 0x0006
    SRC_PORT = 0x0007
    DST_PORT = 0x0008
    TIME_SECONDS = 0x0009
    TIME_MICROSECONDS = 0x000A
    PROTOCOL_TYPE = 0x000B
    CAPTURE_ID = 0x000C
    AUTH_KEY = 0x000E
    PAYLOAD = 0x000F
    CORRELATION_ID = 0x0011
    VLAN = 0x0012        # one 16-bit id: the outer tag, as heplify sends it
    NODE_NAME = 0x0013


class PayloadType(IntEnum):
    SIP = 1
    RTCP_JSON = 5        # an RTCP SR/RR decoded to JSON (captagent and heplify send the same)
    RTP_AGENT_JSON = 34  # an RTP stream's quality, as RTP agents report it


FAMILY_IPV4 = 2   # AF_INET
FAMILY_IPV6 = 10  # AF_INET6 on Linux, which is what HEP uses
PROTO_UDP = 17
PROTO_TCP = 6
# Chunk 0x0002 is the IP protocol the message came in: SIP over WebSocket came in TCP,
# and heplify sends it so; Homer tells WS apart by the message's own Via (SIP/2.0/WS).
_HEP_PROTOCOL = {WS: PROTO_TCP, TLS: PROTO_TCP, WSS: PROTO_TCP}


@dataclass(frozen=True, slots=True)
class HepIdentity:
    """Who is sending: what Homer files the packets under."""

    capture_id: int = 2001
    auth_key: str | None = field(default=None, repr=False)  # a shared secret: kept out of logs
    node_name: str | None = None


class HepSink(Protocol):
    def send(self, packets: Sequence[bytes]) -> None:
        """Hand packets to every collector; never block; count what cannot go."""

    def flush(self, timeout: float) -> int:
        """Push out what is buffered; return how many packets are still unsent."""

    def close(self) -> None: ...


@dataclass(slots=True)
class HepStats:
    encoded: int = 0        # packets handed to the sink
    not_for_hep: int = 0    # call summaries: no HEP form
    unencodable: int = 0    # too large for a HEP packet, or no addresses


def _chunk(kind: Chunk, value: bytes) -> bytes:
    return _CHUNK.pack(0, kind, _CHUNK.size + len(value)) + value


@lru_cache(maxsize=4096)
def _address_chunks(src: bytes, dst: bytes) -> bytes:
    """Family, source and destination chunks of raw addresses; the same few endpoints recur."""
    if len(src) == 16:
        return (_chunk(Chunk.IP_FAMILY, _U8.pack(FAMILY_IPV6))
                + _chunk(Chunk.IPV6_SRC, src) + _chunk(Chunk.IPV6_DST, dst))
    return (_chunk(Chunk.IP_FAMILY, _U8.pack(FAMILY_IPV4))
            + _chunk(Chunk.IPV4_SRC, src) + _chunk(Chunk.IPV4_DST, dst))


def _identity_chunks(identity: HepIdentity) -> bytes:
    chunks = _chunk(Chunk.CAPTURE_ID, _U32.pack(identity.capture_id))
    if identity.auth_key:
        chunks += _chunk(Chunk.AUTH_KEY, identity.auth_key.encode())
    if identity.node_name:
        chunks += _chunk(Chunk.NODE_NAME, identity.node_name.encode())
    return chunks


def _packet(chunks: bytes) -> bytes:
    return _HEADER.pack(HEP_ID, _HEADER.size + len(chunks)) + chunks


class HepEncoder:
    def __init__(self, identity: HepIdentity) -> None:
        self._identity = _identity_chunks(identity)

    def sip(self, record: SipRecord) -> bytes | None:
        message = record.message
        protocol = _HEP_PROTOCOL.get(record.transport, record.transport)
        return self._encode(record.src, record.sport, record.dst, record.dport, protocol,
                            record.ts_ns, PayloadType.SIP, message.raw, message.call_id, record.vlans)

    def stream_report(self, record: StreamReport) -> bytes | None:
        report = record.report
        src, sport = report.get("src"), report.get("sport")
        dst, dport = report.get("dst"), report.get("dport")
        if not (isinstance(src, str) and isinstance(dst, str) and isinstance(sport, int)
                and isinstance(dport, int)):
            return None
        raw_src, raw_dst = packed_literal(src), packed_literal(dst)  # a report is printed already
        if raw_src is None or raw_dst is None or len(raw_src) != len(raw_dst):
            return None
        vlans = report.get("vlan")
        return self._encode(raw_src, sport, raw_dst, dport, PROTO_UDP, record.ts_ns,
                            PayloadType.RTP_AGENT_JSON, orjson.dumps(rtp_agent_report(record)),
                            record.call_id, tuple(vlans) if isinstance(vlans, list) else ())

    def rtcp(self, record: RtcpRecord) -> bytes | None:
        src, sport, dst, dport = record.flow
        return self._encode(src, sport, dst, dport, PROTO_UDP, record.ts_ns, PayloadType.RTCP_JSON,
                            orjson.dumps(record.report), record.call_id, record.origin.vlans)

    def _encode(self, src: bytes, sport: int, dst: bytes, dport: int, ip_protocol: int, ts_ns: int,
                payload_type: PayloadType, payload: bytes, correlation: str | None,
                vlans: tuple[int, ...]) -> bytes | None:
        if len(payload) > _MAX_PAYLOAD:
            return None
        seconds, nanos = divmod(ts_ns, 1_000_000_000)
        chunks = b"".join((
            _address_chunks(src, dst),
            _chunk(Chunk.IP_PROTOCOL, _U8.pack(ip_protocol)),
            _chunk(Chunk.SRC_PORT, _U16.pack(sport)),
            _chunk(Chunk.DST_PORT, _U16.pack(dport)),
            _chunk(Chunk.TIME_SECONDS, _U32.pack(seconds)),
            _chunk(Chunk.TIME_MICROSECONDS, _U32.pack(nanos // 1000)),
            _chunk(Chunk.PROTOCOL_TYPE, _U8.pack(payload_type)),
            self._identity,
            _chunk(Chunk.CORRELATION_ID, correlation.encode()) if correlation else b"",
            _chunk(Chunk.VLAN, _U16.pack(vlans[0])) if vlans else b"",
            _chunk(Chunk.PAYLOAD, payload),
        ))
        if _HEADER.size + len(chunks) > MAX_PACKET:
            return None
        return _packet(chunks)


class HepReporter:
    """Records in, HEP packets out to the sink; a batch is one ``send``."""

    def __init__(self, sink: HepSink, identity: HepIdentity) -> None:
        self._sink = sink
        self._encoder = HepEncoder(identity)
        self.stats = HepStats()

    def write(self, records: Sequence[Record]) -> None:
        packets = []
        for record in records:
            if isinstance(record, SipRecord):
                packet = self._encoder.sip(record)
            elif isinstance(record, StreamReport):
                packet = self._encoder.stream_report(record)
            elif isinstance(record, RtcpRecord):
                packet = self._encoder.rtcp(record)
            else:
                assert isinstance(record, CallSummary)
                self.stats.not_for_hep += 1
                continue
            if packet is None:
                self.stats.unencodable += 1
            else:
                packets.append(packet)
        if packets:
            self.stats.encoded += len(packets)
            self._sink.send(packets)

    def detail(self) -> str:
        s = self.stats
        return f"sent={s.encoded} not_for_hep={s.not_for_hep} unencodable={s.unencodable}"

    def flush(self, timeout: float) -> int:
        return self._sink.flush(timeout)

    def close(self) -> None:
        self._sink.close()


def rtp_agent_report(record: StreamReport) -> dict[str, object]:
    """A stream report in the keys RTP agents send and heplify-server reads (its
    metric/definition.go rtpPaths: DELTA, JITTER, MOS, PACKET_LOSS); a value the
    stream has not got (no audio: no MOS) is left out, not sent as null."""
    r = record.report
    packets = r.get("packets")
    duration = r.get("duration_ms")
    delta = (duration / (packets - 1) if isinstance(duration, float) and isinstance(packets, int)
             and packets > 1 else None)
    fields = {
        "CORRELATION_ID": record.call_id, "RTP_SIP_CALL_ID": record.call_id,
        "TYPE": "HANGUP" if record.final else "PERIODIC",
        "REPORT_TS": record.ts_ns / 1e9,
        "SRC_IP": r.get("src"), "SRC_PORT": r.get("sport"),
        "DST_IP": r.get("dst"), "DST_PORT": r.get("dport"),
        "SSRC": r.get("ssrc"), "CODEC_PT": r.get("payload_type"), "CODEC_NAME": r.get("codec"),
        "TOTAL_PK": packets, "EXPECTED_PK": r.get("expected"), "PACKET_LOSS": r.get("lost"),
        "JITTER": r.get("jitter_ms"), "DELTA": None if delta is None else round(delta, 3),
        "MOS": r.get("mos"), "DTMF_EVENTS": r.get("dtmf_events"),
    }
    return {key: value for key, value in fields.items() if value is not None}


def decode_packet(packet: bytes) -> dict[int, bytes]:
    """Chunk type -> value of one HEP3 packet (the last of a repeated type).
    For tests and tools; raises ValueError on anything that is not HEP3."""
    if len(packet) < _HEADER.size:
        raise ValueError("shorter than a HEP3 header")
    magic, total = _HEADER.unpack_from(packet)
    if magic != HEP_ID or total != len(packet):
        raise ValueError(f"not a whole HEP3 packet ({magic!r}, length {total} of {len(packet)})")
    chunks, offset = {}, _HEADER.size
    while offset < total:
        if offset + _CHUNK.size > total:
            raise ValueError(f"truncated chunk header at {offset}")
        _vendor, kind, length = _CHUNK.unpack_from(packet, offset)
        if length < _CHUNK.size or offset + length > total:
            raise ValueError(f"bad chunk length {length} at {offset}")
        chunks[kind] = packet[offset + _CHUNK.size:offset + length]
        offset += length
    return chunks
