from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.sip_samples import COMPACT_BYE, INVITE, OK_200, SDP, sip_message
from userspace import sip
from userspace.errors import DecodeError, Malformed, Truncated
from userspace.sip import looks_like_sip, parse_message


def test_request_fields() -> None:
    m = parse_message(INVITE)
    assert (m.method, m.request_uri, m.status) == ("INVITE", "sip:bob@biloxi.example.com", None)
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"

    assert (m.cseq, m.cseq_method) == (314159, "INVITE")
    assert (m.from_tag, m.to_tag, m.via_branch) == ("1928301774", None, "z9hG4bK776asdhds")
    assert m.content_length == len(SDP)
    assert m.size == len(INVITE)
    assert m.is_request


def test_response_fields_use_the_first_via() -> None:
    m = parse_message(OK_200)
    assert (m.method, m.status, m.reason) == (None, 200, "OK")
    assert (m.to_tag, m.via_branch) == ("a6c85cf", "z9hG4bKnashds8")
    assert not m.is_request


def test_compact_forms_and_folded_lines() -> None:
    m = parse_message(COMPACT_BYE)
    assert (m.method, m.call_id, m.cseq_method) == ("BYE", "a84b4c76e66710", "BYE")
    assert (m.from_tag, m.to_tag, m.via_branch) == ("a6c85cf", "1928301774", "z9hG4bKnashds10")


def test_header_names_are_case_insensitive() -> None:
    m = parse_message(INVITE.replace(b"Call-ID:", b"cALL-iD:").replace(b"CSeq:", b"CSEQ:"))
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


def test_blanks_before_the_colon_and_a_later_duplicate() -> None:
    m = parse_message(sip_message("OPTIONS sip:x SIP/2.0", [
        "Via: SIP/2.0/UDP a;branch=z9hG4bKtop", "call-id \t: first", "From: <sip:a@x>;tag=f",
        "To : <sip:b@y>", "CSeq\t: 7 OPTIONS", "Call-ID: second", "Via: SIP/2.0/UDP b;branch=z9hG4bKlow"]))
    assert (m.call_id, m.cseq, m.from_tag, m.via_branch) == ("first", 7, "f", "z9hG4bKtop")


def test_invented_header_names_do_not_grow_the_name_memo() -> None:
    names = [f"X{i}" for i in range(sip._NAME_MEMO_MAX + 100)]  # within MAX_MESSAGE
    m = parse_message(sip_message("OPTIONS sip:x SIP/2.0", [
        "Call-ID: c", "From: <sip:a@x>", "To: <sip:b@y>", "CSeq: 1 OPTIONS", *(f"{n}: v" for n in names)]))
    assert m.call_id == "c" and m.header(names[-1]) == "v"
    assert len(sip._NAME_MEMO) <= sip._NAME_MEMO_MAX


def test_tag_inside_the_uri_is_not_the_header_tag() -> None:
    message = sip_message("OPTIONS sip:x SIP/2.0", [
        "From: <sip:a@x;tag=uri-param>;tag=real", "To: <sip:b@y;tag=fake>",
        "Call-ID: c", "CSeq: 1 OPTIONS"])
    m = parse_message(message)
    assert (m.from_tag, m.to_tag) == ("real", None)


def test_trailing_bytes_are_left_for_the_next_message() -> None:
    m = parse_message(OK_200 + INVITE)
    assert m.size == len(OK_200)


def test_body_shorter_than_content_length_is_truncated() -> None:
    with pytest.raises(Truncated):
        parse_message(INVITE[:-5])


FT = ["From: <sip:a@x>;tag=1", "To: <sip:b@y>"]


@pytest.mark.parametrize(("message", "reason"), [
    (sip_message("OPTIONS sip:x SIP/2.0", [*FT, "CSeq: 1 OPTIONS"]), "Call-ID"),
    (sip_message("OPTIONS sip:x SIP/2.0", [*FT, "Call-ID: c"]), "CSeq"),
    (sip_message("OPTIONS sip:x SIP/2.0", [*FT, "Call-ID: c", "CSeq: one OPTIONS"]), "CSeq"),
    (sip_message("OPTIONS sip:x SIP/2.0", ["Call-ID: c", "CSeq: 1 OPTIONS"]), "From or To"),
    (sip_message("SIP/2.0 2000 OK", [*FT, "Call-ID: c", "CSeq: 1 OPTIONS"]), "status"),
    (sip_message("OPTIONS sip:x SIP/3.0", [*FT, "Call-ID: c", "CSeq: 1 OPTIONS"]), "start line"),
    (sip_message("OPTIONS sip:x SIP/2.0", [*FT, "Call-ID: c", "CSeq: 1 OPTIONS", "Content-Length: x"],
                 content_length=False), "Content-Length"),
])
def test_malformed_messages_say_why(message: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        parse_message(message)


def test_every_prefix_parses_or_raises_a_decode_error() -> None:
    for cut in range(len(INVITE)):
        try:
            message = parse_message(INVITE[:cut])
        except DecodeError:
            continue
        assert message.size <= cut  # never claims bytes it was not given
    assert parse_message(INVITE).size == len(INVITE)


def test_looks_like_sip() -> None:
    assert looks_like_sip(INVITE) and looks_like_sip(OK_200)
    assert not looks_like_sip(b"\r\n\r\n")
    assert not looks_like_sip(b"GET / HTTP/1.1\r\n\r\n")


@given(st.binary(max_size=400))
def test_random_bytes_parse_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_message(data)


@given(st.integers(0, len(INVITE) - 1), st.binary(min_size=1, max_size=8))
def test_corrupted_messages_parse_or_raise_decode_error(position: int, noise: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_message(INVITE[:position] + noise + INVITE[position + len(noise):])
