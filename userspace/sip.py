"""SIP message parsing (RFC 3261).

``parse_message(data)`` returns a ``SipMessage`` or raises ``Malformed`` /
``Truncated`` (the ``DecodeError`` family) with a reason; any other
exception is a bug. Input is never trusted: sizes are bounded, every index
is checked, and defects that do not stop a message from being understood
(a CSeq method that differs from the request method, a missing Via) are
recorded in ``defects`` instead of rejecting it.

The common path — start line, Call-ID, CSeq, From/To tags, the top Via's
branch, Content-Length — decodes the header block once and makes one pass
over its lines, looking each header name up in a memo of names already
seen (header names are a small vocabulary, so the memo stays small and
saves lower-casing every name of every message). Everything else is parsed
on first use from the header text the message keeps: Contact, User-Agent,
Reason, P-Asserted-Identity, the Via's sent-by, received and rport,
multiple and comma-separated values, and multipart bodies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from userspace.errors import LimitExceeded, Malformed, Truncated
from userspace.uri import party, uri_user

SIP_VERSION = "SIP/2.0"
# Largest message we accept: the UDP limit; a TCP stream frames by Content-Length.
MAX_MESSAGE = 65_535
# RFC 3261 §7.3.3 compact forms.
COMPACT_FORMS = {
    "i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact", "l": "content-length",
    "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding",
    "o": "event", "u": "allow-events", "r": "refer-to", "x": "session-expires",
    "y": "identity", "a": "accept-contact", "b": "referred-by",
}
# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_FOLD = re.compile(r"\r?\n[ \t]+")
# The headers of the common path, compact forms included, by lower-case name.
_COMMON_NAMES = {
    "call-id": "call-id", "i": "call-id", "cseq": "cseq", "from": "from", "f": "from",
    "to": "to", "t": "to", "via": "via", "v": "via", "content-length": "content-length",
    "l": "content-length", "content-type": "content-type", "c": "content-type",
    "user-agent": "user-agent", "server": "server",
}
# Header name as written (any case, trailing blanks) -> its common-path key, or
# None for every other header. Bounded: hostile traffic can invent names forever.
_NAME_MEMO: dict[str, str | None] = {}
_NAME_MEMO_MAX = 4096
_HEADER_LINE = re.compile(r"^([^:\r\n]+?)[ \t]*:[ \t]*([^\r\n]*)", re.MULTILINE)
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?\Z", re.DOTALL)
# RFC 3261 §25.1: Method SP Request-URI SP SIP-Version; the URI has a scheme
# and is not in angle brackets (RFC 4475 §3.1.2.3 ltgtruri).
_REQUEST_LINE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) ([A-Za-z][A-Za-z0-9+.\-]*:[^ <>]*) SIP/2\.0\Z")
# CSeq: a number below 2**31 (RFC 3261 §8.1.1.5), at most 10 digits, and a method token.
_CSEQ = re.compile(r"\s*([0-9]{1,10})\s+([A-Za-z0-9\-.!%*_+`'~]+)\s*\Z")
_PARAM = r";\s*{}\s*(?:=\s*([^;\s,]*))?"
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
MIN_STATUS, MAX_STATUS = 100, 699


@dataclass(frozen=True, slots=True)
class BodyPart:
    headers: tuple[tuple[str, str], ...]
    content_type: str | None
    body: bytes


@dataclass(slots=True)
class SipMessage:
    """One SIP request (``method`` set) or response (``status`` set).

    Treat it as immutable. It is not ``frozen``: a frozen dataclass's
    ``__init__`` costs ~1 µs more per message (measured: 1.2 vs 0.2 µs for
    16 fields), a sixth of the per-message budget. Lazily parsed fields are
    kept in ``_lazy``.
    """

    method: str | None
    request_uri: str | None
    status: int | None
    reason: str | None
    call_id: str
    cseq: int
    cseq_method: str
    from_tag: str | None
    to_tag: str | None
    via_branch: str | None
    content_length: int | None
    size: int
    head: str = field(repr=False)  # the header section, start line included, folded
    body: bytes = field(repr=False)
    defects: tuple[str, ...] = ()
    content_type: str | None = None
    source: bytes = field(default=b"", repr=False)  # what was parsed; the message is its first ``size`` bytes
    # Who: read here, once, because every record carries them (userspace.uri).
    from_display: str | None = None
    from_user: str | None = None
    to_user: str | None = None
    ruri_user: str | None = None
    user_agent: str | None = None  # User-Agent, or a response's Server
    _lazy: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def raw(self) -> bytes:
        """The message as it was on the wire (for pcap-less consumers such as HEP)."""
        source = self.source
        return source if len(source) == self.size else source[:self.size]

    def _cached(self, name: str, compute: Callable[[], Any]) -> Any:
        if self._lazy is None:
            self._lazy = {}
        if name not in self._lazy:
            self._lazy[name] = compute()
        return self._lazy[name]

    @property
    def is_request(self) -> bool:
        return self.method is not None

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Every header as (lower-case full name, value), in order; compact forms expanded."""
        result: tuple[tuple[str, str], ...] = self._cached("headers", lambda: tuple(
            (_canonical(name), value.strip()) for name, value in _HEADER_LINE.findall(self._text)))
        return result

    @property
    def _text(self) -> str:
        """The header lines without the start line."""
        return self.head.partition("\n")[2]

    @property
    def junk_lines(self) -> tuple[str, ...]:
        """Header-section lines that are not headers (no colon): ignored, but reported."""
        return tuple(line for line in self._text.splitlines() if line.strip() and ":" not in line)

    def header(self, name: str) -> str | None:
        """The first header of that name (any case, compact form accepted)."""
        wanted = _canonical(name)
        return next((value for key, value in self.headers if key == wanted), None)

    def values(self, name: str) -> list[str]:
        """All values of a header, across repeated headers and comma lists (RFC 3261 §7.3.1)."""
        wanted = _canonical(name)
        return [part for key, value in self.headers if key == wanted for part in split_commas(value)]

    @property
    def vias(self) -> list[str]:
        return self.values("via")

    @property
    def via_sent_by(self) -> str | None:
        if not self.vias:
            return None
        protocol_and_host = self.vias[0].split(";", 1)[0].split()
        return protocol_and_host[1] if len(protocol_and_host) > 1 else None

    @property
    def via_received(self) -> str | None:
        return self._via_param("received")

    @property
    def via_rport(self) -> str | None:
        """The rport value; "" when present without one (RFC 3581)."""
        return self._via_param("rport")

    def _via_param(self, name: str) -> str | None:
        if not self.vias:
            return None
        match = re.search(_PARAM.format(name), self.vias[0], re.IGNORECASE)
        return None if match is None else (match.group(1) or "")

    @property
    def contact(self) -> str | None:
        return self.header("contact")

    @property
    def reason_header(self) -> str | None:
        return self.header("reason")

    @property
    def asserted_identity(self) -> str | None:
        return self.header("p-asserted-identity")

    @property
    def parts(self) -> tuple[BodyPart, ...]:
        """The body as MIME parts: one for a plain body, several for multipart (RFC 2046 §5.1)."""
        content_type = self.content_type
        if not self.body:
            return ()
        if content_type is None or not content_type.lower().startswith("multipart/"):
            return (BodyPart((), content_type, self.body),)
        match = _BOUNDARY.search(content_type)
        if match is None:
            return (BodyPart((), content_type, self.body),)
        return parse_multipart(self.body, (match.group(1) or match.group(2)).encode())

    def body_of_type(self, content_type: str) -> bytes | None:
        wanted = content_type.lower()
        for part in self.parts:
            if part.content_type and part.content_type.split(";", 1)[0].strip().lower() == wanted:
                return part.body
        return None


def _canonical(name: str) -> str:
    key = name.strip().lower()
    return COMPACT_FORMS.get(key, key)


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets."""
    if "," not in value:
        return [value.strip()] if value.strip() else []
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


def parse_multipart(body: bytes, boundary: bytes) -> tuple[BodyPart, ...]:
    delimiter = b"--" + boundary
    parts = []
    for raw in body.split(delimiter)[1:]:
        if raw.startswith(b"--"):
            break  # the close delimiter
        part = raw.removeprefix(b"\r\n").removeprefix(b"\n")
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = part.partition(b"\n\n")
        text = head.decode("utf-8", errors="replace") if sep else ""
        headers = tuple((_canonical(n), v.strip()) for n, v in _HEADER_LINE.findall(text))
        content_type = next((v for k, v in headers if k == "content-type"), None)
        parts.append(BodyPart(headers, content_type, (content if sep else part).removesuffix(b"\r\n")))
    return tuple(parts)


def looks_like_sip(payload: bytes) -> bool:
    """Cheap pre-check used to skip keep-alives and non-SIP payloads."""
    if payload.startswith(b"SIP/2.0"):
        return True
    # A request line ends in " SIP/2.0" (RFC 3261 §7.1); look only near the start.
    return payload.find(b" SIP/2.0\r\n", 0, _START_LINE_SCAN) >= 0 or \
        payload.find(b" SIP/2.0\n", 0, _START_LINE_SCAN) >= 0


# How far into a payload a request line's " SIP/2.0" may end; long Request-URIs
# exist, but a start line past this is not worth treating as SIP.
_START_LINE_SCAN = 512


def parse_message(data: bytes) -> SipMessage:
    """Parse the SIP message at the start of ``data``; trailing bytes are left alone
    (``size`` says where the message ends).

    Written flat on purpose: this runs for every message, and each helper
    call or extra decode costs a measurable share of the budget.
    """
    head_end = data.find(b"\r\n\r\n", 0, MAX_MESSAGE)
    if head_end >= 0:
        body_start = head_end + 4
    else:
        head_end, body_start = _find_bare_lf_header_end(data)
    head = data[:head_end].decode("utf-8", "replace")
    if "\n " in head or "\n\t" in head:
        head = _FOLD.sub(" ", head)  # RFC 3261 §7.3.1: folded lines are one line
    lines = iter(head.split("\n"))
    method, uri, status, reason = _parse_start_line(next(lines).rstrip("\r"))
    found = _common_headers(lines)
    call_id = found.get("call-id", "").strip()
    if not call_id:
        raise Malformed("sip", 0, "missing Call-ID")
    cseq_match = _CSEQ.match(found.get("cseq", ""))
    if cseq_match is None:
        raise Malformed("sip", 0, f"bad or missing CSeq {found.get('cseq', '')[:40]!r}")
    cseq = int(cseq_match.group(1))
    if cseq >= 2**31:
        raise Malformed("sip", 0, f"CSeq number {cseq} out of range")
    cseq_method = cseq_match.group(2)
    from_value, to_value = found.get("from"), found.get("to")
    if from_value is None or to_value is None:
        raise Malformed("sip", 0, "missing From or To")
    length_field = found.get("content-length")
    content_length = None
    if length_field is not None:
        length_field = length_field.strip()
        # ASCII digits only (userspace.numbers), written out: this runs for every message.
        if not (len(length_field) <= 7 and length_field.isascii() and length_field.isdigit()):
            raise Malformed("sip", 0, f"bad Content-Length {length_field[:20]!r}")
        content_length = int(length_field)
        if content_length > len(data) - body_start:
            raise Truncated("sip", body_start,
                            f"Content-Length {content_length} > {len(data) - body_start} body bytes")
        size = body_start + content_length
    else:
        size = len(data)
    if size > MAX_MESSAGE:
        raise LimitExceeded("sip", 0, f"message of {size} bytes")
    via = found.get("via")
    defects: tuple[str, ...] = ()
    if (method is not None and cseq_method != method) or via is None:  # rare: build the list only then
        defects = _defects(method, cseq_method, via)
    # The tag outside any <URI>: a URI may carry its own ;tag=.
    from_tag = _TAG.search(from_value, from_value.rfind(">") + 1)
    to_tag = _TAG.search(to_value, to_value.rfind(">") + 1)
    from_display, from_user = party(from_value)
    return SipMessage(
        method, uri, status, reason, call_id, cseq, cseq_method,
        None if from_tag is None else from_tag.group(1),
        None if to_tag is None else to_tag.group(1),
        _branch(via), content_length, size, head, data[body_start:size], defects,
        None if (ctype := found.get("content-type")) is None else ctype.strip(), data,
        from_display, from_user, party(to_value)[1], None if uri is None else uri_user(uri), _agent(found),
    )


def _agent(found: dict[str, str]) -> str | None:
    agent = found.get("user-agent", "").strip() or found.get("server", "").strip()
    return agent[:MAX_AGENT] or None


MAX_AGENT = 256  # a User-Agent longer than this is cut in records
_UNSEEN = ""  # not a valid key: marks a name the memo has not seen


def _common_headers(lines: Iterator[str]) -> dict[str, str]:
    """The raw value of the first header of each common-path key."""
    found: dict[str, str] = {}
    memo = _NAME_MEMO
    for line in lines:
        name, _, value = line.partition(":")
        key = memo.get(name, _UNSEEN)
        if key is _UNSEEN:
            key = _remember(name)
        if key is not None and key not in found:  # the first wins: the top Via
            found[key] = value
    return found


def _remember(name: str) -> str | None:
    key = _COMMON_NAMES.get(name.rstrip(" \t").lower())
    if len(_NAME_MEMO) < _NAME_MEMO_MAX:
        _NAME_MEMO[name] = key
    return key


def _defects(method: str | None, cseq_method: str, via: str | None) -> tuple[str, ...]:
    found = []
    if method is not None and cseq_method != method:  # ACK and CANCEL carry their own method too
        found.append(f"CSeq method {cseq_method} differs from {method}")
    if via is None:
        found.append("no Via")
    return tuple(found)


def _find_bare_lf_header_end(data: bytes) -> tuple[int, int]:
    end = data.find(b"\n\n", 0, MAX_MESSAGE)  # RFC 3261 §7.5: tolerate bare LF
    if end >= 0:
        return end, end + 2
    if len(data) >= MAX_MESSAGE:
        raise LimitExceeded("sip", 0, f"no end of headers in {MAX_MESSAGE} bytes")
    raise Truncated("sip", len(data), "no blank line after the headers")


def _parse_start_line(line: str) -> tuple[str | None, str | None, int | None, str | None]:
    if line.startswith("SIP/"):
        match = _STATUS_LINE.match(line)
        if match is None:
            raise Malformed("sip", 0, f"bad status line {line[:40]!r}")
        return None, None, int(match.group(1)), match.group(2) or ""
    match = _REQUEST_LINE.match(line)
    if match is None:
        raise Malformed("sip", 0, f"bad start line {line[:40]!r}")
    return match.group(1), match.group(2), None, None


_TAG = re.compile(r";\s*tag\s*=\s*([^;>\s,]+)", re.IGNORECASE)
_BRANCH = re.compile(r";\s*branch\s*=\s*([^;\s,]+)", re.IGNORECASE)


def _branch(via: str | None) -> str | None:
    if via is None:
        return None
    match = _BRANCH.search(via)
    if match is None:
        return None
    if via.find(",", 0, match.start()) >= 0:
        return None  # the first Via of a comma list has no branch
    return match.group(1)
