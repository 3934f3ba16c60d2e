"""``example.trunk_tag``: label each SIP record with the trunk its destination
port belongs to, and count the records of each trunk.

    processors:
      - plugin:
          name: example.trunk_tag
          options:
            ports: {5060: public, 5080: carrier}
            label: trunk      # the label's name (default: trunk)
            fail_every: 0     # raise on every Nth batch (a test of otus-ebpf's isolation; 0: never)

A request to port 5080 is the carrier trunk's; its response, sent back to the
port the request came from, is that port's trunk (or untagged). Records that
are not SIP pass unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from userspace.processors.api import Processor, Verdicts
from userspace.records import Record, SipRecord

# The plugin API this module was written for (userspace.processors.api.API_VERSION
# then): otus-ebpf refuses it if its own major version differs.
OTUS_API_VERSION = 1
UNTAGGED = "untagged"  # the verdict of a SIP record whose port is no trunk's
MAX_TRUNKS = 1024      # ports named: a verdict each in otus-ebpf's metrics
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")  # as otus-ebpf's label names
OPTIONS = ("ports", "label", "fail_every")


class TrunkTag:
    # A batch this fails on passes on unlabelled: nothing here must be kept from an output.
    fail_closed = False

    def __init__(self, trunks: Mapping[int, str], label: str = "trunk", fail_every: int = 0) -> None:
        self.name = "example.trunk_tag"  # otus-ebpf names it plugin:example.trunk_tag
        self._trunks = dict(trunks)
        self._label = label
        self._fail_every = fail_every
        self._batches = 0
        self._verdicts = Verdicts()

    def process(self, records: list[Record]) -> list[Record]:
        self._batches += 1
        if self._fail_every and self._batches % self._fail_every == 0:
            raise RuntimeError(f"batch {self._batches}: fails as configured (fail_every: {self._fail_every})")
        return [self._tagged(r) if isinstance(r, SipRecord) else r for r in records]

    def _tagged(self, record: SipRecord) -> Record:
        trunk = self._trunks.get(record.dport)
        if trunk is None:
            self._verdicts.add(UNTAGGED)
            return record
        self._verdicts.add(trunk)
        # A changed copy, never the record itself: it may be encoded already, and held elsewhere.
        return dataclasses.replace(record, labels={**(record.labels or {}), self._label: trunk}, encoded=None)

    def counts(self) -> Mapping[str, int]:
        return self._verdicts.snapshot()


def trunk_tag(options: Mapping[str, Any]) -> Processor:
    """The entry point. Judges its options (ValueError says what is wrong, and
    otus-ebpf says where); keeps nothing outside the processor it returns."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {', '.join(unknown)} (expected: {', '.join(OPTIONS)})")
    label = options.get("label", "trunk")
    if not isinstance(label, str) or not _NAME.fullmatch(label):
        raise ValueError(f"label: letters, digits, . _ - (a letter or _ first), not {label!r}")
    fail_every = options.get("fail_every", 0)
    if not isinstance(fail_every, int) or isinstance(fail_every, bool) or fail_every < 0:
        raise ValueError(f"fail_every: a whole number, 0 for never, not {fail_every!r}")
    return TrunkTag(_trunks(options.get("ports")), label, fail_every)


def _trunks(ports: Any) -> dict[int, str]:
    if not isinstance(ports, Mapping) or not ports:
        raise ValueError("ports: a mapping of port to trunk name, e.g. {5060: public, 5080: carrier}")
    if len(ports) > MAX_TRUNKS:
        raise ValueError(f"ports: at most {MAX_TRUNKS}")
    trunks = {}
    for port, trunk in ports.items():
        # A port arrives as text: otus-ebpf hands options over as JSON, whose keys are text.
        number = int(port) if isinstance(port, str) and port.isascii() and port.isdigit() else port
        if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
            raise ValueError(f"ports: {port!r} is not a port (1..65535)")
        if not isinstance(trunk, str) or not _NAME.fullmatch(trunk) or trunk == UNTAGGED:
            raise ValueError(f"ports.{port}: a trunk name of letters, digits, . _ - (not {UNTAGGED!r}), "
                             f"not {trunk!r}")
        trunks[number] = trunk
    return trunks
