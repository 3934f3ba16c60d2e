"""The calls a live view shows (otus_ebpf.view): a bounded book fed with the records
the outputs get.

The capture loop hands it each batch once (``take``, one lock a batch); per
message it does a dict lookup, a few comparisons and keeps the record itself
(no copy). Everything a view draws (rows, the
ladder) is made when the view asks, from what is kept. Bounded: MAX_CALLS
calls, MAX_MESSAGES each, BYTES_KEPT held in all; the call idle
longest goes first, and calls idle for IDLE_KEPT_NS of capture time go too.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from userspace.frame import address_text
from userspace.records import CallSummary, Record, SipRecord, StreamReport
from userspace.tls import TLS, WSS
from userspace.websocket import WS

MAX_CALLS = 2_000
MAX_MESSAGES = 64        # a call's messages kept for its ladder; later ones are counted only
TEXT_KEPT = 4_096        # bytes of a message's text a ladder shows
BYTES_KEPT = 32 << 20    # what the kept messages hold in all, by held_bytes
RECORD_OVERHEAD = 1_500  # a kept record's parsed fields and its encoded JSON, besides its bytes
MAX_STREAMS = 16         # RTP streams a call shows; reports of more are not kept
FIELD_SHOWN = 200        # characters of a Call-ID, a user or a reason a row or a ladder carries
EVICTION_SCAN = 64       # calls looked at from the oldest for an ended one to let go first
IDLE_KEPT_NS = 15 * 60 * 10**9
ROWS_SHOWN = 500         # rows a list asks for at most: what a screen can page through

SORTS = ("start", "duration", "status", "mos", "lost", "from", "to", "state")
_TRANSPORTS = {17: "UDP", 6: "TCP", WS: "WS", TLS: "TLS", WSS: "WSS"}
_SDP_ADDRESS = re.compile(rb"^c=IN IP[46] ([^\s]+)", re.M)
_SDP_PORT = re.compile(rb"^m=audio (\d+)", re.M)


class CallRow(NamedTuple):
    """One line of the call list (a tuple: it crosses pipes and sockets as a list)."""

    call_id: str
    start_ns: int
    method: str
    from_user: str
    to_user: str
    state: str
    duration_s: float
    status: int          # the final status, 0 while none
    mos_ab: float        # the caller's media to the callee, 0 when not measured
    mos_ba: float
    lost: int            # RTP packets lost, every stream of the call
    messages: int
    task: str = ""       # the daemon's task it came from (`top`)


class MessageLine(NamedTuple):
    """One message of a ladder."""

    ts_ns: int
    src: str             # "address:port"
    dst: str
    label: str           # "INVITE", "180 Ringing"
    transport: str
    retransmission: bool
    text: str            # the message as received, cut at TEXT_KEPT


class StreamLine(NamedTuple):
    """The latest report of one RTP stream of the call."""

    src: str
    dst: str
    codec: str
    packets: int
    lost: int
    loss_percent: float
    jitter_ms: float
    mos: float


class CallDetail(NamedTuple):
    row: CallRow
    messages: list[MessageLine]
    streams: list[StreamLine]
    not_kept: int        # messages past MAX_MESSAGES, counted only


@dataclass(slots=True)
class _Call:
    call_id: str
    start_ns: int
    last_ns: int
    method: str = ""
    from_user: str = ""
    to_user: str = ""
    state: str = ""
    status: int = 0
    answer_ns: int = 0
    end_ns: int = 0
    invite_cseq: int = 0
    seen: list[SipRecord] = field(default_factory=list)  # held as they are: no copy per message
    not_kept: int = 0
    text_bytes: int = 0
    streams: dict[tuple[str, int, str, int, int], dict[str, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class BookStats:
    calls_evicted: int = 0
    calls_aged: int = 0
    messages_not_kept: int = 0


class CallBook:
    """What a live view reads; ``take`` is the capture loop's, the rest the view's."""

    def __init__(self, max_calls: int = MAX_CALLS, bytes_kept: int = BYTES_KEPT) -> None:
        self._calls: OrderedDict[str, _Call] = OrderedDict()  # least recently active first
        self._max_calls = max_calls
        self._bytes_kept = bytes_kept
        self._bytes = 0
        self._newest_ns = 0
        self._lock = threading.Lock()
        self.stats = BookStats()

    def __len__(self) -> int:
        return len(self._calls)

    # -- the capture loop's side --------------------------------------------------

    def take(self, records: Iterable[Record]) -> None:
        with self._lock:
            for record in records:
                if isinstance(record, SipRecord):
                    self._message(record)
                elif isinstance(record, StreamReport):
                    self._stream(record)
                elif isinstance(record, CallSummary):
                    self._summary(record)
            self._bound()

    def _message(self, record: SipRecord) -> None:
        m = record.message
        ts = record.ts_ns
        calls = self._calls
        call = calls.get(m.call_id)
        if call is None:
            call = calls[m.call_id] = _Call(m.call_id, ts, ts)
        else:
            calls.move_to_end(m.call_id)
            call.last_ns = max(call.last_ns, ts)
        self._newest_ns = max(self._newest_ns, ts)
        if len(call.seen) < MAX_MESSAGES:
            call.seen.append(record)
            held = held_bytes(record)
            call.text_bytes += held
            self._bytes += held
        else:
            call.not_kept += 1
            self.stats.messages_not_kept += 1
        if m.method is not None:
            _request(call, m.method, m.cseq, m.from_user, m.to_user)
        elif m.status is not None:
            _response(call, m.status, m.cseq_method, ts)

    def _stream(self, record: StreamReport) -> None:
        call = self._calls.get(record.call_id or "")
        if call is None:
            return  # a stream of a call the view no longer keeps (or of none)
        r = record.report
        key = (str(r.get("src")), _whole(r.get("sport")), str(r.get("dst")), _whole(r.get("dport")),
               _whole(r.get("ssrc")))
        if key in call.streams or len(call.streams) < MAX_STREAMS:
            call.streams[key] = r
        if not call.end_ns:  # media flowing keeps a call as live as its messages would
            self._calls.move_to_end(call.call_id)
            call.last_ns = max(call.last_ns, record.ts_ns)
            self._newest_ns = max(self._newest_ns, record.ts_ns)

    def _summary(self, record: CallSummary) -> None:
        call = self._calls.get(record.call_id)
        if call is None:
            return
        if record.final_status is not None:
            call.status = record.final_status
        if record.answer_ns is not None:
            call.answer_ns = record.answer_ns
        call.end_ns = record.end_ns or call.last_ns
        call.state = "ended" if record.end_cause == "bye" else record.end_cause
        for report in record.streams:
            self._stream(StreamReport(call.end_ns, record.call_id, dict(report), final=True))

    def _bound(self) -> None:
        calls = self._calls
        while calls and (len(calls) > self._max_calls or self._bytes > self._bytes_kept):
            self._drop(self._first_to_go())
            self.stats.calls_evicted += 1
        horizon = self._newest_ns - IDLE_KEPT_NS
        while calls:
            oldest = next(iter(calls.values()))
            if oldest.last_ns >= horizon:
                break
            self._drop(oldest.call_id)
            self.stats.calls_aged += 1

    def _first_to_go(self) -> str:
        """Among the oldest few, an ended call or a non-INVITE dialog (an OPTIONS ping
        does not push a call in progress out); else the oldest."""
        for n, call in enumerate(self._calls.values()):
            if n >= EVICTION_SCAN:
                break
            if call.end_ns or call.method != "INVITE":
                return call.call_id
        return next(iter(self._calls))

    def _drop(self, call_id: str) -> None:
        self._bytes -= self._calls.pop(call_id).text_bytes

    # -- the view's side --------------------------------------------------------------

    def rows(self, query: str = "", sort: str = "start", limit: int = ROWS_SHOWN) -> list[CallRow]:
        """The calls matching ``query`` (a case-blind substring of the Call-ID, method,
        users, state or status), ordered by ``sort`` (biggest or newest first), at most ``limit``."""
        with self._lock:  # the capture thread changes calls while they are read
            now = self._newest_ns
            rows = [_row(call, now) for call in self._calls.values()]
        return order_rows(filter_rows(rows, query), sort)[:max(0, limit)]

    def detail(self, call_id: str) -> CallDetail | None:
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                return None
            seen = list(call.seen)
            streams = list(call.streams.values())
            row = _row(call, self._newest_ns)
            not_kept = call.not_kept
        return CallDetail(row, _ladder_lines(seen), [_stream_line(r) for r in streams], not_kept)


# -- state, as the messages say -------------------------------------------------------

def _request(call: _Call, method: str, cseq: int, from_user: str | None, to_user: str | None) -> None:
    if not call.method:
        call.method = method
        call.invite_cseq = cseq
        call.from_user = (from_user or "")[:FIELD_SHOWN]
        call.to_user = (to_user or "")[:FIELD_SHOWN]
        call.state = "calling" if method == "INVITE" else "sent"
    elif method == "INVITE" and cseq > call.invite_cseq and call.state in ("failed", "cancelled"):
        # After a 401/407 (or a failed fork), the INVITE again with credentials: the call goes on.
        call.invite_cseq = cseq
        call.state, call.status, call.end_ns = "calling", 0, 0
    elif method == "BYE" and call.state in ("answered", "calling", "ringing"):
        call.state = "hanging up"
    elif method == "CANCEL" and call.state in ("calling", "ringing"):
        call.state = "cancelling"


def _response(call: _Call, status: int, cseq_method: str, ts_ns: int) -> None:
    if cseq_method != call.method:
        if cseq_method == "BYE" and 200 <= status < 300 and call.state == "hanging up":
            call.state = "ended"
            call.end_ns = ts_ns
        return
    if status < 200:
        if status in (180, 183) and call.state == "calling":
            call.state = "ringing"
        return
    if call.status and call.status < 300:
        return  # a retransmitted or forked final answer: the first 2xx stands
    call.status = status
    if call.method != "INVITE":
        call.state = "done" if status < 300 else "failed"
        call.end_ns = ts_ns
    elif status < 300:
        call.state = "answered"
        call.answer_ns = ts_ns
        call.end_ns = 0  # a fork that failed first, then one that answered
    else:
        call.state = "cancelled" if status == 487 else "failed"
        call.end_ns = ts_ns


# -- what the view draws ---------------------------------------------------------------

def _row(call: _Call, now_ns: int) -> CallRow:
    """``now_ns``: the newest capture time the book has seen, the end of a call still going."""
    end = call.end_ns or max(now_ns, call.last_ns)
    begun = call.answer_ns or call.start_ns
    mos_ab, mos_ba, lost = _media_figures(call)
    return CallRow(call.call_id[:FIELD_SHOWN], call.start_ns, call.method[:FIELD_SHOWN], call.from_user,
                   call.to_user, call.state,
                   round(max(0, end - begun) / 1e9, 1), call.status, mos_ab, mos_ba, lost,
                   len(call.seen) + call.not_kept)


def _media_figures(call: _Call) -> tuple[float, float, int]:
    """MOS each way (the caller's direction is the one not sent to the media the
    INVITE's offer announced) and packets lost over every stream."""
    if not call.streams:
        return 0.0, 0.0, 0
    offered = _offered_media(call)
    ab: list[float] = []
    ba: list[float] = []
    lost = 0
    for report in call.streams.values():
        lost += _whole(report.get("lost"))
        mos = report.get("mos")
        if isinstance(mos, (int, float)):
            to_caller = offered is not None and (str(report.get("dst")), report.get("dport")) == offered
            (ba if to_caller else ab).append(float(mos))
    return (min(ab) if ab else 0.0), (min(ba) if ba else 0.0), lost


def _offered_media(call: _Call) -> tuple[str, int] | None:
    for seen in call.seen:
        m = seen.message
        if m.method == "INVITE":
            text = m.source[:m.size]
            address = _SDP_ADDRESS.search(text)
            port = _SDP_PORT.search(text)
            if address and port:
                return address.group(1).decode("ascii", "replace"), int(port.group(1))
            return None
    return None


def _ladder_lines(seen: list[SipRecord]) -> list[MessageLine]:
    lines = []
    earlier: set[tuple[object, ...]] = set()
    for s in seen:
        m = s.message
        identity = (s.src, s.sport, m.method, m.status, m.cseq, m.via_branch, m.to_tag)
        label = (m.method if m.method is not None else f"{m.status} {m.reason or ''}".strip())[:FIELD_SHOWN]
        text = m.source[:min(m.size, TEXT_KEPT)].decode("utf-8", "replace")
        lines.append(MessageLine(s.ts_ns, _endpoint(s.src, s.sport), _endpoint(s.dst, s.dport), label,
                                 _TRANSPORTS.get(s.transport, str(s.transport)), identity in earlier, text))
        earlier.add(identity)
    return lines


def _endpoint(address: bytes, port: int) -> str:
    text = address_text(address)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _stream_line(report: dict[str, Any]) -> StreamLine:
    def number(key: str) -> float:
        value = report.get(key)
        return float(value) if isinstance(value, (int, float)) else 0.0

    src = f"{report.get('src')}:{report.get('sport')}"
    dst = f"{report.get('dst')}:{report.get('dport')}"
    return StreamLine(src, dst, str(report.get("codec") or "?"), int(number("packets")), int(number("lost")),
                      number("loss_percent"), number("jitter_ms"), number("mos"))


def held_bytes(record: SipRecord) -> int:
    """What keeping a record holds, by its bytes (a datagram's whole payload, however
    short the message in it) and its header text (up to 4 bytes a character)."""
    m = record.message
    return RECORD_OVERHEAD + len(m.source) + 4 * len(m.head)


def _whole(value: object) -> int:
    return value if isinstance(value, int) else 0


def filter_rows(rows: list[CallRow], query: str) -> list[CallRow]:
    needle = query.strip().casefold()
    if not needle:
        return rows
    return [row for row in rows
            if needle in " ".join((row.call_id, row.method, row.from_user, row.to_user, row.state,
                                   str(row.status or ""), row.task)).casefold()]


_SORT_KEYS = {
    "start": lambda r: r.start_ns, "duration": lambda r: r.duration_s, "status": lambda r: r.status,
    "mos": lambda r: -r.mos_ab if r.mos_ab else float("-inf"), "lost": lambda r: r.lost,
    "from": lambda r: r.from_user.casefold(), "to": lambda r: r.to_user.casefold(),
    "state": lambda r: r.state,
}
_ASCENDING = frozenset({"from", "to", "state"})


def order_rows(rows: list[CallRow], sort: str) -> list[CallRow]:
    """Newest, longest, highest or worst first; names alphabetically. ``mos``: worst MOS first."""
    key = _SORT_KEYS.get(sort, _SORT_KEYS["start"])
    return sorted(rows, key=key, reverse=sort not in _ASCENDING)


def row_of(data: list[Any] | tuple[Any, ...]) -> CallRow:
    """A row back from JSON (a list); a malformed one raises ValueError."""
    if len(data) != len(CallRow._fields):
        raise ValueError(f"a call row has {len(CallRow._fields)} fields, not {len(data)}")
    return CallRow(*data)


def detail_of(data: dict[str, Any]) -> CallDetail:
    """A call's detail back from JSON."""
    return CallDetail(row_of(data["row"]), [MessageLine(*m) for m in data["messages"]],
                      [StreamLine(*s) for s in data["streams"]], int(data["not_kept"]))


def detail_json(detail: CallDetail) -> dict[str, Any]:
    return {"row": list(detail.row), "messages": [list(m) for m in detail.messages],
            "streams": [list(s) for s in detail.streams], "not_kept": detail.not_kept}
