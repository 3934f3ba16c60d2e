"""Messages of a dialog read ahead of its INVITE, and the calls that just ended.

With workers, an INVITE that came in fragments or over TCP is framed by one
worker and handed to the worker that owns its Call-ID, while the rest of its
dialog — 100/180/200, ACK, BYE and their answers, single datagrams — reaches
the owner straight from the kernel. The owner can read any of those first,
by as long as the framing worker lags (tens of milliseconds when it pauses).
They wait in ``EarlyMessages`` for the INVITE, then are applied in the order
they came. Bounded in number, bytes and age (oldest first out, counted in
``dropped``), so traffic whose INVITE never comes (a capture started
mid-call, a lost INVITE) cannot grow it.

A message after its call's end (the ACK of a rejected INVITE, the 200 to a
BYE, a retransmitted BYE) has an unknown Call-ID too, and must not wait:
``EndedCalls`` remembers the Call-IDs of calls ended in the last
``ENDED_WINDOW_NS`` (bounded), and their messages pass unparked.
"""

from __future__ import annotations

from collections import OrderedDict

from userspace.records import SipRecord

NS = 1_000_000_000
EARLY_WINDOW_NS = 2 * NS       # how long a message may wait for its INVITE
EARLY_MAX = 4_096              # messages waiting at once, over all Call-IDs
EARLY_MAX_BYTES = 8 << 20      # and the bytes they hold (a 183 may carry a large body)
# A transaction's retransmissions stop within 64*T1 = 32 s (RFC 3261 timers B, F).
ENDED_WINDOW_NS = 32 * NS
ENDED_MAX = 32_768             # ~1,000 calls a second ending, each remembered 32 s

# The methods of an INVITE dialog whose messages can change what a call records:
# its answers (ringing, answer, rejection), its SDP (ACK, PRACK, UPDATE), its end.
DIALOG_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "PRACK", "UPDATE", "INFO"})

Parked = tuple[SipRecord, int, int, int]  # (record, now_ns, shard, bytes held)


def may_precede_invite(record: SipRecord) -> bool:
    """A message that belongs to an INVITE dialog but is not the INVITE itself."""
    m = record.message
    return m.cseq_method in DIALOG_METHODS and not (m.is_request and m.method == "INVITE")


class EarlyMessages:
    def __init__(self) -> None:
        self._waiting: OrderedDict[str, list[Parked]] = OrderedDict()
        self._count = 0
        self._bytes = 0
        self.dropped = 0   # waited in vain: no INVITE in time, room needed, or an earlier INVITE's
        self.replayed = 0  # applied to their call once its INVITE came

    def park(self, record: SipRecord, now_ns: int, shard: int) -> None:
        self.expire(now_ns)
        m = record.message
        held = max(m.size, len(m.source))
        while self._waiting and (self._count >= EARLY_MAX or self._bytes + held > EARLY_MAX_BYTES):
            self._drop_oldest()
        if held > EARLY_MAX_BYTES:
            self.dropped += 1
            return
        self._waiting.setdefault(m.call_id, []).append((record, now_ns, shard, held))
        self._count += 1
        self._bytes += held

    def take(self, call_id: str, cseq: int) -> list[Parked]:
        """The messages waiting for this INVITE, in the order they came: those of its
        CSeq or later. Older ones, of an INVITE before it, are dropped."""
        if not self._waiting:
            return []
        parked = self._forget(self._waiting.pop(call_id, []))
        matching = [p for p in parked if p[0].message.cseq >= cseq]
        self.dropped += len(parked) - len(matching)
        self.replayed += len(matching)
        return matching

    def expire(self, now_ns: int) -> None:
        while self._waiting:
            oldest = next(iter(self._waiting.values()))
            if now_ns - oldest[0][1] <= EARLY_WINDOW_NS:
                return
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _call_id, parked = self._waiting.popitem(last=False)
        self.dropped += len(self._forget(parked))

    def _forget(self, parked: list[Parked]) -> list[Parked]:
        self._count -= len(parked)
        self._bytes -= sum(p[3] for p in parked)
        return parked


class EndedCalls:
    """Call-IDs of calls that ended in the last ENDED_WINDOW_NS, at most ENDED_MAX
    (oldest forgotten first: a late message of a forgotten call waits, and is
    counted when its wait ends)."""

    def __init__(self) -> None:
        self._ended: OrderedDict[str, int] = OrderedDict()

    def add(self, call_id: str, now_ns: int) -> None:
        self._ended.pop(call_id, None)
        self._ended[call_id] = now_ns
        if len(self._ended) > ENDED_MAX:
            self._ended.popitem(last=False)

    def discard(self, call_id: str) -> None:
        self._ended.pop(call_id, None)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._ended

    def __len__(self) -> int:
        return len(self._ended)

    def expire(self, now_ns: int) -> None:
        while self._ended:
            ended_ns = next(iter(self._ended.values()))
            if now_ns - ended_ns <= ENDED_WINDOW_NS:
                return
            self._ended.popitem(last=False)
