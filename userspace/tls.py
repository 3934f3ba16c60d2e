"""SIP over TLS, read as plaintext at a local process's TLS library (bpf/otus_tls.c).

The kernel sends one chunk per library call that moved data on a connection to
or from a TLS SIP port: a ``struct otus_tls`` (mirrored by ``TLS_FIELDS``; the
contract test holds them equal) and the plaintext. Each chunk carries the byte
offset of the stream it continues, per process, connection and direction, so
the chunks of one direction are a TCP-like byte stream: the pipeline feeds them
to the same stream reassembly and SIP framing as SIP over TCP, with the offset
for a sequence number, and a chunk the ring lost is a gap there.

Sans-IO: bytes in, ``Chunk`` out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from userspace.errors import Malformed, Truncated
from userspace.event import StructFields, struct_format

# The record's transports for SIP read inside TLS: bytes beside UDP (17), TCP (6) and
# WS (255, userspace.websocket), as they cross worker processes in a hand-off.
TLS = 254
WSS = 253  # SIP over WebSocket inside TLS (RFC 7118 "wss")

TLS_DATA = 16_384  # plaintext bytes copied from one call at most (OTUS_TLS_DATA)


class TlsCall(IntEnum):
    """The library function that moved the bytes (OTUS_TLS_CALL_*)."""

    WRITE = 1
    READ = 2
    WRITE_EX = 3
    READ_EX = 4


class TlsCounter(IntEnum):
    """The kernel's TLS counters: indexes into ``struct otus_tls_counters.counts``."""

    CALLS = 0          # library calls that moved plaintext
    SUBMITTED = 1      # chunks sent up
    SUBMIT_FAILED = 2  # a full ring: the chunk lost (a gap in its stream)
    CUT = 3            # more than TLS_DATA bytes in one call: the rest not copied
    READ_FAILED = 4    # the process's buffer could not be read
    UNPAIRED = 5       # no TCP connection known for the session yet
    OTHER_PORT = 6     # a connection on no TLS SIP port: not sent up
    UNTRACKED = 7      # a call's entry lost to a full map: its bytes missing from its stream
    MAX = 8


# (name, C type, array length or 0) in struct order: struct otus_tls.
TLS_FIELDS: StructFields = (
    ("offset", "__u64", 0),
    ("pid", "__u32", 0),
    ("tid", "__u32", 0),
    ("comm", "__u8", 16),
    ("saddr", "__u8", 16),
    ("daddr", "__u8", 16),
    ("sport", "__u16", 0),
    ("dport", "__u16", 0),
    ("family", "__u8", 0),
    ("call", "__u8", 0),
    ("pad", "__u8", 2),
)
TLS_COUNTERS_FIELDS: StructFields = (("counts", "__u64", TlsCounter.MAX),)
TLS_HEADER = struct.Struct(struct_format(TLS_FIELDS))
_IPV4_MAPPED = bytes(10) + b"\xff\xff"


@dataclass(frozen=True, slots=True)
class Process:
    """The local process whose TLS library the plaintext was read at."""

    pid: int
    comm: str


@dataclass(slots=True)
class Chunk:
    """The plaintext one TLS library call moved, and where it belongs."""

    offset: int    # of data[0] in its direction's stream
    moved: int     # bytes the call moved (more than len(data) when cut)
    process: Process
    src: bytes     # raw addresses of the sender and receiver; IPv4-mapped ones as IPv4
    sport: int
    dst: bytes
    dport: int
    data: bytes

    @property
    def stream_tag(self) -> bytes:
        """What keys its stream apart from wire streams of the same 4-tuple, and from
        another local process's view of the same connection (its peer, also probed)."""
        return b"tls" + self.process.pid.to_bytes(4, "big")


def decode_chunk(record: bytes, payload_offset: int, moved: int) -> Chunk:
    """A TLS event's bytes (after the event header): its ``struct otus_tls``, then the
    plaintext from ``payload_offset``; ``moved``: the event's orig_len."""
    if len(record) < TLS_HEADER.size:
        raise Truncated("tls", 0, f"{len(record)} bytes, header needs {TLS_HEADER.size}")
    if payload_offset != TLS_HEADER.size:
        raise Malformed("tls", 0, f"plaintext at {payload_offset}, header is {TLS_HEADER.size}")
    offset, pid, _tid, comm, saddr, daddr, sport, dport, family, call = TLS_HEADER.unpack_from(record)
    if family not in (4, 6) or not TlsCall.WRITE <= call <= TlsCall.READ_EX:
        raise Malformed("tls", 68, f"family {family}, call {call}")
    data = record[TLS_HEADER.size:]
    if len(data) > moved:
        raise Malformed("tls", TLS_HEADER.size, f"{len(data)} bytes of a call that moved {moved}")
    if family == 4:
        src, dst = saddr[:4], daddr[:4]
    elif saddr.startswith(_IPV4_MAPPED) and daddr.startswith(_IPV4_MAPPED):
        src, dst = saddr[12:], daddr[12:]  # an IPv6 socket's IPv4 peer: IPv4 on the wire
    else:
        src, dst = saddr, daddr
    name = comm.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")  # the same name every time
    return Chunk(offset, moved, Process(pid, name), src, sport, dst, dport, data)
