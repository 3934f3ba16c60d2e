"""Subscriber numbers and user names out of records before they leave the
host: the parties of every SIP message and call summary (From, To,
Request-URI, P-Asserted-Identity, Contact users and From's display name)
are replaced by a keyed hash or masked — in the record's fields and
wherever they occur in the message's raw text, which HEP sends. Tokens keep
the length of what they replace, so Content-Length stays true, and the same
value always gives the same token (calls stay comparable). Capture files
(pcap) hold the packets as they were: not redacted (said at start)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from userspace.processors.api import Verdicts
from userspace.records import CallSummary, Parties, Record, SipRecord
from userspace.sip import SipMessage
from userspace.uri import party

MIN_VALUE = 3   # shorter user parts ("a", "10") are not worth replacing everywhere in a message
_MASK = "*"


class Redact:
    fail_closed = True  # a failure must not let a number through: the batch is dropped, counted

    def __init__(self, key: bytes | None, keep: int = 0, name: str = "redact") -> None:
        self.name = name
        self._key = key       # None: mask instead of hash
        self._keep = keep     # mask: characters kept at the start
        self._verdicts = Verdicts()

    @classmethod
    def from_spec(cls, spec: Any, where: str, key: bytes | None) -> Redact:
        """{mode: hash} (with key_file: FILE, read by the caller) or {mode: mask, keep: N}."""
        if not isinstance(spec, dict) or spec.get("mode") not in ("hash", "mask") or set(spec) - {
                "mode", "keep", "key_file"}:
            raise ValueError(f"{where}: {{mode: hash, key_file: FILE}} or {{mode: mask, keep: N}}")
        keep = spec.get("keep", 0)
        if not isinstance(keep, int) or isinstance(keep, bool) or not 0 <= keep <= 16:
            raise ValueError(f"{where}.keep: characters kept at the start, 0 to 16")
        if spec["mode"] == "hash" and key is None:
            raise ValueError(f"{where}.key_file: a hash needs a key (an unkeyed hash of a number is "
                             "reversed by trying every number)")
        return cls(key if spec["mode"] == "hash" else None, keep)

    def process(self, records: list[Record]) -> list[Record]:
        return [self._redacted(r) for r in records]

    def _redacted(self, record: Record) -> Record:
        if isinstance(record, SipRecord):
            self._verdicts.add("messages")
            return dataclasses.replace(record, message=self._message(record.message), encoded=None)
        if isinstance(record, CallSummary) and record.parties is not None:
            self._verdicts.add("calls")
            return dataclasses.replace(record, parties=self._parties(record.parties), encoded=None)
        return record

    def token(self, value: str) -> str:
        """The same length as ``value``: a keyed hash in hex, or a mask."""
        if self._key is None:
            return value[:self._keep] + _MASK * max(0, len(value) - self._keep)
        digest = hmac.new(self._key, value.encode(errors="surrogateescape"), hashlib.sha256).hexdigest()
        return (digest * (len(value) // len(digest) + 1))[:len(value)]

    def _message(self, m: SipMessage) -> SipMessage:
        users = _users(m)
        text = m.raw.decode("utf-8", "surrogateescape")
        for value in sorted(users, key=len, reverse=True):  # "+4930123" before "4930123"
            text = text.replace(value, self.token(value))
        raw = text.encode("utf-8", "surrogateescape")
        return dataclasses.replace(
            m, request_uri=self._text(m.request_uri, users), from_user=self._text(m.from_user, users),
            to_user=self._text(m.to_user, users), ruri_user=self._text(m.ruri_user, users),
            from_display=self._text(m.from_display, users), head=self._text(m.head, users) or "",
            body=raw[len(raw) - len(m.body):] if m.body else m.body, source=raw, size=len(raw), _lazy=None)

    def _text(self, value: str | None, users: set[str]) -> str | None:
        if value is None:
            return None
        for user in sorted(users, key=len, reverse=True):
            value = value.replace(user, self.token(user))
        return value

    def _parties(self, p: Parties) -> Parties:
        named = (p.from_user, p.to_user, p.ruri_user, p.from_display)
        users = {v for v in named if v and len(v) >= MIN_VALUE}
        for value in list(users):
            users |= _variants(value)
        text = self._text
        return dataclasses.replace(p, from_user=text(p.from_user, users), to_user=text(p.to_user, users),
                                   ruri_user=text(p.ruri_user, users),
                                   from_display=text(p.from_display, users))

    def counts(self) -> Mapping[str, int]:
        return self._verdicts.snapshot()


def _users(m: SipMessage) -> set[str]:
    """Every party's user part and display name the message names, and their other spellings."""
    found = {m.from_user, m.to_user, m.ruri_user, m.from_display}
    for name in ("p-asserted-identity", "p-preferred-identity", "remote-party-id", "diversion", "contact",
                 "referred-by", "refer-to"):
        for value in m.values(name):
            found |= set(party(value))  # (display name, user)
    users = {u for u in found if u and len(u) >= MIN_VALUE}
    for value in list(users):
        users |= _variants(value)
    return users


def _variants(value: str) -> set[str]:
    """A number also written without its + or its tel:/country prefix's punctuation."""
    digits = "".join(c for c in value if c.isdigit())
    return {digits} if len(digits) >= MIN_VALUE and digits != value and value.lstrip("+").replace(
        "-", "").replace(" ", "").replace(".", "").isdigit() else set()
