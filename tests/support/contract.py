"""Read bpf/otus_event.h in its restricted style and compare it with userspace.event."""

from __future__ import annotations

import re
from enum import IntEnum

from userspace.event import EVENT_FIELDS, EVENT_HEADER, Counter, Direction, Kind

C_SIZES = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8}
_FIELD = re.compile(r"^(__u8|__u16|__u32|__u64)\s+(\w+)(?:\[(\d+)\])?;$")
_DEFINE = re.compile(r"^#define\s+(OTUS_\w+)\s+(\d+)\s*$", re.MULTILINE)
# C macro prefix → the Python enum that mirrors it.
ENUMS: dict[str, type[IntEnum]] = {"OTUS_DIR_": Direction, "OTUS_KIND_": Kind, "OTUS_CTR_": Counter}


def parse_struct(text: str, name: str) -> list[tuple[str, str, int]]:
    body = re.search(r"struct " + name + r"\s*\{(.*?)\};", text, re.DOTALL)
    if body is None:
        raise ValueError(f"struct {name} not found")
    fields = []
    for raw in body.group(1).splitlines():
        line = re.sub(r"/\*.*?\*/", "", raw).strip()
        if not line:
            continue
        match = _FIELD.match(line)
        if match is None:
            raise ValueError(f"line outside the restricted style: {raw.strip()!r}")
        ctype, field, count = match.groups()
        fields.append((field, ctype, int(count or 0)))
    return fields


def c_layout_problems(fields: list[tuple[str, str, int]]) -> list[str]:
    """The header promises no implicit padding: every field naturally aligned."""
    problems, offset = [], 0
    for field, ctype, count in fields:
        size = C_SIZES[ctype]
        if offset % size:
            problems.append(f"{field} at offset {offset} is not {size}-aligned (implicit padding)")
        offset += size * (count or 1)
    if offset % 8:
        problems.append(f"struct size {offset} is not a multiple of 8 (tail padding)")
    if offset != EVENT_HEADER.size:
        problems.append(f"C size {offset} != Python struct size {EVENT_HEADER.size}")
    return problems


def contract_mismatches(header_text: str) -> list[str]:
    fields = parse_struct(header_text, "otus_event")
    problems = []
    if fields != list(EVENT_FIELDS):
        problems.append(f"fields differ:\n  C:      {fields}\n  Python: {list(EVENT_FIELDS)}")
    problems += c_layout_problems(fields)
    defines = {name: int(value) for name, value in _DEFINE.findall(header_text)}
    for prefix, enum in ENUMS.items():
        c_side = {name.removeprefix(prefix): v for name, v in defines.items() if name.startswith(prefix)}
        py_side = {member.name: member.value for member in enum}
        if c_side != py_side:
            problems.append(f"{prefix}* differ: C {c_side} vs Python {enum.__name__} {py_side}")
    return problems
