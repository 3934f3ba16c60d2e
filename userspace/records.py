"""Records the pipeline emits and their JSON encoding (schema version 1)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from userspace.decode import IPProto
from userspace.event import Direction
from userspace.sip import SipMessage

RECORD_SCHEMA_VERSION = 1
_TRANSPORT_NAMES = {IPProto.UDP: "udp", IPProto.TCP: "tcp"}
_DIRECTION_NAMES = {Direction.INGRESS: "ingress", Direction.EGRESS: "egress"}


@dataclass(slots=True)
class SipRecord:
    """One SIP message seen on an interface. Treat it as immutable; not
    ``frozen`` for the same measured reason as ``SipMessage``."""

    ts_ns: int  # wall clock, nanoseconds since the epoch
    interface: str
    direction: Direction
    transport: IPProto
    src: str
    sport: int
    dst: str
    dport: int
    message: SipMessage
    fragments: int = 1  # IP fragments the message was reassembled from

    @property
    def key(self) -> bytes:
        """Partitioning key: all messages of a call share it."""
        return self.message.call_id.encode()

    def to_dict(self) -> dict[str, object]:
        m = self.message
        return {
            "schema": RECORD_SCHEMA_VERSION,
            "kind": "sip",
            "ts_ns": self.ts_ns,
            "interface": self.interface,
            "direction": _DIRECTION_NAMES[self.direction],
            "transport": _TRANSPORT_NAMES[self.transport],
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
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
            "size": m.size,
            "content_length": m.content_length,
            "fragments": self.fragments,
        }


def encode_json(record: SipRecord) -> bytes:
    return json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
