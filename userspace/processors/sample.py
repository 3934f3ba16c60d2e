"""Keep one call in N, whole: the choice is a hash of the Call-ID, so every
record of a call — in any worker, on any node — is in or out together."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from userspace.processors.api import Verdicts
from userspace.records import Record, SipRecord

MAX_ONE_IN = 1_000_000


class Sample:
    fail_closed = False

    def __init__(self, one_in: int, name: str = "sample") -> None:
        self.name = name
        self._one_in = one_in
        self._verdicts = Verdicts()

    @classmethod
    def from_spec(cls, spec: Any, where: str) -> Sample:
        """{one_in: N}"""
        one_in = spec.get("one_in") if isinstance(spec, dict) and set(spec) == {"one_in"} else None
        if isinstance(one_in, str) and one_in.isascii() and one_in.isdigit():  # not '²', which int() refuses
            one_in = int(one_in)
        if not isinstance(one_in, int) or isinstance(one_in, bool) or not 1 <= one_in <= MAX_ONE_IN:
            raise ValueError(f"{where}: {{one_in: N}}, N from 1 to {MAX_ONE_IN}")
        return cls(one_in)

    def process(self, records: list[Record]) -> list[Record]:
        kept = [r for r in records if self._in(r)]
        self._verdicts.add("kept", len(kept))
        self._verdicts.add("sampled_out", len(records) - len(kept))
        return kept

    def _in(self, record: Record) -> bool:
        call_id = record.message.call_id if isinstance(record, SipRecord) else record.call_id
        if not call_id:
            return True  # media of no call, say: not a call to sample
        # Not the hash that routes Call-IDs to workers: a sample must not follow the shards.
        digest = hashlib.blake2b(call_id.encode(errors="surrogateescape"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self._one_in == 0

    def counts(self) -> Mapping[str, int]:
        return self._verdicts.snapshot()
