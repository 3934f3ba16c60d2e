"""Keep or drop SIP messages by what they say. With ``calls``, a call's
other records — its summary, RTP and RTCP reports — follow the verdict of
its INVITE; without, call tracking and its records are untouched (a
dropped message still counted in its call)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from userspace.processors.api import Verdicts
from userspace.processors.match import Condition, conditions
from userspace.records import CallSummary, Record, SipRecord

MAX_CALLS = 200_000  # Call-IDs whose verdict is remembered (calls: true), least recent out


class Filter:
    fail_closed = False

    def __init__(self, keep: bool, when: list[Condition], calls: bool = False, name: str = "filter") -> None:
        self.name = name
        self._keep = keep
        self._when = when
        self._calls = calls
        self._verdicts = Verdicts()
        self._dropped_calls: OrderedDict[int, None] = OrderedDict()  # by hash(Call-ID): 8 bytes a call

    @classmethod
    def from_spec(cls, spec: Any, where: str) -> Filter:
        """{keep: CONDITIONS} or {drop: CONDITIONS}, and optionally calls: true."""
        if not isinstance(spec, dict) or len(set(spec) & {"keep", "drop"}) != 1 or set(spec) - {
                "keep", "drop", "calls"}:
            raise ValueError(f"{where}: {{keep: CONDITIONS}} or {{drop: CONDITIONS}}, "
                             "and calls: true|false")
        keep = "keep" in spec
        calls = spec.get("calls", False)
        if not isinstance(calls, bool):
            raise ValueError(f"{where}.calls: true or false")
        action = "keep" if keep else "drop"
        return cls(keep, conditions(spec[action], f"{where}.{action}"), calls)

    def process(self, records: list[Record]) -> list[Record]:
        passed = [r for r in records if self._passes(r)]
        self._verdicts.add("dropped", len(records) - len(passed))
        self._verdicts.add("kept", len(passed))
        return passed

    def _passes(self, record: Record) -> bool:
        if isinstance(record, SipRecord):
            m = record.message
            initial = m.method == "INVITE" and m.to_tag is None
            if self._calls and not initial and hash(m.call_id) in self._dropped_calls:
                return False  # a later message of a call whose INVITE this filter dropped
            passes = all(condition(record) for condition in self._when) == self._keep
            if self._calls and initial:
                self._remember(hash(m.call_id), passes)
            return passes
        if not self._calls or not record.call_id:
            return True
        dropped = hash(record.call_id) in self._dropped_calls
        if isinstance(record, CallSummary):
            self._dropped_calls.pop(hash(record.call_id), None)  # the call is over
        return not dropped

    def _remember(self, call: int, passes: bool) -> None:
        if passes:
            self._dropped_calls.pop(call, None)
            return
        self._dropped_calls[call] = None
        self._dropped_calls.move_to_end(call)
        if len(self._dropped_calls) > MAX_CALLS:
            self._dropped_calls.popitem(last=False)

    def counts(self) -> Mapping[str, int]:
        return self._verdicts.snapshot()
