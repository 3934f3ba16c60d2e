"""userspace.droplist: which tokens the drop list takes, and the token and CSeq
method read as the kernel reads them (tests/kernel/test_parity.py holds the
two equal on the same edges)."""

from __future__ import annotations

import pytest

from tests.support.sip_samples import INVITE, OK_200, request, response, sip_message
from userspace.droplist import CSEQ_SCAN, cseq_method, first_token, token_problem


@pytest.mark.parametrize("token", ["OPTIONS", "NOTIFY", "100", "699", "X1", "A" * 16])
def test_methods_and_status_codes_are_taken(token: str) -> None:
    assert token_problem(token) is None


@pytest.mark.parametrize("token", ["options", "Options", "", "OPT IONS", "A" * 17, "99", "1000", "700", "099",
                                   "ÖPTIONS", "OPTIONS\n", "OPTIONS*", "\uff11\uff10\uff10"])
def test_anything_else_is_refused_with_a_reason(token: str) -> None:
    problem = token_problem(token)
    assert problem is not None and repr(token) in problem


@pytest.mark.parametrize(("payload", "expected"), [
    (INVITE, (b"INVITE", False)),
    (request("OPTIONS"), (b"OPTIONS", False)),
    (OK_200, (b"200", True)),
    (b"SIP/2.0 100 Trying\r\n", (b"100", True)),
    (b"SIP/2.0 100\r\n", None),                      # §7.2: a SP follows the code
    (b"SIP/2.0 10", (b"SIP/2.0", False)),            # too short for a status line: the first word
    (b"ABCDEFGHIJKLMNOP sip:x SIP/2.0", (b"ABCDEFGHIJKLMNOP", False)),
    (b"ABCDEFGHIJKLMNOPQ sip:x SIP/2.0", None),      # longer than the kernel's key
    (b" OPTIONS sip:x", None),
    (b"OPT\0 sip:x", None),                          # the kernel's key would read the NUL as padding
    (b"OPTIONS", None),                              # no SP before the end
])
def test_the_first_token_is_the_method_or_the_status_code(payload: bytes,
                                                         expected: tuple[bytes, bool] | None) -> None:
    assert first_token(payload) == expected


@pytest.mark.parametrize(("cseq", "method"), [
    ("CSeq: 1 OPTIONS", b"OPTIONS"),
    ("cseq:7\tNOTIFY", b"NOTIFY"),
    ("CSEQ:" + " " * 8 + "2147483647" + "\t" * 8 + "INFO", b"INFO"),
    ("CSeq: 1 ABCDEFGHIJKLMNOP", b"ABCDEFGHIJKLMNOP"),
    ("CSeq: 1 OPTIONS ignored", b"OPTIONS"),
    ("CSeq : 1 OPTIONS", None),           # no blanks before the colon, as the kernel reads it
    ("CSeq:" + " " * 9 + "1 OPTIONS", None),
    ("CSeq: 1" + " " * 9 + "OPTIONS", None),
    ("CSeq: 12345678901 OPTIONS", None),  # 11 digits
    ("CSeq: OPTIONS", None),
    ("CSeq: 1OPTIONS", None),
    ("CSeq: 1 ", None),
    ("CSeq: 1 ABCDEFGHIJKLMNOPQ", None),  # longer than a drop-list token
    ("CSeqX: 1 OPTIONS", None),
])
def test_a_responses_cseq_method(cseq: str, method: bytes | None) -> None:
    assert cseq_method(response("200 OK", "OPTIONS", cseq_line=cseq)) == method


def test_only_the_first_cseq_line_of_the_header_counts() -> None:
    assert cseq_method(response("200 OK", "OPTIONS", before_cseq=["CSeq: x OPTIONS"])) is None
    assert cseq_method(sip_message("SIP/2.0 200 OK", ["Call-ID: b"], b"CSeq: 1 OPTIONS\r\n")) is None
    assert cseq_method(b"SIP/2.0 200 OK\nCall-ID: x\nCSeq: 3 NOTIFY\n\n") == b"NOTIFY"


def test_the_method_must_end_within_the_scan() -> None:
    bare = response("200 OK", "OPTIONS")
    end = bare.index(b"OPTIONS\r") + len(b"OPTIONS")
    for pad, found in ((CSEQ_SCAN - 1 - end - 9, b"OPTIONS"), (CSEQ_SCAN - end - 9, None)):
        message = response("200 OK", "OPTIONS", before_cseq=["X-Pad: " + "p" * pad])
        assert message.index(b"OPTIONS\r") + len(b"OPTIONS") in (CSEQ_SCAN - 1, CSEQ_SCAN)
        assert cseq_method(message) == found
        assert cseq_method(message, scan=len(message)) == b"OPTIONS"
