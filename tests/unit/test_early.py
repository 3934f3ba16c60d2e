"""A dialog's messages read ahead of its INVITE (with workers, a handed-over
INVITE can come after the rest of its call) wait for it; messages after a
call's end do not; what waits is bounded and counted."""

from __future__ import annotations

from tests.support.frames import raw
from tests.support.sip_samples import INVITE, OK_200, sip_message
from userspace.calls import CallRecord, CallTracker
from userspace.early import (
    EARLY_MAX,
    EARLY_MAX_BYTES,
    EARLY_WINDOW_NS,
    ENDED_MAX,
    ENDED_WINDOW_NS,
    EndedCalls,
)
from userspace.endpoints import FlowAction
from userspace.event import Direction
from userspace.frame import IPProto
from userspace.records import CallSummary, SipRecord
from userspace.sip import parse_message

RINGING = OK_200.replace(b"200 OK", b"180 Ringing")
BUSY = OK_200.replace(b"200 OK", b"486 Busy Here")
ACK = INVITE.replace(b"INVITE sip", b"ACK sip").replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 ACK")
BYE = INVITE.replace(b"INVITE sip", b"BYE sip").replace(b"CSeq: 314159 INVITE", b"CSeq: 314160 BYE")
BYE_OK = OK_200.replace(b"CSeq: 314159 INVITE", b"CSeq: 314160 BYE")


def _record(message: bytes, ts: int) -> SipRecord:
    return SipRecord(ts, "eth0", Direction.INGRESS, IPProto.UDP, raw("10.0.0.1"), 5060, raw("10.0.0.2"), 5060,
                     parse_message(message))


def _summaries(records: list[CallRecord]) -> list[CallSummary]:
    return [r for r in records if isinstance(r, CallSummary)]


def test_responses_ahead_of_their_invite_wait_for_it() -> None:
    tracker = CallTracker()
    for record in (_record(RINGING, 2), _record(OK_200, 3)):
        assert tracker.observe(record, record.ts_ns, 0) == ([], [])
    tracker.observe(_record(INVITE, 1), 1, 0)
    _flows, ended = tracker.observe(_record(BYE, 4), 4, 0)
    summary = _summaries(ended)[0]
    assert (summary.invite_ns, summary.ringing_ns, summary.answer_ns) == (1, 2, 3)


def test_a_whole_call_read_before_its_invite_is_summarised_when_it_comes() -> None:
    """The framing worker lagged past the BYE: the call still ends by its BYE, timed
    from the packets' own times; the 200 to the BYE came after its end and is no loss."""
    tracker = CallTracker()
    for ts, message in enumerate((RINGING, OK_200, ACK, BYE, BYE_OK), start=2):
        assert tracker.observe(_record(message, ts), 10 + ts, 0) == ([], [])
    _flows, ended = tracker.observe(_record(INVITE, 1), 20, 0)
    summary = _summaries(ended)[0]
    assert (summary.end_cause, summary.invite_ns, summary.ringing_ns, summary.answer_ns, summary.end_ns) == \
        ("bye", 1, 2, 3, 5)
    assert len(tracker) == 0 and tracker.flows_active == 0
    assert (tracker.early_replayed, tracker.early_dropped) == (5, 0)


def test_messages_after_a_calls_end_do_not_wait() -> None:
    """The ACK of a rejected INVITE, the 200 to a BYE, a retransmitted BYE: their call
    is over, and nothing waits for an INVITE on their account."""
    tracker = CallTracker()
    tracker.observe(_record(INVITE, 1), 1, 0)
    tracker.observe(_record(BUSY, 2), 2, 0)
    for ts, message in enumerate((ACK, BYE, BYE_OK, BUSY), start=3):
        assert tracker.observe(_record(message, ts), ts, 0) == ([], [])
    tracker.expire(10 * EARLY_WINDOW_NS)
    assert (tracker.early_replayed, tracker.early_dropped) == (0, 0)


def test_out_of_dialog_traffic_does_not_wait() -> None:
    """REGISTER, OPTIONS and their answers never have an INVITE: parking them would
    evict the messages that do."""
    tracker = CallTracker()
    for n, method in enumerate((b"REGISTER", b"OPTIONS", b"SUBSCRIBE", b"NOTIFY", b"MESSAGE")):
        request = INVITE.replace(b"INVITE sip", method + b" sip").replace(b"314159 INVITE", b"1 " + method)
        answer = OK_200.replace(b"314159 INVITE", b"1 " + method)
        tracker.observe(_record(request, n), n, 0)
        tracker.observe(_record(answer, n), n, 0)
    tracker.expire(10 * EARLY_WINDOW_NS)
    assert tracker.early_dropped == 0


def test_a_late_message_whose_call_was_forgotten_waits_and_is_counted() -> None:
    """Past the ended-call memory's window a late BYE waits like one from before
    the capture started, and is counted when its wait ends."""
    tracker = CallTracker()
    tracker.observe(_record(INVITE, 1), 1, 0)
    tracker.observe(_record(BUSY, 2), 2, 0)
    tracker.expire(ENDED_WINDOW_NS + 3)
    tracker.observe(_record(BYE, 4), ENDED_WINDOW_NS + 4, 0)
    tracker.expire(ENDED_WINDOW_NS + 4 + 2 * EARLY_WINDOW_NS)
    assert tracker.early_dropped == 1


def test_the_early_queue_is_bounded() -> None:
    tracker = CallTracker()
    for n in range(EARLY_MAX + 100):
        record = _record(OK_200.replace(b"a84b4c76e66710", f"orphan-{n}".encode()), n)
        tracker.observe(record, n, 0)
    assert tracker._early._count == EARLY_MAX
    assert tracker._early.dropped == 100


def test_an_early_final_response_ends_the_call_after_its_invite_was_tracked() -> None:
    """The INVITE's SDP is learned before the waiting 486 ends the call, so its end
    releases what it learned: nothing is left held."""
    tracker = CallTracker()
    tracker.observe(_record(BUSY, 2), 2, 0)
    flows, ended = tracker.observe(_record(INVITE, 1), 3, 0)
    summary = _summaries(ended)[0]
    assert (summary.end_cause, summary.final_status) == ("rejected", 486)
    assert summary.media, "the INVITE's SDP is in the summary"
    assert len(tracker) == 0 and tracker.flows_active == 0
    learned = {(f.address, f.port) for f in flows if f.action is FlowAction.LEARN}
    forgotten = {(f.address, f.port) for f in flows if f.action is FlowAction.FORGET}
    assert learned and learned == forgotten


def test_a_waiting_response_to_an_earlier_invite_is_not_replayed_into_a_new_one() -> None:
    """Capture started after the first INVITE: its 407 waits; the authenticated INVITE
    (CSeq + 1) must not be ended by it."""
    tracker = CallTracker()
    challenge = OK_200.replace(b"200 OK", b"407 Proxy Authentication Required")
    tracker.observe(_record(challenge, 2), 2, 0)
    again = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314160 INVITE")
    _flows, ended = tracker.observe(_record(again, 4), 4, 0)
    assert ended == [] and len(tracker) == 1
    assert (tracker.early_dropped, tracker.early_replayed) == (1, 0)


def test_an_invite_after_a_407_is_a_new_call_and_the_407s_retransmission_is_ignored() -> None:
    tracker = CallTracker()
    challenge = OK_200.replace(b"200 OK", b"407 Proxy Authentication Required")
    tracker.observe(_record(INVITE, 1), 1, 0)
    _flows, ended = tracker.observe(_record(challenge, 2), 2, 0)
    assert _summaries(ended)[0].end_cause == "rejected"
    tracker.observe(_record(challenge, 3), 3, 0)  # its call is over: ignored, not parked
    again = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314160 INVITE")
    _flows, ended = tracker.observe(_record(again, 4), 4, 0)
    assert ended == [] and len(tracker) == 1
    assert (tracker.early_dropped, tracker.early_replayed) == (0, 0)


def test_waiting_responses_are_bounded_in_bytes_and_expire() -> None:
    tracker = CallTracker()
    big = sip_message("SIP/2.0 183 Session Progress", [
        "Call-ID: big-{n}", "CSeq: 1 INVITE", "From: <sip:a@x>;tag=1", "To: <sip:b@x>;tag=2"],
        b"x" * 60_000)
    for n in range(400):
        tracker.observe(_record(big.replace(b"{n}", str(n).encode()), n), n, 0)
    early = tracker._early
    assert early._bytes <= EARLY_MAX_BYTES and early._count < 400
    assert tracker.early_dropped == 400 - early._count
    tracker.expire(10 * EARLY_WINDOW_NS)
    assert (early._count, early._bytes, tracker.early_dropped) == (0, 0, 400)


def test_the_ended_call_memory_is_bounded_and_ages_out() -> None:
    ended = EndedCalls()
    for n in range(ENDED_MAX + 10):
        ended.add(f"call-{n}", n)
    assert len(ended) == ENDED_MAX and "call-0" not in ended and f"call-{ENDED_MAX + 9}" in ended
    ended.expire(ENDED_MAX + 9 + ENDED_WINDOW_NS)
    assert len(ended) == 1  # only the newest is still within the window
    ended.expire(ENDED_MAX + 10 + ENDED_WINDOW_NS)
    assert len(ended) == 0
