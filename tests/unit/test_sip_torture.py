"""SIP parsing against hostile and unusual input, in the spirit of the RFC 4475
torture tests (vectors written here from the RFC's descriptions, not copied):
valid messages parse with the right fields, invalid ones are rejected with a
reason or flagged, and nothing raises anything but DecodeError."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.sip_samples import INVITE, SDP, sip_message
from userspace.errors import DecodeError, Malformed, Truncated
from userspace.sip import parse_message


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# §3.1.1.1 wsinv-like: odd whitespace, folded lines, compact and mixed-case names.
TORTUOUS = crlf(
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\n"
    "TO :\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\n"
    "from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\n  ;\n  tag = 98asjd8\n"
    "MaX-fOrWaRdS: 0068\n"
    "Call-ID: wsinv.ndaksdj@192.0.2.1\n"
    "Content-Length   : 0\n"
    "cseq: 0009\n  INVITE\n"
    "Via  : SIP  /   2.0\n /UDP\n    192.0.2.2;rport;branch=390skdjuw\n"
    "s :\n"
    "NewFangledHeader:   newfangled value\n continued newfangled value\n"
    "UnknownHeaderWithUnusualValue: ;;,,;;,;\n"
    "v:  SIP/2.0/TCP     spindle.example.com   ;\n  branch  =   z9hG4bK9ikj8  ,\n"
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\n z9hG4bK30239\n"
    "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\n      newvalue ;\n"
    "  secondparam ; q = 0.33\n\n"
)


def test_tortuous_invite_parses_with_the_right_fields() -> None:
    m = parse_message(TORTUOUS)
    assert (m.method, m.call_id, m.cseq, m.cseq_method) == ("INVITE", "wsinv.ndaksdj@192.0.2.1", 9, "INVITE")
    assert (m.to_tag, m.from_tag) == ("1918181833n", "98asjd8")
    assert m.via_branch == "390skdjuw"
    assert m.via_rport == ""
    assert len(m.vias) == 3  # one Via header plus a two-value compact v:
    assert m.header("NEWFANGLEDHEADER") == "newfangled value continued newfangled value"
    assert m.header("subject") == ""
    assert m.contact is not None and "secondparam" in m.contact
    assert m.defects == ()


# §3.1.1.2-like: a method token made of every legal token character.
def test_unusual_method_token_is_valid() -> None:
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    uri = "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com"
    headers = ["From: <sip:a@x>;tag=1", "To: <sip:b@y>", "Call-ID: intmeth", f"CSeq: 139122385 {method}",
               "Via: SIP/2.0/TCP h;branch=z9"]
    m = parse_message(sip_message(f"{method} {uri} SIP/2.0", headers))
    assert (m.method, m.cseq_method, m.defects) == (method, method, ())


def test_escaped_and_null_characters_in_the_uri_are_fine() -> None:
    m = parse_message(sip_message("REGISTER sip:example.com SIP/2.0", [
        "To: sip:null-%00-null@example.com", "From: sip:null-%00-null@example.com;tag=839923423",
        "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd", "CSeq: 14398234 REGISTER",
        "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw"]))
    assert m.from_tag == "839923423" and m.to_tag is None


def test_response_without_reason_phrase_and_with_utf8_reason() -> None:
    base = ["From: <sip:a@x>;tag=1", "To: <sip:b@y>;tag=2", "Call-ID: noreason", "CSeq: 1 INVITE",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1"]
    assert parse_message(sip_message("SIP/2.0 100 ", base)).reason == ""
    assert parse_message(sip_message("SIP/2.0 100", base)).reason == ""
    reason = "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert parse_message(sip_message(f"SIP/2.0 200 {reason}", base)).reason == reason


def test_multipart_body_parts() -> None:
    boundary = "7a9cbec02ceef655"
    body = (f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Type: application/sdp\r\n\r\n").encode() + SDP + \
        f"\r\n--{boundary}--\r\n".encode()
    m = parse_message(sip_message("MESSAGE sip:kumiko@example.org SIP/2.0", [
        "From: <sip:a@x>;tag=1", "To: <sip:b@y>", "Call-ID: mpart01", "CSeq: 1 MESSAGE",
        "Via: SIP/2.0/UDP h;branch=z9", f'Content-Type: multipart/mixed;boundary="{boundary}"'], body))
    assert [p.content_type for p in m.parts] == ["text/plain", "application/sdp"]
    assert m.parts[0].body == b"hello"
    assert m.body_of_type("application/sdp") == SDP


def test_via_sent_by_received_and_headers_of_interest() -> None:
    m = parse_message(sip_message("BYE sip:x@y SIP/2.0", [
        "Via: SIP/2.0/UDP 10.0.0.1:5062;received=192.0.2.9;rport=6000;branch=z9hG4bKa, "
        "SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKb",
        "From: <sip:a@x>;tag=1", "To: <sip:b@y>;tag=2", "Call-ID: c1", "CSeq: 2 BYE",
        "User-Agent: otus-test/1.0", "Reason: Q.850;cause=16;text=\"Normal call clearing\"",
        "P-Asserted-Identity: \"Alice\" <sip:alice@example.com>, <tel:+15551234>",
        "Contact: <sip:a@10.0.0.1:5062>"]))
    assert (m.via_sent_by, m.via_received, m.via_rport) == ("10.0.0.1:5062", "192.0.2.9", "6000")
    assert m.via_branch == "z9hG4bKa" and len(m.vias) == 2
    assert m.user_agent == "otus-test/1.0"
    assert m.reason_header is not None and "cause=16" in m.reason_header
    assert m.values("p-asserted-identity") == ['"Alice" <sip:alice@example.com>', "<tel:+15551234>"]
    assert m.contact == "<sip:a@10.0.0.1:5062>"


@pytest.mark.parametrize(("compact", "full"), [
    ("i", "call-id"), ("f", "from"), ("t", "to"), ("v", "via"), ("m", "contact"), ("l", "content-length"),
    ("c", "content-type"), ("k", "supported"), ("s", "subject"), ("e", "content-encoding"), ("o", "event"),
    ("u", "allow-events"), ("r", "refer-to"), ("x", "session-expires"), ("y", "identity"),
    ("a", "accept-contact"), ("b", "referred-by"),
])
def test_every_compact_form(compact: str, full: str) -> None:
    required = {"i": "Call-ID: c", "f": "From: <sip:a@x>;tag=1", "t": "To: <sip:b@y>", "l": None}
    headers = [h for k, h in required.items() if k != compact and h] + ["CSeq: 1 OPTIONS"]
    value = {"i": "c", "f": "<sip:a@x>;tag=1", "t": "<sip:b@y>", "l": "0"}.get(compact, "v-" + full)
    m = parse_message(("OPTIONS sip:x SIP/2.0\r\n" + "\r\n".join([*headers, f"{compact}: {value}"])
                       + "\r\n\r\n").encode())
    assert m.header(full) == value and m.header(compact) == value


def test_junk_lines_are_reported_not_fatal() -> None:
    m = parse_message(sip_message("OPTIONS sip:x SIP/2.0", [
        "From: <sip:a@x>;tag=1", "To: <sip:b@y>", "Call-ID: c", "CSeq: 1 OPTIONS", "this is no header"]))
    assert m.junk_lines == ("this is no header",)


BASE = ["From: <sip:a@x>;tag=1", "To: <sip:b@y>", "Call-ID: c", "Via: SIP/2.0/UDP h;branch=z9"]


@pytest.mark.parametrize(("message", "error", "reason"), [
    (sip_message("INVITE sip:x SIP/7.0", [*BASE, "CSeq: 1 INVITE"]), Malformed, "start line"),      # badvers
    (sip_message("SIP/2.0 4294967301 better not break the receiver", [*BASE, "CSeq: 1 INVITE"]),
     Malformed, "status"),                                                                          # bigcode
    (sip_message("INVITE <sip:x@y> SIP/2.0", [*BASE, "CSeq: 1 INVITE"]), Malformed, "start line"),  # ltgtruri
    (sip_message("INVITE sip:user@example.com; lr SIP/2.0", [*BASE, "CSeq: 1 INVITE"]),
     Malformed, "start line"),                                                                      # lwsruri
    (sip_message(" INVITE sip:x@y SIP/2.0", [*BASE, "CSeq: 1 INVITE"]), Malformed, "start line"),   # lwsstart
    (sip_message("OPTIONS sip:x@y SIP/2.0 ", [*BASE, "CSeq: 1 OPTIONS"]), Malformed, "start line"),  # trws
    (sip_message("INVITE sip:x SIP/2.0", [*BASE, "CSeq: 36893488147419103232 INVITE"]), Malformed,
     "CSeq"),                                                                                       # scalar02
    (sip_message("INVITE sip:x SIP/2.0", [*BASE, "CSeq: 8 INVITE", "Content-Length: -999"],
                 content_length=False), Malformed, "Content-Length"),                               # ncl
    (sip_message("INVITE sip:x SIP/2.0", [*BASE, "CSeq: 8 INVITE", "Content-Length: 9999"],
                 content_length=False) + b"short body", Truncated, "Content-Length"),               # clerr
    (sip_message("INVITE sip:x SIP/2.0", ["Via: SIP/2.0/UDP h", "CSeq: 1 INVITE"]), Malformed,
     "Call-ID"),                                                                                     # insuf
])
def test_invalid_messages_are_rejected_with_a_reason(message: bytes, error: type[DecodeError],
                                                     reason: str) -> None:
    with pytest.raises(error, match=reason):
        parse_message(message)


def test_cseq_method_mismatch_is_flagged_not_rejected() -> None:                               # mismatch01
    m = parse_message(sip_message("OPTIONS sip:x SIP/2.0", [*BASE, "CSeq: 1 INVITE"]))
    assert m.defects == ("CSeq method INVITE differs from OPTIONS",)


def test_huge_headers_are_bounded() -> None:
    endless = b"OPTIONS sip:x SIP/2.0\r\nX-Long: " + b"a" * 70_000
    with pytest.raises(DecodeError):
        parse_message(endless)


@contextlib.contextmanager
def timed(limit_s: float) -> Iterator[None]:
    """Fail if the block takes longer than ``limit_s`` (GC paused: its pauses are not ours).
    Not a speed test (that is scripts/bench/sip.py): a guard against a pathology such as a
    backtracking regex, which takes seconds; the limit is ~1,000x a normal parse, so a loaded
    machine does not trip it."""
    gc.disable()
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        gc.enable()
    assert elapsed < limit_s, f"took {elapsed * 1000:.1f} ms"


PATHOLOGICAL_S = 0.1
MUTATIONS = st.lists(st.tuples(st.integers(0, len(INVITE) - 1), st.binary(min_size=0, max_size=6)),
                     min_size=1, max_size=6)


@settings(max_examples=500, deadline=None)
@given(MUTATIONS)
def test_mutated_messages_parse_or_raise_decode_error_quickly(edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(INVITE)
    for position, noise in edits:
        data[position:position + len(noise)] = noise
    with timed(PATHOLOGICAL_S), contextlib.suppress(DecodeError):
        parse_message(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_raw_bytes_parse_or_raise_decode_error_quickly(data: bytes) -> None:
    with timed(PATHOLOGICAL_S), contextlib.suppress(DecodeError):
        parse_message(b"INVITE sip:x SIP/2.0\r\n" + data)
