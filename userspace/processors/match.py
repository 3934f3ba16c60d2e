"""What a filter can ask of a SIP message: its method, status, parties,
headers, addresses and interface, each as exact values, prefixes or a
regular expression. Built from plain data (the config file's, a plugin's);
a spec that is wrong raises ValueError naming the key."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from userspace.records import SipRecord

MAX_VALUES = 1_000      # exact values or prefixes in one condition
MAX_PATTERN = 1_000     # characters of one regular expression
# Characters of a value a regular expression reads: a backtracking pattern (an operator's)
# against a hostile header (a sender's) costs at most this much per message.
MAX_MATCHED = 1_024


@dataclass(frozen=True, slots=True)
class TextMatch:
    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None

    def __call__(self, value: str | None) -> bool:
        if value is None:
            return False
        return value in self.exact or value.startswith(self.prefixes) or \
            (self.pattern is not None and self.pattern.search(value, 0, MAX_MATCHED) is not None)


def text_match(spec: Any, where: str) -> TextMatch:
    """A value, a list of values, or {exact: [...], prefix: [...], regex: "..."}."""
    if isinstance(spec, str | int):
        return TextMatch(exact=frozenset([str(spec)]))
    if isinstance(spec, list):
        return TextMatch(exact=frozenset(_strings(spec, where)))
    if not isinstance(spec, dict) or not spec or set(spec) - {"exact", "prefix", "regex"}:
        raise ValueError(f"{where}: a value, a list, or a mapping of exact, prefix and regex")
    regex = spec.get("regex")
    return TextMatch(frozenset(_strings(_listed(spec.get("exact", [])), f"{where}.exact")),
                     tuple(_strings(_listed(spec.get("prefix", [])), f"{where}.prefix")),
                     None if regex is None else compile_pattern(regex, f"{where}.regex"))


def compile_pattern(regex: Any, where: str) -> re.Pattern[str]:
    if not isinstance(regex, str) or not regex or len(regex) > MAX_PATTERN:
        raise ValueError(f"{where}: a regular expression of 1 to {MAX_PATTERN} characters")
    try:
        return re.compile(regex)
    except re.error as exc:
        raise ValueError(f"{where}: not a regular expression: {exc}") from None


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _strings(values: list[Any], where: str) -> list[str]:
    plain = all(isinstance(v, str | int) and not isinstance(v, bool) for v in values)
    if len(values) > MAX_VALUES or not plain or any(str(v) == "" for v in values):
        raise ValueError(f"{where}: 1 to {MAX_VALUES} values, each text (not empty) or a number")
    return [str(v) for v in values]


Condition = Callable[[SipRecord], bool]


def _method(record: SipRecord) -> str:
    """A response counts as its request's method: dropping OPTIONS drops their 200s."""
    m = record.message
    return m.method if m.method is not None else m.cseq_method


def _field(get: Callable[[SipRecord], str | None]) -> Callable[[Any, str], Condition]:
    def build(spec: Any, where: str) -> Condition:
        match = text_match(spec, where)
        return lambda record: match(get(record))
    return build


def _status(spec: Any, where: str) -> Condition:
    """Codes (486) or classes (4xx)."""
    match = text_match(spec, where)
    return lambda r: r.message.status is not None and (
        match(str(r.message.status)) or match(f"{r.message.status // 100}xx")
        or match(f"{r.message.status // 100}XX"))


def _number(spec: Any, where: str) -> Condition:
    """Any of the parties: From, To or the Request-URI's user."""
    match = text_match(spec, where)
    return lambda r: match(r.message.from_user) or match(r.message.to_user) or match(r.message.ruri_user)


def _header(spec: Any, where: str) -> Condition:
    if not isinstance(spec, dict) or set(spec) != {"name", "regex"} or not isinstance(spec["name"], str) \
            or not spec["name"]:
        raise ValueError(f"{where}: {{name: HEADER, regex: PATTERN}}")
    name, pattern = spec["name"], compile_pattern(spec["regex"], f"{where}.regex")
    return lambda r: any(pattern.search(v, 0, MAX_MATCHED) for v in r.message.values(name)[:MAX_VALUES])


def _address(spec: Any, where: str) -> Condition:
    listed = _listed(spec)
    if not 0 < len(listed) <= MAX_VALUES:
        raise ValueError(f"{where}: 1 to {MAX_VALUES} networks")
    try:
        networks = [ipaddress.ip_network(str(n), strict=False) for n in listed]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None

    def inside(raw: bytes) -> bool:
        address = ipaddress.ip_address(raw)
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:a.b.c.d is a.b.c.d
        return any(address in network or (mapped is not None and mapped in network) for network in networks)
    return lambda r: inside(r.src) or inside(r.dst)


CONDITIONS: Mapping[str, Callable[[Any, str], Condition]] = {
    "method": _field(_method),
    "status": _status,
    "from_user": _field(lambda r: r.message.from_user),
    "to_user": _field(lambda r: r.message.to_user),
    "ruri_user": _field(lambda r: r.message.ruri_user),
    "number": _number,
    "header": _header,
    "address": _address,
    "interface": _field(lambda r: r.interface),
}


def conditions(spec: Any, where: str) -> list[Condition]:
    """Every condition of a mapping; a record matches when all of them hold."""
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{where}: a mapping of conditions ({', '.join(CONDITIONS)})")
    unknown = set(spec) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown condition (expected one of: "
                         f"{', '.join(CONDITIONS)})")
    return [CONDITIONS[name](value, f"{where}.{name}") for name, value in spec.items()]
