"""Subscriber numbers and names out of records before they leave the host.

In each SIP message the parties are found where SIP puts them — the
Request-URI, and the From, To, Contact and identity headers (P-Asserted-
and P-Preferred-Identity, Remote-Party-ID, Diversion, History-Info,
P-Called-Party-ID, P-Served-User, Referred-By, Refer-To; compact forms too)
— and there only, their spans replaced in the raw bytes: URI user parts,
display names (quoted or not), and URI parameter values that are numbers
(`;rn=+4930…`). The redacted message is parsed again, and the record is
made from that parse, so its fields, its raw text (what HEP sends) and its
labels agree. Tokens have the byte length of what they replace, so
Content-Length stays true; the same value always gives the same token.
Call summaries' parties, and labels that repeat a redacted value, are
replaced too. Fails closed: a message that does not parse again is dropped
and counted, never passed on. Not redacted: Call-IDs (the key every output
joins calls on), bodies, other headers (docs/PROCESSORS.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Iterator, Mapping
from typing import Any

from userspace.errors import DecodeError
from userspace.processors.api import Verdicts
from userspace.records import CallSummary, Parties, Record, SipRecord
from userspace.sip import parse_message

MIN_KEY_BYTES = 16   # a shorter HMAC key is guessable
MAX_SPANS = 256      # parties' spans in one message: past it the message is dropped (a hostile one)
_MASK = b"*"
IDENTITY_HEADERS = frozenset({
    b"from", b"f", b"to", b"t", b"contact", b"m", b"p-asserted-identity", b"p-preferred-identity",
    b"remote-party-id", b"diversion", b"history-info", b"p-called-party-id", b"p-served-user",
    b"referred-by", b"b", b"refer-to", b"r"})
# An identity header's value, its folded continuation lines with it (one pass over the head).
_IDENTITY_LINE = re.compile(
    rb"(?im)^(?:" + b"|".join(re.escape(h) for h in sorted(IDENTITY_HEADERS, key=len, reverse=True))
    + rb")[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)")
_QUOTED = re.compile(rb'"((?:[^"\\\r\n]|\\.)*)"')
_SIP_USER = re.compile(rb"(?i)sips?:([^@>,\s?\"]+)@")  # user parameters (;rn=..., ;isub=...) with it
_TEL_USER = re.compile(rb"(?i)tel:([^;>,\s?\"]+)")
# A URI or header parameter whose value is a number (;rn=+4930..., ;isub=...), not the
# dialog's own identifiers (tag, branch) nor protocol values (expires, q, rport...).
_NUMBER_PARAM = re.compile(rb";[ \t]*([A-Za-z0-9_.!%*+`'~-]+)[ \t]*=[ \t]*(\+?[0-9][0-9\-. ()]{2,}[0-9])")
_PROTOCOL_PARAMS = frozenset({b"tag", b"branch", b"rport", b"received", b"maddr", b"ttl", b"expires", b"q",
                              b"cause", b"index", b"reg-id", b"+sip.instance", b"transport", b"lr"})
_BARE_DISPLAY = re.compile(rb"(?:^|,)[ \t]*([^\s\",<;:][^\",<;]*?)[ \t]*<")


class Redact:
    fail_closed = True  # a failure must not let a number through: the batch is dropped, counted

    def __init__(self, key: bytes | None, keep: int = 0, name: str = "redact") -> None:
        self.name = name
        self._key = key       # None: mask instead of hash
        self._keep = keep     # mask: characters kept at the start (at most half of a value)
        self._verdicts = Verdicts()

    @classmethod
    def from_spec(cls, spec: Any, where: str, key: bytes | None) -> Redact:
        """{mode: hash, key_file: FILE} (the key read by the caller) or {mode: mask, keep: N}."""
        if not isinstance(spec, dict) or spec.get("mode") not in ("hash", "mask") or set(spec) - {
                "mode", "keep", "key_file"}:
            raise ValueError(f"{where}: {{mode: hash, key_file: FILE}} or {{mode: mask, keep: N}}")
        keep = spec.get("keep", 0)
        if not isinstance(keep, int) or isinstance(keep, bool) or not 0 <= keep <= 16:
            raise ValueError(f"{where}.keep: characters kept at the start, 0 to 16")
        if spec["mode"] == "mask":
            return cls(None, keep)
        if key is None:
            raise ValueError(f"{where}.key_file: a hash needs a key (an unkeyed hash of a number is "
                             "reversed by trying every number)")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"{where}.key_file: holds {len(key)} bytes, a key needs at least "
                             f"{MIN_KEY_BYTES}")
        return cls(key, keep)

    def process(self, records: list[Record]) -> list[Record]:
        out = []
        for record in records:
            redacted = self._redacted(record)
            if redacted is not None:
                out.append(redacted)
        return out

    def _redacted(self, record: Record) -> Record | None:
        if isinstance(record, SipRecord):
            return self._sip(record)
        if isinstance(record, CallSummary) and record.parties is not None:
            self._verdicts.add("calls")
            return dataclasses.replace(record, parties=self._parties(record.parties), encoded=None,
                                       labels=self._labels(record.labels, _named(record.parties)))
        return record

    def _sip(self, record: SipRecord) -> SipRecord | None:
        raw = record.message.raw
        spans = list(_party_spans(raw))
        if len(spans) > MAX_SPANS:
            self._verdicts.add("dropped_too_many_parties")
            return None
        redacted = self._replace(raw, spans)
        try:
            message = parse_message(redacted)
        except DecodeError:
            self._verdicts.add("dropped_unparseable")
            return None
        if message.call_id != record.message.call_id or message.cseq != record.message.cseq:
            self._verdicts.add("dropped_unparseable")
            return None
        self._verdicts.add("messages")
        values = {raw[a:b].decode("utf-8", "replace") for a, b in spans}
        labels = self._labels(record.labels, values)
        return dataclasses.replace(record, message=message, encoded=None, labels=labels)

    def _replace(self, raw: bytes, spans: list[tuple[int, int]]) -> bytes:
        out, at = bytearray(), 0
        for start, end in sorted(spans):
            if start < at:
                continue  # overlapping: the first one stands
            out += raw[at:start] + self.token(raw[start:end])
            at = end
        return bytes(out + raw[at:])

    def token(self, value: bytes) -> bytes:
        """As many bytes as ``value``: a keyed hash in hex, or a mask keeping at most half."""
        if self._key is None:
            keep = min(self._keep, len(value) // 2)
            while 0 < keep < len(value) and value[keep] & 0xC0 == 0x80:
                keep -= 1  # never half a UTF-8 character: the token must decode
            return value[:keep] + _MASK * (len(value) - keep)
        digest = hmac.new(self._key, value, hashlib.sha256).hexdigest().encode()
        return (digest * (len(value) // len(digest) + 1))[:len(value)]

    def _text(self, value: str | None) -> str | None:
        return None if value is None else self.token(value.encode("utf-8", "surrogateescape")).decode()

    def _parties(self, p: Parties) -> Parties:
        text = self._text
        return dataclasses.replace(p, from_user=text(p.from_user), to_user=text(p.to_user),
                                   ruri_user=text(p.ruri_user), from_display=text(p.from_display))

    def _labels(self, labels: dict[str, str] | None, values: set[str]) -> dict[str, str] | None:
        """A label copied from a header before redaction holds what was redacted: replaced too."""
        if not labels:
            return labels
        ordered = sorted((v for v in values if v), key=len, reverse=True)
        out = {}
        for name, text in labels.items():
            for value in ordered:
                if value in text:
                    text = text.replace(value, self._text(value) or "")  # noqa: PLW2901
            out[name] = text
        return out

    def counts(self) -> Mapping[str, int]:
        return self._verdicts.snapshot()


def _named(p: Parties) -> set[str]:
    return {v for v in (p.from_user, p.to_user, p.ruri_user, p.from_display) if v}


def _party_spans(raw: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of every user part, display name and number parameter in the
    Request-URI and the identity headers' values (folded lines included)."""
    head_end = raw.find(b"\r\n\r\n")
    head_end = len(raw) if head_end < 0 else head_end
    line_end = raw.find(b"\r\n", 0, head_end)
    line_end = head_end if line_end < 0 else line_end
    if not raw.startswith(b"SIP/"):  # a request: its Request-URI
        uri_start, uri_end = raw.find(b" ", 0, line_end) + 1, raw.rfind(b" ", 0, line_end)
        if 0 < uri_start < uri_end:
            yield from _spans_in(raw, uri_start, uri_end, displays=False)
    for match in _IDENTITY_LINE.finditer(raw, line_end, head_end):
        yield from _spans_in(raw, match.start(1), match.end(1), displays=True)


def _spans_in(raw: bytes, start: int, end: int, displays: bool) -> Iterator[tuple[int, int]]:
    text = raw[start:end]
    for pattern in (_SIP_USER, _TEL_USER, *((_QUOTED, _BARE_DISPLAY) if displays else ())):
        for match in pattern.finditer(text):
            if match.end(1) > match.start(1):
                yield start + match.start(1), start + match.end(1)
    for match in _NUMBER_PARAM.finditer(text):
        if match.group(1).lower() not in _PROTOCOL_PARAMS:
            yield start + match.start(2), start + match.end(2)
