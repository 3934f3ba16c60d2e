"""Records the pipeline emits and their JSON encoding (schema version 2).

Every record says where it was captured: ``interface``, ``vlan`` (the
802.1Q/QinQ ids in the frame, outer first) and ``encap`` (the tunnel it came
in, null for none). Version 2 added those, the parties (``from_user``,
``from_display``, ``to_user``, ``ruri_user``, ``user_agent``), the per
payload type breakdown of RTP streams and the ``rtcp`` kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import orjson

from userspace.event import Direction
from userspace.frame import FlowKey, IPProto, address_text
from userspace.sip import SipMessage
from userspace.tls import TLS, WSS, Process
from userspace.tunnel import Encap
from userspace.websocket import WS

RECORD_SCHEMA_VERSION = 2
_TRANSPORT_NAMES: dict[int, str] = {IPProto.UDP: "udp", IPProto.TCP: "tcp", WS: "ws", TLS: "tls", WSS: "wss"}
_DIRECTION_NAMES: dict[int, str] = {Direction.INGRESS: "ingress", Direction.EGRESS: "egress"}


@dataclass(slots=True)
class Frame:
    """One captured frame and what the capture knows about it."""

    ts_ns: int              # wall clock
    data: bytes             # as captured (up to the snaplen)
    orig_len: int
    interface: str
    direction: int  # a Direction
    call_id: str | None = None  # set once a SIP message or a learned media flow ties it to a call


@dataclass(slots=True)
class SipRecord:
    """One SIP message seen on an interface. Treat it as immutable; not
    ``frozen`` for the same measured reason as ``SipMessage``."""

    ts_ns: int  # wall clock, nanoseconds since the epoch
    interface: str
    direction: int  # a Direction
    transport: int  # an IPProto, WS (SIP over WebSocket), or TLS / WSS (read in TLS: userspace.tls)
    src: bytes  # raw addresses, printed when the record is encoded
    sport: int
    dst: bytes
    dport: int
    message: SipMessage
    fragments: int = 1  # IP fragments the message was reassembled from
    shard: int = 0  # the ring it came from: the worker that owns its dialog (not serialised)
    vlans: tuple[int, ...] = ()  # 802.1Q ids in the frame, outer first
    encap: Encap | None = None   # the tunnel it came in (one level), None for none
    process: Process | None = None  # read as TLS plaintext at this local process (userspace.tls)
    labels: dict[str, str] | None = None  # set by the label processor (userspace.processors)
    encoded: bytes | None = field(default=None, repr=False, compare=False)  # its JSON, once (encode_json)
    kind: ClassVar[str] = "sip"

    @property
    def key(self) -> bytes:
        """Partitioning key: all messages of a call share it."""
        return self.message.call_id.encode()

    @property
    def flow_key(self) -> bytes:
        """The conversation, the same both ways: lower endpoint first."""
        return _flow_key(address_text(self.src), self.sport, address_text(self.dst), self.dport)

    def to_dict(self) -> dict[str, object]:
        m = self.message
        return {
            "schema": RECORD_SCHEMA_VERSION,
            "kind": "sip",
            "ts_ns": self.ts_ns,
            "interface": self.interface,
            "vlan": list(self.vlans),
            "encap": None if self.encap is None else _encap_fields(self.encap),
            "process": None if self.process is None else {"pid": self.process.pid, "comm": self.process.comm},
            "direction": _DIRECTION_NAMES[self.direction],
            "transport": _TRANSPORT_NAMES[self.transport],
            "src": address_text(self.src),
            "sport": self.sport,
            "dst": address_text(self.dst),
            "dport": self.dport,
            "method": m.method,
            "request_uri": m.request_uri,
            "status": m.status,
            "reason": m.reason,
            "call_id": m.call_id,
            "cseq": m.cseq,
            "cseq_method": m.cseq_method,
            "from_tag": m.from_tag,
            "to_tag": m.to_tag,
            "via_branch": m.via_branch,
            "from_user": m.from_user,
            "from_display": m.from_display,
            "to_user": m.to_user,
            "ruri_user": m.ruri_user,
            "user_agent": m.user_agent,
            "size": m.size,
            "content_length": m.content_length,
            "fragments": self.fragments,
            **_labels(self.labels),
        }


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record's packets were captured."""

    interface: str
    vlans: tuple[int, ...] = ()
    encap: Encap | None = None

    def fields(self) -> dict[str, object]:
        return {"interface": self.interface, "vlan": list(self.vlans),
                "encap": None if self.encap is None else _encap_fields(self.encap)}


@dataclass(frozen=True, slots=True)
class Parties:
    """Who a call is from and to, as its INVITE said."""

    from_user: str | None = None
    from_display: str | None = None
    to_user: str | None = None
    ruri_user: str | None = None
    user_agent: str | None = None

    @classmethod
    def of(cls, message: SipMessage) -> Parties:
        m = message
        return cls(m.from_user, m.from_display, m.to_user, m.ruri_user, m.user_agent)

    def fields(self) -> dict[str, object]:
        return {"from_user": self.from_user, "from_display": self.from_display, "to_user": self.to_user,
                "ruri_user": self.ruri_user, "user_agent": self.user_agent}


NO_ORIGIN = Origin("")
NO_PARTIES = Parties()


@dataclass(slots=True)
class CallSummary:
    """One call, emitted when it ends (BYE, rejection, CANCEL) or expires."""

    call_id: str
    caller: bytes  # the INVITE's raw source and destination addresses
    callee: bytes
    from_tag: str | None
    to_tag: str | None
    invite_ns: int                 # wall clock, like every ts_ns
    ringing_ns: int | None
    answer_ns: int | None
    end_ns: int | None
    final_status: int | None
    final_reason: str | None
    end_cause: str                 # bye, rejected, cancelled, timeout, evicted, capture-stopped
    media: tuple[dict[str, object], ...] = ()
    streams: tuple[dict[str, object], ...] = ()  # final RTP stream reports
    parties: Parties | None = None  # who, from the INVITE
    origin: Origin | None = None    # where the INVITE was captured
    labels: dict[str, str] | None = None
    encoded: bytes | None = field(default=None, repr=False, compare=False)  # its JSON, once (encode_json)
    kind: ClassVar[str] = "call"

    @property
    def key(self) -> bytes:
        return self.call_id.encode()

    @property
    def flow_key(self) -> bytes:
        return self.key  # a call has many flows; keep it with its messages' key

    def to_dict(self) -> dict[str, object]:
        def since_invite(ns: int | None) -> float | None:
            return None if ns is None else round((ns - self.invite_ns) / 1e6, 3)

        duration = None
        if self.answer_ns is not None and self.end_ns is not None:
            duration = round((self.end_ns - self.answer_ns) / 1e6, 3)
        return {
            "schema": RECORD_SCHEMA_VERSION,
            "kind": "call",
            "ts_ns": self.end_ns if self.end_ns is not None else self.invite_ns,
            **(self.origin or NO_ORIGIN).fields(),
            "call_id": self.call_id,
            "caller": address_text(self.caller),
            "callee": address_text(self.callee),
            **(self.parties or NO_PARTIES).fields(),
            "from_tag": self.from_tag,
            "to_tag": self.to_tag,
            "invite_ns": self.invite_ns,
            "setup_ms": since_invite(self.ringing_ns),   # INVITE to first 180/183: post-dial delay
            "answer_ms": since_invite(self.answer_ns),   # INVITE to 2xx
            "duration_ms": duration,                     # 2xx to BYE
            "final_status": self.final_status,
            "final_reason": self.final_reason,
            "end_cause": self.end_cause,
            "media": list(self.media),
            "streams": list(self.streams),
            **_labels(self.labels),
        }


@dataclass(slots=True)
class StreamReport:
    """A report of one RTP stream: every report interval during its call, and a
    final one (``final``) when the call ends."""

    ts_ns: int
    call_id: str | None
    report: dict[str, object]
    final: bool = False
    labels: dict[str, str] | None = None
    encoded: bytes | None = field(default=None, repr=False, compare=False)  # its JSON, once (encode_json)
    kind: ClassVar[str] = "rtp"

    @property
    def key(self) -> bytes:
        return (self.call_id or "").encode()

    @property
    def flow_key(self) -> bytes:
        r = self.report
        return _flow_key(str(r.get("src")), r.get("sport"), str(r.get("dst")), r.get("dport"))

    def to_dict(self) -> dict[str, object]:
        return {"schema": RECORD_SCHEMA_VERSION, "kind": "rtp", "ts_ns": self.ts_ns,
                "call_id": self.call_id, "final": self.final, **self.report, **_labels(self.labels)}


@dataclass(slots=True)
class RtcpRecord:
    """One RTCP sender or receiver report seen on a learned media flow, in the form
    Homer stores (HEP payload type 5)."""

    ts_ns: int
    call_id: str | None
    origin: Origin
    flow: FlowKey                    # raw src, sport, raw dst, dport
    report: dict[str, object]        # userspace.rtcp.RtcpReport.homer_json()
    labels: dict[str, str] | None = None
    encoded: bytes | None = field(default=None, repr=False, compare=False)  # its JSON, once (encode_json)
    kind: ClassVar[str] = "rtcp"

    @property
    def key(self) -> bytes:
        return (self.call_id or "").encode()

    @property
    def flow_key(self) -> bytes:
        src, sport, dst, dport = self.flow
        return _flow_key(address_text(src), sport, address_text(dst), dport)

    def to_dict(self) -> dict[str, object]:
        src, sport, dst, dport = self.flow
        return {"schema": RECORD_SCHEMA_VERSION, "kind": "rtcp", "ts_ns": self.ts_ns, **self.origin.fields(),
                "call_id": self.call_id, "src": address_text(src), "sport": sport, "dst": address_text(dst),
                "dport": dport,
                **self.report, **_labels(self.labels)}


Record = SipRecord | CallSummary | StreamReport | RtcpRecord
RECORD_KINDS = (SipRecord.kind, CallSummary.kind, StreamReport.kind, RtcpRecord.kind)


def _labels(labels: dict[str, str] | None) -> dict[str, object]:
    """``labels`` only on the records that have some: no key for the rest."""
    return {"labels": labels} if labels else {}


def _encap_fields(encap: Encap) -> dict[str, object]:
    """A tunnel as records show it: its kind, its id (VNI, GRE key, ERSPAN session; null
    without one) and the outer addresses."""
    return {"kind": encap.kind.value, "id": encap.id, "src": address_text(encap.src),
            "dst": address_text(encap.dst)}


def _flow_key(src: str, sport: object, dst: str, dport: object) -> bytes:
    a, b = f"{src}:{sport}", f"{dst}:{dport}"
    return f"{a}-{b}".encode() if a <= b else f"{b}-{a}".encode()


def encode_json(record: Record) -> bytes:
    """Compact UTF-8 JSON, the same bytes json.dumps(separators=(",", ":"),
    ensure_ascii=False) gives, 13x faster; encoded once, whichever output asks first,
    and the same bytes handed to every other (two threads asking at once both
    encode, and keep equal bytes: no lock on the per-record path)."""
    data = record.encoded
    if data is None:
        # A copy of exact size: orjson's bytes sit in a block sized for its buffer
        # (16 kB for a 600-byte record), which a kept record would hold on to.
        data = record.encoded = bytes(memoryview(orjson.dumps(record.to_dict())))
    return data
