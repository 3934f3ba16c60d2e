"""SDP (RFC 8866, formerly 4566): what a dialog needs to find its media.

``parse_sdp(body)`` returns the media streams with their RTP and RTCP
endpoints: the connection address at session or media level (a media-level
c= wins), IPv4 or IPv6, ``a=rtcp`` (RFC 3605) or RTP port + 1, ``a=rtcp-mux``
(RFC 5761: RTCP on the RTP port), port 0 for a disabled stream, and codecs
from ``a=rtpmap`` (static payload types from RFC 3551 when no rtpmap).
"""

from __future__ import annotations

from dataclasses import dataclass

from userspace.errors import Malformed

# RFC 3551 §6: static payload types commonly seen without an rtpmap.
STATIC_PAYLOAD_TYPES = {0: "PCMU/8000", 3: "GSM/8000", 4: "G723/8000", 8: "PCMA/8000", 9: "G722/8000",
                        18: "G729/8000", 13: "CN/8000"}
MAX_MEDIA = 16  # more m= lines than this is not a phone call


@dataclass(frozen=True, slots=True)
class MediaStream:
    media: str                 # audio, video, ...
    address: str
    port: int                  # 0: disabled
    rtcp_address: str
    rtcp_port: int
    rtcp_mux: bool
    protocol: str              # RTP/AVP, RTP/SAVP, ...
    codecs: tuple[tuple[int, str], ...]  # (payload type, "encoding/clock")

    @property
    def enabled(self) -> bool:
        return self.port != 0

    @property
    def clock_rate(self) -> int:
        """The first codec's RTP clock rate (8000 if unknown)."""
        for _pt, codec in self.codecs:
            parts = codec.split("/")
            if len(parts) > 1 and parts[1].isdigit():
                return int(parts[1])
        return 8000


@dataclass(frozen=True, slots=True)
class Sdp:
    session_address: str | None
    media: tuple[MediaStream, ...]


def parse_sdp(body: bytes) -> Sdp:
    session_address: str | None = None
    blocks: list[list[tuple[str, str]]] = [[]]
    for raw in body.decode("utf-8", errors="replace").splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue  # RFC 8866 §5: lines are <type>=<value>; ignore what is not
        kind, value = line[0], line[2:]
        if kind == "m":
            if len(blocks) > MAX_MEDIA:
                raise Malformed("sdp", 0, f"more than {MAX_MEDIA} media descriptions")
            blocks.append([])
        blocks[-1].append((kind, value))
    for kind, value in blocks[0]:
        if kind == "c":
            session_address = _connection_address(value)
    return Sdp(session_address, tuple(_media(block, session_address) for block in blocks[1:]))


def _connection_address(value: str) -> str:
    # c=<nettype> <addrtype> <connection-address>[/ttl][/count]
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise Malformed("sdp", 0, f"bad c= line {value[:60]!r}")
    return parts[2].split("/", 1)[0]


def _media(block: list[tuple[str, str]], session_address: str | None) -> MediaStream:
    fields = block[0][1].split()
    if len(fields) < 3 or not fields[1].split("/", 1)[0].isdigit():
        raise Malformed("sdp", 0, f"bad m= line {block[0][1][:60]!r}")
    media, port, protocol = fields[0], int(fields[1].split("/", 1)[0]), fields[2]
    if port > 65535:
        raise Malformed("sdp", 0, f"port {port} out of range")
    address = session_address
    rtcp_port, rtcp_address, rtcp_mux = None, None, False
    rtpmap: dict[int, str] = {}
    for kind, value in block[1:]:
        if kind == "c":
            address = _connection_address(value)
        elif kind == "a":
            name, _, rest = value.partition(":")
            if name == "rtcp-mux":
                rtcp_mux = True
            elif name == "rtcp":
                rtcp_port, rtcp_address = _rtcp_attribute(rest)
            elif name == "rtpmap":
                pt, _, codec = rest.partition(" ")
                if pt.isdigit():
                    rtpmap[int(pt)] = codec.strip()
    if address is None:
        raise Malformed("sdp", 0, "media without a connection address")
    payload_types = [int(f) for f in fields[3:] if f.isdigit()]
    codecs = tuple((pt, rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt, "unknown")) for pt in payload_types)
    if rtcp_mux:
        rtcp_port = port
    return MediaStream(media, address, port, rtcp_address or address,
                       rtcp_port if rtcp_port is not None else (port + 1 if port else 0),
                       rtcp_mux, protocol, codecs)


def _rtcp_attribute(value: str) -> tuple[int, str | None]:
    # a=rtcp:<port> [<nettype> <addrtype> <connection-address>] (RFC 3605 §2.1)
    parts = value.split()
    if not parts or not parts[0].isdigit() or int(parts[0]) > 65535:
        raise Malformed("sdp", 0, f"bad a=rtcp {value[:40]!r}")
    address = parts[3] if len(parts) >= 4 and parts[0] else None
    return int(parts[0]), address
