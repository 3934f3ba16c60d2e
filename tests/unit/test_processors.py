"""The built-in processors on records: filter by method, status, number and
header; labels static and from a header, onto a call's every record;
redaction in fields and raw text, lengths kept; sampling by Call-ID; the
chain's failure boundary."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pytest

from tests.support.frames import raw
from tests.support.sip_samples import sip_message
from userspace.boundary import Boundary
from userspace.event import Direction
from userspace.frame import IPProto
from userspace.processors.build import ProcessorSpec, build, parse_specs
from userspace.processors.chain import ProcessorChain
from userspace.records import CallSummary, Parties, Record, SipRecord, StreamReport, encode_json
from userspace.sip import parse_message

NUMBER = "+493012345678"


def message(method: str = "INVITE", call_id: str = "c1", from_user: str = NUMBER,
            to_user: str = "+4940999888", status: int | None = None,
            extra: tuple[str, ...] = ()) -> SipRecord:
    cseq = f"CSeq: 1 {method}"
    start = f"SIP/2.0 {status} Whatever" if status else f"{method} sip:{to_user}@core.example SIP/2.0"
    text = sip_message(start, [
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1",
        f'From: "Alice Example" <sip:{from_user}@edge.example>;tag=a1', f"To: <sip:{to_user}@core.example>",
        f"Call-ID: {call_id}", cseq, f"Contact: <sip:{from_user}@10.0.0.1:5060>", *extra],
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\n")
    return SipRecord(1, "eth0", Direction.INGRESS, IPProto.UDP, raw("10.0.0.1"), 5060, raw("10.0.0.2"), 5060,
                     parse_message(text))


def chain(processors: list[dict[str, Any]], secrets: Mapping[str, str] | None = None,
          plugins: Mapping[str, Any] | None = None) -> ProcessorChain:
    made = build(parse_specs(processors), lambda path: (secrets or {})[path], plugins or {})
    return ProcessorChain(made, Boundary(strict=True))


def sip_of(records: list[Record]) -> list[SipRecord]:
    return [r for r in records if isinstance(r, SipRecord)]


def test_drop_by_method_takes_the_responses_too() -> None:
    c = chain([{"filter": {"drop": {"method": ["OPTIONS", "NOTIFY"]}}}])
    records: list[Record] = [message("OPTIONS", "o1"), message("OPTIONS", "o1", status=200),
                             message("INVITE"), message("NOTIFY", "n1")]
    assert [r.message.method or r.message.status for r in sip_of(c.process(records))] == ["INVITE"]
    assert c.counts() == {"filter": {"dropped": 3, "kept": 1}}


def test_keep_by_number_prefix_and_header_regex() -> None:
    c = chain([{"filter": {"keep": {"number": {"prefix": ["+4930"]}}}},
               {"filter": {"keep": {"header": {"name": "X-Customer", "regex": "^acme-"}}}}])
    records: list[Record] = [message(extra=("X-Customer: acme-7",)),
                             message(call_id="c2", extra=("X-Customer: bob",)),
                             message(call_id="c3", from_user="+4989111", to_user="+4989222",
                                     extra=("X-Customer: acme-1",))]
    assert [r.message.call_id for r in sip_of(c.process(records))] == ["c1"]
    assert set(c.counts()) == {"filter", "filter#2"}


def test_status_classes_and_codes() -> None:
    c = chain([{"filter": {"drop": {"status": ["1xx", "487"]}}}])
    kept = c.process([message(status=100), message(status=180), message(status=200), message(status=487)])
    assert [r.message.status for r in sip_of(kept)] == [200]


def test_a_dropped_invite_takes_its_calls_records_only_when_asked() -> None:
    summary = CallSummary("c1", raw("10.0.0.1"), raw("10.0.0.2"), "a1", None, 1, None, None, 2, 486, "Busy",
                          "rejected")
    report = StreamReport(3, "c1", {"ssrc": 1})
    for calls, kinds in ((False, ["rtp", "call"]), (True, [])):
        c = chain([{"filter": {"drop": {"number": NUMBER}, "calls": calls}}])
        assert [r.kind for r in c.process([message(), report, summary])] == kinds


def test_labels_static_and_from_a_header_reach_the_calls_other_records() -> None:
    c = chain([{"label": {"static": {"site": "fra1"}, "from_header": {"customer": "X-Customer"}}}])
    invite = message(extra=("X-Customer: acme",))
    bye = message("BYE")  # no header: the call's label still
    report = StreamReport(3, "c1", {"ssrc": 1})
    out = c.process([invite, bye, report, StreamReport(4, "other", {})])
    assert [r.labels for r in out] == [{"site": "fra1", "customer": "acme"}] * 3 + [{"site": "fra1"}]
    assert json.loads(encode_json(out[2]))["labels"] == {"site": "fra1", "customer": "acme"}
    assert "labels" not in json.loads(encode_json(message())), "no labels, no key"


def test_redaction_hashes_every_party_in_fields_and_raw_text_keeping_lengths() -> None:
    c = chain([{"redact": {"mode": "hash", "key_file": "/k"}}], {"/k": "a-secret-key-of-some-length"})
    original = message(extra=(f"P-Asserted-Identity: <tel:{NUMBER}>", "Diversion: <sip:+4940777666@x>"))
    (redacted,) = c.process([original])
    assert isinstance(redacted, SipRecord)
    m = redacted.message
    text = m.raw.decode() + encode_json(redacted).decode()
    for secret in (NUMBER, NUMBER.lstrip("+"), "+4940999888", "+4940777666", "Alice Example"):
        assert secret not in text, secret
    assert len(m.raw) == len(original.message.raw) and m.size == original.message.size
    assert m.from_user is not None and len(m.from_user) == len(NUMBER) and m.from_user != NUMBER
    again = c.process([message(call_id="c9")])[0]
    assert isinstance(again, SipRecord) and again.message.from_user == m.from_user, "one value, one token"
    assert original.message.from_user == NUMBER, "the record it was given is not changed"
    assert parse_message(m.raw).from_user == m.from_user, "the raw text still parses alike"


def test_masking_keeps_the_start() -> None:
    c = chain([{"redact": {"mode": "mask", "keep": 5}}])
    (redacted,) = c.process([message()])
    assert isinstance(redacted, SipRecord) and redacted.message.from_user == "+4930" + "*" * 8


def test_redaction_reaches_call_summaries() -> None:
    c = chain([{"redact": {"mode": "mask"}}])
    summary = CallSummary("c1", raw("10.0.0.1"), raw("10.0.0.2"), "a1", None, 1, None, None, 2, 200, None,
                          "bye", parties=Parties(NUMBER, "Alice Example", "+4940999888", "+4940999888", "ua"))
    (out,) = c.process([summary])
    assert NUMBER not in encode_json(out).decode() and "Alice" not in encode_json(out).decode()


def test_a_hash_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="a hash needs a key"):
        chain([{"redact": {"mode": "hash"}}])


def test_sampling_keeps_whole_calls_about_one_in_n() -> None:
    c = chain([{"sample": {"one_in": 4}}])
    records: list[Record] = []
    for n in range(2_000):
        records += [message(call_id=f"call-{n}"), StreamReport(1, f"call-{n}", {})]
    kept = c.process(records)
    calls = {r.message.call_id if isinstance(r, SipRecord) else r.call_id for r in kept}
    assert 400 < len(calls) < 600
    assert len(kept) == 2 * len(calls), "a call is all in or all out"


@pytest.mark.parametrize(("spec", "said"), [
    ({"filter": {"keep": {"method": "INVITE"}, "drop": {"method": "BYE"}}}, "processors[0].filter"),
    ({"filter": {"keep": {"colour": "red"}}}, "processors[0].filter.keep.colour: unknown condition"),
    ({"filter": {"keep": {"header": {"name": "X", "regex": "("}}}}, "not a regular expression"),
    ({"filter": {"keep": {"address": "10.0.0.0/33"}}}, "processors[0].filter.keep.address"),
    ({"label": {"static": {"bad key!": "x"}}}, "a label name"),
    ({"label": {"static": {"k": "x" * 300}}}, "text of 1 to 256"),
    ({"sample": {"one_in": 0}}, "N from 1 to"),
    ({"sample": {"one_in": "²"}}, "N from 1 to"),
    ({"redact": {"mode": "scramble"}}, "mode: hash"),
    ({"teleport": {}}, "unknown processor"),
    ({"plugin": {"name": "nope"}}, "no processor plugin 'nope'"),
])
def test_a_wrong_spec_names_its_key(spec: dict[str, Any], said: str) -> None:
    with pytest.raises(ValueError, match=said.replace("(", r"\(").replace("[", r"\[")):
        chain([spec])


class Exploding:
    name = "boom"
    fail_closed = False

    def process(self, records: list[Record]) -> list[Record]:
        raise RuntimeError("a plugin's bug")

    def counts(self) -> Mapping[str, int]:
        raise RuntimeError("and in its counts")


def test_a_plugin_that_raises_is_counted_and_the_records_go_on() -> None:
    c = ProcessorChain([Exploding()], Boundary(strict=True), plugins=frozenset({"boom"}))
    records: list[Record] = [message()]
    assert c.process(records) == records
    assert c.counts() == {"boom": {"failed": 1}}


def test_a_plugins_first_failure_of_each_kind_is_said() -> None:
    said: list[tuple[str, str]] = []
    c = ProcessorChain([Exploding()], Boundary(strict=True), plugins=frozenset({"boom"}),
                       on_plugin_failure=lambda name, exc: said.append((name, str(exc))))
    for _ in range(3):
        c.process([message()])
    assert said == [("boom", "a plugin's bug")]
    assert c.counts() == {"boom": {"failed": 3}}


def test_a_failing_redaction_lets_nothing_through() -> None:
    redact = build(parse_specs([{"redact": {"mode": "mask"}}]), lambda _p: "", {})[0]
    broken = dataclasses.replace(message(), message=None)  # type: ignore[arg-type]
    c = ProcessorChain([redact], Boundary(strict=False))
    assert c.process([broken, message()]) == []
    assert c.counts()["redact"]["failed_records"] == 2


def test_specs_compare_by_content() -> None:
    a = parse_specs([{"sample": {"one_in": 2}}])
    assert a == parse_specs([{"sample": {"one_in": 2}}]) != parse_specs([{"sample": {"one_in": 3}}])
    assert a[0] == ProcessorSpec.of("sample", {"one_in": 2})


def record_of(text: bytes) -> SipRecord:
    return SipRecord(1, "eth0", Direction.INGRESS, IPProto.UDP, raw("10.0.0.1"), 5060, raw("10.0.0.2"), 5060,
                     parse_message(text))


def redacted_raw(text: bytes, spec: dict[str, Any] | None = None) -> tuple[SipRecord, SipRecord]:
    record = record_of(text)
    (out,) = chain([{"redact": spec or {"mode": "mask"}}]).process([record])
    assert isinstance(out, SipRecord)
    return record, out


@pytest.mark.parametrize("start, headers", [
    ("SIP/2.0 200 OK", ["To: <sip:200@pbx>;tag=2", "From: <sip:125@pbx>;tag=1",
                        "Contact: <sip:5060@10.0.0.1:5060>"]),
    ("INVITE sip:sip@pbx SIP/2.0", ['From: "Call-ID" <sip:sip@pbx>;tag=1', "To: <sip:sip@pbx>"]),
    ("INVITE sip:125@pbx SIP/2.0", ["From: <sip:125@pbx>;tag=125", "To: <sip:200@pbx>"]),
])
def test_redaction_touches_only_the_parties_spans(start: str, headers: list[str]) -> None:
    """Extensions equal to a status code, a port, a tag or a Content-Length; a user
    named sip; a display name Call-ID: the message stays the message."""
    text = sip_message(start, ["Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK125", *headers,
                               "Call-ID: 125-200", "CSeq: 125 INVITE"], b"v=0\r\n" + b"x" * 120)
    before, after = redacted_raw(text)
    b, a = before.message, after.message
    assert (a.status, a.method, a.call_id, a.cseq, a.from_tag, a.via_branch, a.content_length) == \
        (b.status, b.method, b.call_id, b.cseq, b.from_tag, b.via_branch, b.content_length)
    assert a.body == b.body and len(a.raw) == len(b.raw)
    assert a.from_user != b.from_user and set(a.from_user or "") == {"*"}


def test_every_identity_header_and_number_parameter_and_both_display_names() -> None:
    text = sip_message(f"INVITE sip:{NUMBER};rn=+4930999000;npdi@gw SIP/2.0", [
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1", 'f: "Jürgen Ü" <sip:+4930111@x>;tag=1',
        "t: Bob Callee <sip:+4940222@x>", "Call-ID: c1", "CSeq: 1 INVITE",
        "History-Info: <sip:+4930333@x?Reason=SIP%3Bcause%3D302>;index=1",
        "P-Called-Party-ID: <tel:+4930444>",
        'P-Asserted-Identity: "O\'Brien \\"Sean\\"" <tel:+49-30-555>', "m: <sip:+4930666@10.0.0.1:5060>",
        "Diversion: <sip:+4930777@x>;reason=unconditional;counter=1"])
    before, after = redacted_raw(text)
    raw_after = after.message.raw
    for secret in (NUMBER.encode(), b"+4930999000", b"+4930111", "Jürgen".encode(), b"Bob Callee",
                   b"+4940222", b"+4930333", b"+4930444", b"O'Brien", b"+49-30-555", b"+4930666",
                   b"+4930777"):
        assert secret not in raw_after and secret not in encode_json(after), secret
    assert len(raw_after) == len(before.message.raw), "byte lengths kept, non-ASCII included"
    assert b"index=1" in raw_after and b"10.0.0.1:5060" in raw_after, "protocol values stay"


def test_a_label_copied_from_a_party_header_is_redacted_too() -> None:
    c = chain([{"label": {"from_header": {"caller": "P-Asserted-Identity"}}}, {"redact": {"mode": "mask"}}])
    (out,) = c.process([message(extra=(f"P-Asserted-Identity: <sip:{NUMBER}@x>",))])
    assert out.labels is not None and NUMBER not in out.labels["caller"] and "*" in out.labels["caller"]


def test_a_message_that_does_not_parse_after_redaction_is_dropped_not_passed() -> None:
    c = chain([{"redact": {"mode": "mask"}}])
    spans = "".join(f"Contact: <sip:{n:04d}@x>\r\n" for n in range(300))
    record = record_of(sip_message("INVITE sip:1234@x SIP/2.0", [
        "From: <sip:1@x>;tag=1", "To: <sip:2@x>", "Call-ID: h", "CSeq: 1 INVITE", spans.rstrip()]))
    assert c.process([record]) == []
    assert c.counts()["redact"] == {"dropped_too_many_parties": 1}


def test_a_short_hash_key_is_refused() -> None:
    with pytest.raises(ValueError, match="a key needs at least 16"):
        chain([{"redact": {"mode": "hash", "key_file": "/k"}}], {"/k": "short"})


def test_a_mask_keeps_at_most_half() -> None:
    c = chain([{"redact": {"mode": "mask", "keep": 16}}])
    (out,) = c.process([message()])
    assert isinstance(out, SipRecord) and out.message.from_user == NUMBER[:6] + "*" * 7


def test_with_calls_a_dropped_invite_takes_the_calls_later_messages_too() -> None:
    c = chain([{"filter": {"drop": {"header": {"name": "User-Agent", "regex": "^friendly-scanner"}},
                           "calls": True}}])
    invite = message(extra=("User-Agent: friendly-scanner",))
    assert c.process([invite, message(status=200), message("BYE")]) == []


def test_the_first_header_value_labels_the_call() -> None:
    c = chain([{"label": {"from_header": {"customer": "X-Customer"}}}])
    out = c.process([message(extra=("X-Customer: acme",)), message(status=200, extra=("X-Customer: evil",))])
    assert [r.labels for r in out] == [{"customer": "acme"}] * 2


def test_a_regex_reads_at_most_a_kilobyte_of_a_value() -> None:
    c = chain([{"filter": {"keep": {"header": {"name": "X-Long", "regex": "x$"}}}}])
    assert c.process([message(extra=("X-Long: " + "a" * 2_000 + "x",))]) == []
    assert len(c.process([message(extra=("X-Long: " + "a" * 100 + "x",))])) == 1


class ReturnsNothing:
    name = "lazy"
    fail_closed = False

    def process(self, records: list[Record]) -> list[Record]:
        return None  # type: ignore[return-value]

    def counts(self) -> Mapping[str, int]:
        return {"x" * 100: 1, "odd": "many"}  # type: ignore[dict-item]


def test_a_plugin_that_returns_no_list_is_counted_and_its_odd_counts_trimmed() -> None:
    c = ProcessorChain([ReturnsNothing()], Boundary(strict=True), plugins=frozenset({"lazy"}))
    records: list[Record] = [message()]
    assert c.process(records) == records
    assert c.counts() == {"lazy": {"x" * 64: 1, "failed": 1}}


def test_a_mask_never_keeps_half_a_character() -> None:
    c = chain([{"redact": {"mode": "mask", "keep": 3}}])  # byte 3 is inside the second ü
    (out,) = c.process([message(from_user="üüüü")])
    assert isinstance(out, SipRecord) and out.message.from_user == "ü" + "*" * 6
    assert c.counts()["redact"] == {"messages": 1}
