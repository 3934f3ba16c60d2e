"""Read bpf/otus_event.h in its restricted style and compare it with the
Python definitions: the event record (userspace.event) and the map layouts
(otus_ebpf.kernel.abi)."""

from __future__ import annotations

import re
import struct
from enum import IntEnum, IntFlag

from otus_ebpf.kernel.abi import (
    DROP_TOKEN_LEN,
    MAP_STRUCTS,
    MAX_DROP_METHODS,
    MAX_SHARDS,
    ConfigFlag,
    PortBit,
)
from userspace import dedup, droplist
from userspace.event import C_SIZES, EVENT_FIELDS, Counter, Direction, Flag, Kind, StructFields, struct_format
from userspace.kernel_streams import MAX_CLOCKS, NO_TYPE, StreamState
from userspace.rtp import DEFAULT_CLOCK_RATE
from userspace.tls import TLS_DATA, TLS_FIELDS, TlsCall, TlsCounter
from userspace.tunnel import FLOW_TUNNEL_SHIFT, TunnelCode

_FIELD = re.compile(r"^(__u8|__u16|__u32|__u64|struct bpf_spin_lock)\s+(\w+)(?:\[(\d+)\])?;$")
_DEFINE = re.compile(r"^#define\s+(OTUS_\w+)\s+(\d+)\s*$", re.MULTILINE)
# C macro prefix → the Python enum that mirrors it.
ENUMS: dict[str, type[IntEnum] | type[IntFlag]] = {
    "OTUS_DIR_": Direction, "OTUS_KIND_": Kind, "OTUS_FLAG_": Flag, "OTUS_CTR_": Counter,
    "OTUS_CFG_": ConfigFlag, "OTUS_STREAM_": StreamState, "OTUS_PORT_": PortBit, "OTUS_TUNNEL_": TunnelCode,
    "OTUS_TLS_CALL_": TlsCall, "OTUS_TLS_CTR_": TlsCounter,
}
# Single constants the Python side mirrors.
CONSTANTS = {"OTUS_MAX_CLOCKS": MAX_CLOCKS, "OTUS_DEFAULT_CLOCK": DEFAULT_CLOCK_RATE, "OTUS_NO_TYPE": NO_TYPE,
             "OTUS_MAX_SHARDS": MAX_SHARDS, "OTUS_DROP_TOKEN_LEN": DROP_TOKEN_LEN,
             "OTUS_MAX_DROP_METHODS": MAX_DROP_METHODS, "OTUS_CSEQ_SCAN": droplist.CSEQ_SCAN,
             "OTUS_DEDUP_PREFIX": dedup.DEDUP_PREFIX, "OTUS_DEDUP_ENTRIES": dedup.DEDUP_ENTRIES,
             "OTUS_FLOW_TUNNEL_SHIFT": FLOW_TUNNEL_SHIFT, "OTUS_TLS_DATA": TLS_DATA}
PYTHON_STRUCTS: dict[str, StructFields] = {"otus_event": EVENT_FIELDS, "otus_tls": TLS_FIELDS, **MAP_STRUCTS}


def parse_struct(text: str, name: str) -> list[tuple[str, str, int]]:
    body = re.search(r"struct " + name + r"\s*\{(.*?)\};", text, re.DOTALL)
    if body is None:
        raise ValueError(f"struct {name} not found")
    fields = []
    for raw in re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.DOTALL).splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _FIELD.match(line)
        if match is None:
            raise ValueError(f"line outside the restricted style: {raw.strip()!r}")
        ctype, field, count = match.groups()
        fields.append((field, ctype.removeprefix("struct "), int(count or 0)))
    return fields


def c_layout_problems(name: str, fields: list[tuple[str, str, int]]) -> list[str]:
    """The header promises no implicit padding: every field naturally aligned."""
    problems, offset, alignment = [], 0, 1
    for field, ctype, count in fields:
        size = C_SIZES[ctype]
        alignment = max(alignment, size)
        if offset % size:
            problems.append(f"{name}.{field} at offset {offset} is not {size}-aligned (implicit padding)")
        offset += size * (count or 1)
    if offset % alignment:
        problems.append(f"{name} size {offset} is not a multiple of {alignment} (tail padding)")
    python_size = struct.calcsize(struct_format(PYTHON_STRUCTS[name]))
    if offset != python_size:
        problems.append(f"{name}: C size {offset} != Python struct size {python_size}")
    return problems


def contract_mismatches(header_text: str) -> list[str]:
    problems = []
    for name, python_fields in PYTHON_STRUCTS.items():
        fields = parse_struct(header_text, name)
        if fields != list(python_fields):
            problems.append(f"{name} fields differ:\n  C:      {fields}\n  Python: {list(python_fields)}")
        problems += c_layout_problems(name, fields)
    defines = {name: int(value) for name, value in _DEFINE.findall(header_text)}
    for prefix, enum in ENUMS.items():
        c_side = {name.removeprefix(prefix): v for name, v in defines.items() if name.startswith(prefix)}
        py_side = {member.name: member.value for member in enum}
        if c_side != py_side:
            problems.append(f"{prefix}* differ: C {c_side} vs Python {enum.__name__} {py_side}")
    for name, value in CONSTANTS.items():
        if defines.get(name) != value:
            problems.append(f"{name}: C {defines.get(name)} vs Python {value}")
    return problems
