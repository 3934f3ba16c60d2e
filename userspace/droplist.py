"""The method drop list: SIP datagrams an operator does not want (OPTIONS
pings, NOTIFYs, 100 Trying) stay out of the pipeline, and so do the responses
to the dropped requests.

The kernel decides it before the ring copy (``first_token``, ``cseq_dropped``
in bpf/otus.c); AF_PACKET and replay decide it here, byte for byte the same:
the same token at the start of the payload, the same bounded CSeq scan, the
same limits. Only whole SIP datagrams over UDP are looked at: a fragment or a
TCP segment does not hold a whole message, which only user space frames.
"""

from __future__ import annotations

import re

from userspace.sharding import header_end

TOKEN_LEN = 16       # OTUS_DROP_TOKEN_LEN: bytes of a method the kernel's key holds
MAX_TOKENS = 16      # OTUS_MAX_DROP_METHODS
CSEQ_SCAN = 512      # OTUS_CSEQ_SCAN: payload bytes a response's CSeq is looked for in
CSEQ_BLANKS = 8      # OTUS_CSEQ_BLANKS: blanks after the colon, and between number and method
CSEQ_DIGITS = 10     # OTUS_CSEQ_DIGITS: a CSeq number is below 2**31 (RFC 3261 §8.1.1.5)
_STATUS_LINE = b"SIP/2.0 "
_STATUS_LINE_LEN = len(_STATUS_LINE) + 4  # "SIP/2.0 " code SP
_TOKEN = re.compile(r"[A-Z0-9]{1,16}")
# A header line named CSeq (any case), its colon right after the name: the kernel's form.
_CSEQ_LINE = re.compile(rb"\ncseq:", re.IGNORECASE)
_BLANK = frozenset(b" \t")
_METHOD_END = re.compile(rb"[\r\n \t\0]")


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be on the drop list, or None. Methods are compared as
    written (RFC 3261 §7.1: case-sensitive), so a lower-case one would never match."""
    if not _TOKEN.fullmatch(token):
        return (f"{token!r} is not a SIP method in upper case (A-Z, 0-9, at most {TOKEN_LEN}) "
                "nor a 3-digit status code")
    if token.isascii() and token.isdigit() and not (len(token) == 3 and 100 <= int(token) <= 699):
        return f"{token!r}: a status code has 3 digits, 100..699"
    return None


def first_token(payload: bytes) -> tuple[bytes, bool] | None:
    """The token the kernel reads at the start of a SIP payload, and whether it is a
    status line's code: the 3 digits of "SIP/2.0 NNN " (§7.2), else the bytes before
    the first SP within 17 (§7.1). None when neither is there, when the code is not
    3 digits, or when a NUL is in the token (the kernel's key would read it as padding)."""
    if len(payload) >= _STATUS_LINE_LEN and payload.startswith(_STATUS_LINE):
        code = payload[8:11]
        return (code, True) if payload[11] == 0x20 and code.isdigit() else None
    space = payload.find(b" ", 0, TOKEN_LEN + 1)
    if space <= 0:
        return None
    token = payload[:space]
    return None if b"\0" in token else (token, False)


def cseq_method(payload: bytes, scan: int = CSEQ_SCAN) -> bytes | None:
    """The method a response's CSeq names, found as the kernel's scan finds it: the
    first header line "CSeq:" before the blank line, at most 8 blanks, 1 to 10
    digits, 1 to 8 blanks, and the method up to CR, LF, SP or HT, at most 16
    bytes with no NUL, all within the first ``scan`` bytes. None otherwise."""
    window = payload[:scan]
    match = _CSEQ_LINE.search(window, 0, header_end(window))
    if match is None:
        return None
    at = _skip_blanks(window, match.end())
    if at - match.end() > CSEQ_BLANKS:
        return None
    number = at
    while at < len(window) and 0x30 <= window[at] <= 0x39:
        at += 1
    if not 0 < at - number <= CSEQ_DIGITS:
        return None
    method = _skip_blanks(window, at)
    if not 0 < method - at <= CSEQ_BLANKS:
        return None
    end = _METHOD_END.search(window, method)
    if end is None or window[end.start()] == 0 or not 0 < end.start() - method <= TOKEN_LEN:
        return None  # cut by the scan, a NUL (padding to the kernel), empty, or longer than it keeps
    return window[method:end.start()]


def _skip_blanks(window: bytes, at: int) -> int:
    while at < len(window) and window[at] in _BLANK:
        at += 1
    return at
