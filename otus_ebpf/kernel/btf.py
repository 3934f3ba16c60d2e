"""Offsets of kernel struct members, read from the running kernel's BTF.

bcc compiles against whatever kernel headers the host has, and those may be
another kernel's (here: 6.1 headers under a 6.18 kernel), so a program that
follows kernel pointers through structs (bpf/otus_tls.c: task → files → file →
socket → sock) cannot trust the headers' layout. The kernel describes its own
types in /sys/kernel/btf/vmlinux; this reads the members it is asked for, as
libbpf's CO-RE relocations would, and loader.py hands them to the compiler as
defines. Only what that needs is parsed: the type section's structs and unions
(members found through anonymous ones, offsets summed), every other kind skipped
by its size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from otus_ebpf.errors import SetupError

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_TYPE = struct.Struct("<III")         # name_off, info, size or type
_MEMBER = struct.Struct("<III")       # name_off, type, offset
_STRUCT, _UNION = 4, 5
# Bytes after the common header, per kind (BTF_KIND_*): a fixed part, and a part per vlen item.
_EXTRA = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0), 8: (0, 0),
          9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0), 15: (0, 12), 16: (0, 0),
          17: (4, 0), 18: (0, 0), 19: (0, 12)}


@dataclass(frozen=True, slots=True)
class _Aggregate:
    members: tuple[tuple[str, int, int], ...]  # (name, type id, bit offset)


class KernelTypes:
    """The structs and unions of one BTF blob, by name and by type id."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < _HEADER.size:
            raise SetupError("the kernel's BTF is cut short")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(blob)
        if magic != _MAGIC:
            raise SetupError(f"the kernel's BTF has magic {magic:#x}, not {_MAGIC:#x}")
        strings = blob[hdr_len + str_off:hdr_len + str_off + str_len]
        self._aggregates: dict[int, _Aggregate] = {}
        self._by_name: dict[str, int] = {}
        at, end, type_id = hdr_len + type_off, hdr_len + type_off + type_len, 1
        while at < end:
            name_off, info, _size = _TYPE.unpack_from(blob, at)
            kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            at += _TYPE.size
            fixed, each = _EXTRA.get(kind, (None, None))
            if fixed is None or each is None:
                raise SetupError(f"the kernel's BTF has a type kind this reader does not know ({kind})")
            if kind in (_STRUCT, _UNION):
                members = []
                for index in range(vlen):
                    m_name, m_type, m_offset = _MEMBER.unpack_from(blob, at + index * _MEMBER.size)
                    bits = m_offset & 0xFFFFFF if kind_flag else m_offset  # bitfields: size in the high byte
                    members.append((_string(strings, m_name), m_type, bits))
                self._aggregates[type_id] = _Aggregate(tuple(members))
                name = _string(strings, name_off)
                if name:
                    self._by_name.setdefault(name, type_id)
            at += fixed + each * vlen
            type_id += 1

    def offset(self, struct_name: str, path: str) -> int:
        """The byte offset of a member in ``struct_name``: ``path`` names it, through
        members that are structs themselves ("__sk_common.skc_family"), and looks
        through anonymous structs and unions."""
        type_id = self._by_name.get(struct_name)
        if type_id is None:
            raise SetupError(f"the running kernel has no struct {struct_name} (BTF)")
        bits = 0
        for member in path.split("."):
            found = None if type_id is None else self._find(type_id, member)
            if found is None:
                raise SetupError(f"the running kernel's struct {struct_name} has no member {path}")
            bits += found[0]
            type_id = found[1]
        if bits % 8:
            raise SetupError(f"the running kernel's {struct_name}.{path} is a bitfield")
        return bits // 8

    def _find(self, type_id: int, member: str) -> tuple[int, int | None] | None:
        """(bit offset, the member's struct or union type id, else None) of a member."""
        aggregate = self._aggregates.get(type_id)
        if aggregate is None:
            return None
        for name, m_type, bits in aggregate.members:
            if name == member:
                return bits, m_type if m_type in self._aggregates else None
            if not name:  # an anonymous struct or union: its members are this one's
                inner = self._find(m_type, member)  # which names its struct or union directly
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None


def _string(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    return strings[offset:end if end >= 0 else len(strings)].decode("ascii", "replace")


def load_kernel_types(path: Path = VMLINUX) -> KernelTypes:
    try:
        return KernelTypes(path.read_bytes())
    except OSError as exc:
        raise SetupError(f"cannot read the kernel's types at {path} ({exc.strerror}): --tls needs a kernel "
                         "built with BTF (CONFIG_DEBUG_INFO_BTF)") from None


def kernel_offsets(members: dict[str, tuple[str, str]], path: Path = VMLINUX) -> dict[str, int]:
    """Each define's byte offset: ``members`` maps it to (struct, member path)."""
    types = load_kernel_types(path)
    return {name: types.offset(struct_name, member) for name, (struct_name, member) in members.items()}
