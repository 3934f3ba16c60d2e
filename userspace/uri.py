"""Who a SIP message is from and to: name-addr and URI users (RFC 3261 §20.10,
§19.1; RFC 3966 for tel:). Every SIP record asks, so the usual shapes take
one regex match and only the rest the general str path. What
comes off the wire is bounded: a display name or a user longer than MAX_TEXT
is cut."""

from __future__ import annotations

import re

MAX_TEXT = 256  # a user part or display name longer than this is not worth a record's bytes


# The usual shapes in one C-speed match: an optional display name (quoted
# without escapes, or tokens) and a sip:/sips: URI whose user has no
# parameters or password. Anything else takes the general path below. No two
# quantifiers can trade the same characters, so a hostile value costs linear
# time (a lazy display before ``\s*<`` would be quadratic in blanks).
_USUAL_NAME_ADDR = re.compile(r'(?:\s*"([^"\\]*)"\s*|([^"<]*))<sips?:([^@>;:]*)@', re.IGNORECASE)
_USUAL_URI = re.compile(r"sips?:([^@>;:]*)@", re.IGNORECASE)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def party(value: str) -> tuple[str | None, str | None]:
    """(display name, user) of a From/To value: ``"Alice" <sip:a@x>;tag=1``,
    ``Alice <sip:a@x>``, or a bare ``sip:a@x;tag=1`` (whose parameters are the
    header's, not the URI's)."""
    usual = _USUAL_NAME_ADDR.match(value)
    if usual is not None:
        quoted, token, user = usual.groups()
        display = quoted if quoted is not None else token.strip()
        return (display[:MAX_TEXT] or None), (user[:MAX_TEXT] or None)
    return _general_party(value)


def _general_party(value: str) -> tuple[str | None, str | None]:
    # The bracket after a quoted display name, which may hold "<" itself.
    quote = value.find('"')
    open_at = value.find("<")
    if 0 <= quote < open_at:
        closing = _closing_quote(value, quote + 1)
        open_at = value.find("<", closing + 1) if closing >= 0 else -1
    if open_at < 0:
        return None, uri_user(value.split(";", 1)[0].strip())
    close_at = value.find(">", open_at)
    uri = value[open_at + 1:close_at] if close_at > 0 else value[open_at + 1:]
    if open_at == 0:
        return None, uri_user(uri)
    display = value[:open_at].strip()
    if len(display) >= 2 and display[0] == '"' and display[-1] == '"':
        display = display[1:-1]
        if "\\" in display:  # RFC 3261 §25.1 quoted-pair: a backslash escapes the next character
            display = _QUOTED_PAIR.sub(r"\1", display)
    return (display[:MAX_TEXT] or None), uri_user(uri)


def _closing_quote(value: str, start: int) -> int:
    """The index of the quote ending a quoted-string begun before ``start``
    (RFC 3261 §25.1: a backslash escapes the next character), or -1."""
    i = start
    while True:
        i = value.find('"', i)
        if i < 0:
            return -1
        backslashes = 0
        while i - 1 - backslashes >= start and value[i - 1 - backslashes] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:
            return i
        i += 1


def uri_user(uri: str) -> str | None:
    """The user part of a sip:/sips: URI (``sip:alice:pw@host`` gives ``alice``),
    or the number of a tel: URI; None when there is none."""
    usual = _USUAL_URI.match(uri)
    if usual is not None:
        return usual.group(1)[:MAX_TEXT] or None
    if uri.startswith("sip:"):
        rest = uri[4:]
    elif uri.startswith("sips:"):
        rest = uri[5:]
    else:
        return _other_scheme_user(uri)
    at = rest.find("@")
    if at <= 0:
        return None
    user = rest[:at]
    if ";" in user or ":" in user:  # user parameters (RFC 4967), a password
        user = user.split(";", 1)[0].split(":", 1)[0]
    return user[:MAX_TEXT] or None


def _other_scheme_user(uri: str) -> str | None:
    # The rare spellings: blanks around the URI, a scheme in capitals, tel:.
    scheme, colon, rest = uri.strip().partition(":")
    if not colon:
        return None
    scheme = scheme.lower()
    if scheme == "tel":
        return rest.split(";", 1)[0].strip()[:MAX_TEXT] or None
    if scheme in ("sip", "sips"):
        return uri_user(f"{scheme}:{rest}")
    return None
