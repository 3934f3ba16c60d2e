"""Who a message is from and to (userspace.uri): the shapes RFC 3261 allows,
the fast path agreeing with the general one, and hostile values costing
linear time."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.sip_samples import sip_message
from userspace.sip import parse_message
from userspace.uri import MAX_TEXT, _general_party, party, uri_user


@pytest.mark.parametrize(("value", "expected"), [
    (' "Alice Smith" <sip:alice@atlanta.example.com>;tag=1928', ("Alice Smith", "alice")),
    ("Bob <sips:bob@biloxi.example.com>", ("Bob", "bob")),
    ("<sip:carol@chicago.example.com>;tag=x", (None, "carol")),
    ("sip:dave@example.com;tag=x", (None, "dave")),               # no brackets: ;tag is the header's
    ('"A \\"quoted\\" name" <sip:x@y>', ('A "quoted" name', "x")),  # RFC 3261 §25.1 quoted-pair
    ('"Smith <Sales>" <tel:+123>', ("Smith <Sales>", "+123")),    # a bracket inside the quotes
    ('"a\\"<b" <sip:x@y>', ('a"<b', "x")),
    ('"back\\\\" <sip:z@y>', ("back\\", "z")),                # an escaped backslash ends it
    ("<sip:+15551234;npdi@gw.example.com;user=phone>", (None, "+15551234")),  # RFC 4694 user parameter
    ("<sip:alice:secret@host>", (None, "alice")),                # a password is not the user
    ("<tel:+1-201-555-0123;ext=7>", (None, "+1-201-555-0123")),  # RFC 3966
    ("<SIP:Erin@Host>", (None, "Erin")),                         # schemes are case-insensitive
    ("Anonymous <sip:anonymous.invalid>", ("Anonymous", None)),   # no user part
    ('"" <sip:u@h>', (None, "u")),
    ("<mailto:someone@example.com>", (None, None)),              # not a SIP or tel URI
    ("", (None, None)),
])
def test_display_name_and_user(value: str, expected: tuple[str | None, str | None]) -> None:
    assert party(value) == expected
    assert _general_party(value) == expected


def test_request_uri_user() -> None:
    assert uri_user("sip:bob@biloxi.example.com") == "bob"
    assert uri_user("sip:biloxi.example.com") is None  # REGISTER's Request-URI has no user
    assert uri_user("tel:+4930123") == "+4930123"
    assert uri_user("urn:service:sos") is None


def test_parties_come_from_the_message() -> None:
    m = parse_message(sip_message("INVITE sip:1234@pbx.example.com SIP/2.0", [
        "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1", 'f: "Front Desk" <sip:100@pbx.example.com>;tag=a',
        "t: <sip:1234@pbx.example.com>", "i: c1", "CSeq: 1 INVITE", "User-Agent: Yealink SIP-T46S"]))
    assert (m.from_display, m.from_user, m.to_user, m.ruri_user, m.user_agent) == \
        ("Front Desk", "100", "1234", "1234", "Yealink SIP-T46S")
    response = parse_message(sip_message("SIP/2.0 200 OK", [
        "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1", "From: <sip:a@x>;tag=a", "To: <sip:b@y>;tag=b",
        "Call-ID: c1", "CSeq: 1 INVITE", "Server: Kamailio (5.6.3)"]))
    assert (response.ruri_user, response.user_agent) == (None, "Kamailio (5.6.3)")
    empty = parse_message(sip_message("SIP/2.0 200 OK", [
        "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1", "From: <sip:a@x>;tag=a", "To: <sip:b@y>;tag=b",
        "Call-ID: c1", "CSeq: 1 INVITE", "User-Agent:  ", "Server: FreeSWITCH"]))
    assert empty.user_agent == "FreeSWITCH", "an empty User-Agent says nothing: the Server does"


def test_long_values_are_cut() -> None:
    display, user = party(f'"{"d" * 5000}" <sip:{"u" * 5000}@h>')
    assert (len(display or ""), len(user or "")) == (MAX_TEXT, MAX_TEXT)


@given(st.text(alphabet=' "<>@:;\\sipSIPtel+a1=', max_size=40))
def test_fast_path_agrees_with_the_general_one(value: str) -> None:
    assert party(value) == _general_party(value)


@pytest.mark.parametrize("value", [" " * 60_000, " " * 60_000 + "x", '"' + " " * 60_000,
                                   "<sip:" + "a" * 60_000, " " * 30_000 + '"' + " " * 30_000 + "<sip:",
                                   '"' + '\\"' * 30_000 + "<", '"' + "\\" * 60_000 + '" <'])
def test_hostile_values_cost_linear_time(value: str) -> None:
    # Not a speed test: a guard against catastrophic backtracking, which takes minutes
    # on 60,000 blanks where the linear pattern takes about a millisecond.
    started = time.perf_counter()
    party(value)
    uri_user(value)
    assert time.perf_counter() - started < 5
