"""docs/RECORDS.md stays true: each example has exactly the fields the code emits."""

from __future__ import annotations

import json
import re
import struct

import pytest

from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.paths import REPO
from tests.unit.test_sdp_calls import ANSWER, OFFER, message
from userspace.event import Kind
from userspace.pipeline import Pipeline

DOC = (REPO / "docs" / "RECORDS.md").read_text()


def documented(kind: str) -> dict[str, object]:
    match = re.search(rf"## `{kind}`.*?```json\n(.*?)\n```", DOC, re.DOTALL)
    assert match, f"no example for {kind}"
    example: dict[str, object] = json.loads(match.group(1))
    return example


def emitted() -> dict[str, dict[str, object]]:
    pipeline = Pipeline({}, 0)
    out = []
    invite = message("INVITE sip:b@y SIP/2.0", "1 INVITE", OFFER)
    ok = message("SIP/2.0 200 OK", "1 INVITE", ANSWER, to_tag=";tag=t")
    for data, src, dst in [(invite, "10.0.0.1", "10.0.0.2"), (ok, "10.0.0.2", "10.0.0.1")]:
        out += pipeline.process([ring_record(ethernet(ipv4(udp(data), src=src, dst=dst)))])
    rtp = bytes([0x80, 0]) + bytes(10) + b"x" * 20
    out += pipeline.process([ring_record(ethernet(ipv4(udp(rtp, 1, 40000), dst="10.0.0.1")), kind=Kind.RTP)])
    rtcp = struct.pack("!BBHI", 0x81, 201, 7, 0xBEEF) + struct.pack("!IIIIII", 0, 3, 9, 80, 0, 0)
    out += pipeline.process([ring_record(ethernet(ipv4(udp(rtcp, 1, 40001), dst="10.0.0.1")),
                                         kind=Kind.RTCP)])
    bye = message("BYE sip:b@y SIP/2.0", "2 BYE", to_tag=";tag=t")
    out += pipeline.process([ring_record(ethernet(ipv4(udp(bye))))])
    return {str(r.to_dict()["kind"]): r.to_dict() for r in out}


@pytest.mark.parametrize("kind", ["sip", "call", "rtp", "rtcp"])
def test_documented_example_has_exactly_the_emitted_fields(kind: str) -> None:
    assert set(documented(kind)) == set(emitted()[kind])
    assert documented(kind)["schema"] == emitted()[kind]["schema"]
