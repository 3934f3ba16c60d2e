"""SIP message parsing (RFC 3261), first cut: start line and dialog keys.

``parse_message`` takes one SIP message's bytes and returns a ``SipMessage``
or raises ``Malformed``/``Truncated``. It reads the start line, Call-ID, CSeq,
From/To tags, the first Via's branch and Content-Length, accepting compact
header forms (RFC 3261 §7.3.3) and folded lines (§7.3.1). The SIP issue grows
this into the complete parser; keep the common path this cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from userspace.errors import Malformed, Truncated

SIP_VERSION = "SIP/2.0"
# RFC 3261 §20: compact forms of the headers this cut reads.
COMPACT_FORMS = {"i": "call-id", "f": "from", "t": "to", "v": "via", "l": "content-length"}
WANTED_HEADERS = frozenset(("call-id", "cseq", "from", "to", "via", "content-length"))
# A status code is three digits (RFC 3261 §7.2); 1xx-6xx are defined.
MIN_STATUS, MAX_STATUS = 100, 699
# How far into a payload a request line's " SIP/2.0" may end; long Request-URIs
# exist, but a start line past this is not worth treating as SIP.
_START_LINE_SCAN = 512


@dataclass(frozen=True, slots=True)
class SipMessage:
    """One SIP request (``method`` set) or response (``status`` set)."""

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

    @property
    def is_request(self) -> bool:
        return self.method is not None


def looks_like_sip(payload: bytes) -> bool:
    """Cheap pre-check used to skip keep-alives and non-SIP payloads."""
    if payload.startswith(b"SIP/2.0"):
        return True
    # A request line ends in " SIP/2.0" (RFC 3261 §7.1); look only near the start.
    return payload.find(b" SIP/2.0\r\n", 0, _START_LINE_SCAN) >= 0 or \
        payload.find(b" SIP/2.0\n", 0, _START_LINE_SCAN) >= 0


def parse_message(data: bytes) -> SipMessage:
    head_end, body_start = _find_header_end(data)
    text = data[:head_end].decode("utf-8", errors="replace")
    lines = _unfold(text.split("\n"))
    if not lines or not lines[0]:
        raise Malformed("sip", 0, "empty start line")
    method, uri, status, reason = _parse_start_line(lines[0])
    headers = _collect_headers(lines[1:])
    call_id = headers.get("call-id")
    if not call_id:
        raise Malformed("sip", 0, "missing Call-ID")
    cseq, cseq_method = _parse_cseq(headers.get("cseq"))
    content_length = _parse_content_length(headers.get("content-length"))
    body_len = len(data) - body_start
    if content_length is not None and content_length > body_len:
        raise Truncated("sip", body_start, f"Content-Length {content_length} > {body_len} body bytes")
    size = body_start + (content_length if content_length is not None else body_len)
    return SipMessage(
        method, uri, status, reason, call_id, cseq, cseq_method,
        _param(headers.get("from"), "tag"), _param(headers.get("to"), "tag"),
        _param(_first_value(headers.get("via")), "branch"), content_length, size,
    )


def _find_header_end(data: bytes) -> tuple[int, int]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return end, end + 4
    end = data.find(b"\n\n")  # RFC 3261 §7.5: tolerate bare LF
    if end >= 0:
        return end, end + 2
    raise Truncated("sip", len(data), "no blank line after the headers")


def _unfold(raw_lines: list[str]) -> list[str]:
    lines: list[str] = []
    for raw in raw_lines:
        line = raw.rstrip("\r")
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def _parse_start_line(line: str) -> tuple[str | None, str | None, int | None, str | None]:
    if line.startswith(SIP_VERSION + " "):
        _, code, reason = [*line.split(" ", 2), ""][:3]
        if not (code.isdigit() and len(code) == 3 and MIN_STATUS <= int(code) <= MAX_STATUS):
            raise Malformed("sip", 8, f"bad status code {code!r}")
        return None, None, int(code), reason
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] != SIP_VERSION or not parts[0].isalpha() or not parts[1]:
        raise Malformed("sip", 0, f"bad start line {line[:40]!r}")
    return parts[0], parts[1], None, None


def _collect_headers(lines: list[str]) -> dict[str, str]:
    """First occurrence of each wanted header (the first Via is the one that counts)."""
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise Malformed("sip", 0, f"header line without colon {line[:40]!r}")
        key = name.strip().lower()
        key = COMPACT_FORMS.get(key, key)
        if key in WANTED_HEADERS and key not in headers:
            headers[key] = value.strip()
    return headers


def _parse_cseq(value: str | None) -> tuple[int, str]:
    if value is None:
        raise Malformed("sip", 0, "missing CSeq")
    number, _, method = value.partition(" ")
    method = method.strip()
    if not number.isdigit() or not method:
        raise Malformed("sip", 0, f"bad CSeq {value[:40]!r}")
    return int(number), method


def _parse_content_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise Malformed("sip", 0, f"bad Content-Length {value[:20]!r}")
    return int(value)


def _first_value(value: str | None) -> str | None:
    return None if value is None else value.split(",", 1)[0]


def _param(value: str | None, name: str) -> str | None:
    """A header parameter such as ``tag`` or ``branch``, outside any <URI>."""
    if value is None:
        return None
    close = value.rfind(">")
    params = value[close + 1:] if close >= 0 else value
    for part in params.split(";")[1:]:
        key, _, val = part.partition("=")
        if key.strip().lower() == name:
            return val.strip()
    return None
