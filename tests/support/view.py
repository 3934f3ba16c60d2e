"""Calls for the live view's tests, run through the real pipeline: SIP dialogs
with RTP both ways (one direction lossy), rejected calls, a retransmitted
INVITE and an OPTIONS ping, giving the records an agent's outputs would get."""

from __future__ import annotations

from collections.abc import Sequence

from tests.support import calls
from tests.support.calls import OFFERED, PCMA, Dialog, Party, Stream
from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.sip_samples import request, response
from userspace.event import Kind
from userspace.pipeline import Pipeline
from userspace.records import Record

MS = 1_000_000
T0 = 1_764_600_000 * 10**9  # capture times near today, so the view's clock reads them sensibly


def dialog(n: int) -> Dialog:
    caller = Party(f"10.1.{n // 250}.{n % 250 + 1}", 40_000 + 2 * (n % 1000), f"alice{n}")
    callee = Party("10.2.0.1", 50_000 + 2 * (n % 1000), f"bob{n}")
    return Dialog(f"view-{n}@test", caller, callee, OFFERED, {PCMA: "PCMA/8000"})


def answered(n: int, start: int, lost: Sequence[int] = ()) -> list[tuple[list[calls.Datagram], bool]]:
    """INVITE (sent twice), 180, 200, ACK, 50 RTP packets each way, BYE, 200."""
    d = dialog(n)
    up = Stream(0xA000 + n, PCMA, 50, start + 40 * MS, lost=frozenset(lost))
    down = Stream(0xB000 + n, PCMA, 50, start + 41 * MS)
    hangup = start + 40 * MS + 51 * calls.PTIME_NS
    return [
        (calls.signalling(d, [(start, "invite"), (start + 5 * MS, "invite"), (start + 10 * MS, "ringing"),
                              (start + 30 * MS, "ok"), (start + 35 * MS, "ack")]), False),
        (calls.media(up, d.caller, d.callee) + calls.media(down, d.callee, d.caller), True),
        (calls.signalling(d, [(hangup, "bye"), (hangup + 5 * MS, "bye_ok")]), False),
    ]


def rejected(n: int, start: int) -> list[tuple[list[calls.Datagram], bool]]:
    d = dialog(n)
    busy = calls.Datagram(start + 20 * MS, d.callee.address, 5060, d.caller.address, 5060,
                          d.ringing().replace(b"180 Ringing", b"486 Busy Here"))
    return [([*calls.signalling(d, [(start, "invite"), (start + 10 * MS, "ringing")]), busy], False)]


def ping(start: int) -> list[tuple[list[calls.Datagram], bool]]:
    return [([calls.Datagram(start, "10.1.0.1", 5060, "10.1.0.2", 5060, request("OPTIONS", 7)),
              calls.Datagram(start + MS, "10.1.0.2", 5060, "10.1.0.1", 5060,
                             response("200 OK", "OPTIONS", 7))],
             False)]


def scripted_records(answered_calls: int = 3, rejected_calls: int = 1) -> list[Record]:
    """Every record the pipeline makes of the script, ended calls summarised."""
    pipeline = Pipeline({2: "eth0"}, 0)
    steps = []
    for n in range(answered_calls):
        steps += answered(n, T0 + n * 200 * MS, lost=range(10, 10 + 5 * n))
    for n in range(answered_calls, answered_calls + rejected_calls):
        steps += rejected(n, T0 + n * 200 * MS)
    steps += ping(T0 + 50 * MS)
    records: list[Record] = []
    events = sorted(((d.ts_ns, d, media) for datagrams, media in steps for d in datagrams),
                    key=lambda item: item[0])
    for ts, d, media in events:
        frame = ethernet(ipv4(udp(d.payload, d.sport, d.dport), src=d.src, dst=d.dst))
        records += pipeline.process([ring_record(frame, ts_ns=ts, kind=Kind.RTP if media else Kind.SIP)])
    records += pipeline.finish()
    return records


