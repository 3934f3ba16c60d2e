"""SDP (RFC 8866, formerly 4566): what a dialog needs to find its media.

``parse_sdp(body)`` returns the media streams with their RTP and RTCP
endpoints: the connection address at session or media level (a media-level
c= wins), IPv4 or IPv6, ``a=rtcp`` (RFC 3605) or RTP port + 1, ``a=rtcp-mux``
(RFC 5761: RTCP on the RTP port), port 0 for a disabled stream, and codecs
from ``a=rtpmap`` (static payload types from RFC 3551 when no rtpmap).

Only a broken structure (no usable c= line, a malformed m= line) rejects the
whole description. A stream whose values cannot be used is kept, marked with
what is wrong (``SdpProblem``), and learns only what is sound: a connection
address that is a host name (RFC 8866 §5.7 allows FQDNs) is recorded as
given and learns no media, since the capture path does no DNS; a port out of
1..65535, an RTCP port past 65535 and an absurd clock rate are refused.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from enum import Enum

from userspace.errors import Malformed
from userspace.frame import address_text
from userspace.numbers import ascii_int

# RFC 3551 §6: static payload types commonly seen without an rtpmap.
STATIC_PAYLOAD_TYPES = {0: "PCMU/8000", 3: "GSM/8000", 4: "G723/8000", 8: "PCMA/8000", 9: "G722/8000",
                        18: "G729/8000", 13: "CN/8000"}
# More m= lines than this is not a call but an attack on the parser; a
# call's own cap on streams (CallLimits) is lower and counted there.
MAX_MEDIA = 64
MAX_PORT = 65_535
MAX_PAYLOAD_TYPE = 127  # RFC 3550 §5.1: seven bits
DEFAULT_CLOCK_RATE = 8000  # RFC 3551: the clock of every static audio type but G722's nominal one
# RFC 3551 lists 8 kHz to 90 kHz; anything outside a generous margin of that
# is a mistake or an attack (a clock of 0 divides by zero in jitter).
MIN_CLOCK_RATE, MAX_CLOCK_RATE = 1_000, 1_000_000
MAX_ADDRESS_TEXT = 255  # an FQDN is at most 253 characters (RFC 1035)


class SdpProblem(Enum):
    UNLEARNABLE = "unlearnable"  # a host name or an unspecified address: no endpoint to learn
    BAD_PORT = "bad_port"        # m= or a=rtcp port outside 1..65535, or RTCP (port + 1) past it
    BAD_CLOCK = "bad_clock"      # an rtpmap clock rate outside MIN..MAX_CLOCK_RATE


@dataclass(slots=True)
class MediaStream:
    """One m= section. Treat it as immutable; not ``frozen``, whose ``__init__``
    costs a microsecond more per stream (userspace.sip says why that matters)."""

    media: str                 # audio, video, ...
    address: str               # canonical IP literal, or the text given (see ``learnable``)
    port: int                  # 0: disabled (or refused: see ``problems``)
    rtcp_address: str
    rtcp_port: int | None      # None: no RTCP endpoint to learn
    rtcp_mux: bool
    protocol: str              # RTP/AVP, RTP/SAVP, ...
    codecs: tuple[tuple[int, str], ...]  # (payload type, "encoding/clock")
    clock_rate: int = DEFAULT_CLOCK_RATE  # the first codec's, when it is sound
    problems: tuple[SdpProblem, ...] = ()
    raw_address: bytes = b""       # the RTP address as packets carry it; b"": nothing to learn
    rtcp_raw_address: bytes = b""

    @property
    def learnable(self) -> bool:
        """The RTP address is an IP literal worth learning (not a host name, not 0.0.0.0)."""
        return bool(self.raw_address)

    @property
    def rtcp_learnable(self) -> bool:
        return bool(self.rtcp_raw_address)

    @property
    def enabled(self) -> bool:
        return self.port != 0


@dataclass(frozen=True, slots=True)
class Sdp:
    session_address: str | None
    media: tuple[MediaStream, ...]


def parse_sdp(body: bytes) -> Sdp:
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
    session: _Address | None = None
    for kind, value in blocks[0]:
        if kind == "c":
            session = _connection_address(value)
    return Sdp(session[0] if session else None, tuple(_media(block, session) for block in blocks[1:]))


# Canonical text, and the raw address when it is an IP literal worth learning (else b"").
_Address = tuple[str, bytes]


def _connection_address(value: str) -> _Address:
    # c=<nettype> <addrtype> <connection-address>[/ttl][/count]
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise Malformed("sdp", 0, f"bad c= line {value[:60]!r}")
    return _address(parts[2].split("/", 1)[0])


def _address(text: str) -> _Address:
    raw = packed_literal(text)
    if raw is None:
        return text[:MAX_ADDRESS_TEXT], b""
    return address_text(raw), (b"" if raw in _UNSPECIFIED else raw)


def packed_literal(text: str) -> bytes | None:
    """The raw address of an IP literal, as packets carry them (userspace.frame), so
    the two compare equal; None for anything else. inet_pton is strict (no leading
    zeros, no Unicode digits) and costs a sixth of ipaddress.ip_address: every SDP
    c= line comes through here."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, text)
        except (OSError, ValueError):  # ValueError: an embedded NUL
            continue
    return None


# 0.0.0.0 and :: (RFC 3264 §8.4: the old way to put a stream on hold): nothing to learn.
_UNSPECIFIED = frozenset((bytes(4), bytes(16)))


@dataclass(slots=True)
class _Attributes:
    address: _Address | None
    rtcp_port: int | None = None
    rtcp_address: _Address | None = None
    rtcp_mux: bool = False
    bad_rtcp: bool = False


def _media(block: list[tuple[str, str]], session_address: _Address | None) -> MediaStream:
    fields = block[0][1].split()
    if len(fields) < 3:
        raise Malformed("sdp", 0, f"bad m= line {block[0][1][:60]!r}")
    problems: list[SdpProblem] = []
    port = ascii_int(fields[1].split("/", 1)[0], max_digits=5)
    if port is None or port > MAX_PORT:
        problems.append(SdpProblem.BAD_PORT)
        port = 0  # refused: nothing of this stream is learned
    rtpmap: dict[int, str] = {}
    attributes = _attributes(block[1:], session_address, rtpmap)
    if attributes.address is None:
        raise Malformed("sdp", 0, "media without a connection address")
    address, raw = attributes.address
    # ASCII digits only (userspace.numbers), inline: a few per stream of every SDP.
    payload_types = [pt for f in fields[3:] if len(f) <= 3 and f.isascii() and f.isdigit()
                     and (pt := int(f)) <= MAX_PAYLOAD_TYPE]
    codecs = tuple((pt, rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt, "unknown")) for pt in payload_types)
    clock_rate, clock_sound = _clock_rate(codecs)
    if not clock_sound:
        problems.append(SdpProblem.BAD_CLOCK)
    rtcp_port = _rtcp_port(port, attributes)
    if attributes.bad_rtcp or (port and rtcp_port is None):
        problems.append(SdpProblem.BAD_PORT)
    rtcp_address, rtcp_raw = attributes.rtcp_address or attributes.address
    if port and not (raw and rtcp_raw):
        problems.append(SdpProblem.UNLEARNABLE)
    return MediaStream(fields[0], address, port, rtcp_address, rtcp_port, attributes.rtcp_mux, fields[2],
                       codecs, clock_rate, tuple(dict.fromkeys(problems)) if problems else (), raw, rtcp_raw)


def _attributes(lines: list[tuple[str, str]], session_address: _Address | None,
                rtpmap: dict[int, str]) -> _Attributes:
    found = _Attributes(session_address)
    for kind, value in lines:
        if kind == "c":
            found.address = _connection_address(value)
        elif kind == "a":
            name, _, rest = value.partition(":")
            if name == "rtcp-mux":
                found.rtcp_mux = True
            elif name == "rtcp":
                _rtcp_attribute(rest, found)
            elif name == "rtpmap":
                pt_text, _, codec = rest.partition(" ")
                if len(pt_text) <= 3 and pt_text.isascii() and pt_text.isdigit() \
                        and int(pt_text) <= MAX_PAYLOAD_TYPE:
                    rtpmap[int(pt_text)] = codec.strip()[:64]
    return found


def _rtcp_attribute(value: str, found: _Attributes) -> None:
    # a=rtcp:<port> [<nettype> <addrtype> <connection-address>] (RFC 3605 §2.1)
    parts = value.split()
    port = ascii_int(parts[0], max_digits=5) if parts else None
    if port is None or not 0 < port <= MAX_PORT:
        found.bad_rtcp = True
        return
    found.rtcp_port = port
    if len(parts) >= 4:
        found.rtcp_address = _address(parts[3])


def _rtcp_port(port: int, attributes: _Attributes) -> int | None:
    if not port:
        return None
    if attributes.rtcp_mux:
        return port  # RFC 5761: RTCP shares the RTP port
    if attributes.bad_rtcp:
        return None  # it says where RTCP goes, unreadably: port + 1 would be a guess
    if attributes.rtcp_port is not None:
        return attributes.rtcp_port
    return port + 1 if port < MAX_PORT else None  # RFC 3550 §11: the next (odd) port


def _clock_rate(codecs: tuple[tuple[int, str], ...]) -> tuple[int, bool]:
    """The first codec's clock rate (the default when none says), and whether
    every clock rate given is sound."""
    rate: int | None = None
    sound = True
    for _pt, codec in codecs:
        parts = codec.split("/")
        if len(parts) < 2:
            continue
        text = parts[1]
        clock = int(text) if len(text) <= 7 and text.isascii() and text.isdigit() else 0
        if not MIN_CLOCK_RATE <= clock <= MAX_CLOCK_RATE:
            sound = False
        elif rate is None:
            rate = clock
    return (rate if rate is not None else DEFAULT_CLOCK_RATE), sound
