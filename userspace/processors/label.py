"""Tag records with where they came from: static key/values for every record,
and values copied from a header (X-Customer, say) of a call's messages onto
all of that call's records — its summary and its media reports too."""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from userspace.processors.api import Verdicts
from userspace.records import CallSummary, Record, SipRecord

MAX_CALLS = 200_000   # calls whose header labels are remembered, least recent out
MAX_VALUE = 256       # characters of a label value copied from a header
MAX_LABELS = 32
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


class Label:
    fail_closed = False

    def __init__(self, static: Mapping[str, str], from_headers: Mapping[str, str],
                 name: str = "label") -> None:
        self.name = name
        self._static = dict(static)
        self._from_headers = dict(from_headers)  # label -> header name
        self._calls: OrderedDict[int, dict[str, str]] = OrderedDict()  # by hash(Call-ID)
        self._verdicts = Verdicts()

    @classmethod
    def from_spec(cls, spec: Any, where: str) -> Label:
        """{static: {KEY: VALUE}, from_header: {KEY: HEADER}}, either or both."""
        if not isinstance(spec, dict) or not spec or set(spec) - {"static", "from_header"}:
            raise ValueError(f"{where}: static: {{KEY: VALUE}} and/or from_header: {{KEY: HEADER}}")
        static = _pairs(spec.get("static", {}), f"{where}.static")
        headers = _pairs(spec.get("from_header", {}), f"{where}.from_header")
        if len(static) + len(headers) > MAX_LABELS:
            raise ValueError(f"{where}: at most {MAX_LABELS} labels")
        return cls(static, headers)

    def process(self, records: list[Record]) -> list[Record]:
        return [self._labelled(r) for r in records]

    def _labelled(self, record: Record) -> Record:
        found = dict(self._static)
        if self._from_headers:
            found |= self._of_call(record)
        if not found:
            return record
        self._verdicts.add("labelled")
        return dataclasses.replace(record, labels={**(record.labels or {}), **found}, encoded=None)

    def _of_call(self, record: Record) -> dict[str, str]:
        if isinstance(record, SipRecord):
            call_id: str | None = record.message.call_id
            seen = {label: value[:MAX_VALUE] for label, header in self._from_headers.items()
                    if (value := record.message.header(header)) is not None}
            if seen:
                known = self._calls.setdefault(hash(record.message.call_id), {})
                for label, value in seen.items():
                    known.setdefault(label, value)  # the first value stands: an answer cannot relabel a call
                self._calls.move_to_end(hash(record.message.call_id))
                if len(self._calls) > MAX_CALLS:
                    self._calls.popitem(last=False)
        else:
            call_id = record.call_id
        if not call_id:
            return {}
        found = self._calls.get(hash(call_id), {})
        if isinstance(record, CallSummary):
            self._calls.pop(hash(call_id), None)  # the call is over: its summary is its last record
        return dict(found)

    def counts(self) -> Mapping[str, int]:
        return self._verdicts.snapshot()


def _pairs(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: a mapping of label names to text")
    for key, text in value.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise ValueError(f"{where}.{key}: a label name is a letter or _, then up to 63 of "
                             "letters, digits, . _ -")
        if not isinstance(text, str | int) or isinstance(text, bool) or not 0 < len(str(text)) <= MAX_VALUE:
            raise ValueError(f"{where}.{key}: text of 1 to {MAX_VALUE} characters")
    return {key: str(text) for key, text in value.items()}
