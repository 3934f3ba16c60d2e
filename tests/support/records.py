"""Many distinct SIP records, cheaply: one parsed 200 OK, copied with a new
Call-ID and CSeq each, for reporter tests and benchmarks."""

from __future__ import annotations

from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.sip_samples import OK_200
from userspace.pipeline import Pipeline
from userspace.records import SipRecord


def numbered_sip_records(count: int, calls: int) -> list[SipRecord]:
    """``count`` records over ``calls`` Call-IDs (call-N); record n has CSeq n."""
    (template,) = [r for r in Pipeline({}, 0).process([ring_record(ethernet(ipv4(udp(OK_200))))])
                   if isinstance(r, SipRecord)]
    fields = template.message.__dataclass_fields__
    records = []
    for n in range(count):
        message = type(template.message)(**{f: getattr(template.message, f) for f in fields})
        message.call_id = f"call-{n % calls}"
        message.cseq = n
        records.append(SipRecord(n, template.interface, template.direction, template.transport, template.src,
                                 template.sport, template.dst, template.dport, message))
    return records
