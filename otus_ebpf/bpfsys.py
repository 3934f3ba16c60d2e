"""The few bpf(2) commands bcc does not wrap, through the raw syscall.

bcc attaches XDP by netlink, which outlives the process; a BPF link (XDP
link, TCX) is released by the kernel when its last fd closes, so nothing
stays attached even after SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from enum import IntEnum, IntFlag

_SYSCALL_NUMBERS = {"x86_64": 321, "aarch64": 280}
# union bpf_attr is larger; the kernel accepts a shorter, zero-filled prefix.
_ATTR_SIZE = 128
_libc = ctypes.CDLL(None, use_errno=True)


class BpfCmd(IntEnum):
    PROG_TEST_RUN = 10
    PROG_GET_FD_BY_ID = 13
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    LINK_CREATE = 28


class AttachType(IntEnum):
    """enum bpf_attach_type values from include/uapi/linux/bpf.h."""

    XDP = 37
    TCX_INGRESS = 46
    TCX_EGRESS = 47


class XdpFlags(IntFlag):
    UPDATE_IF_NOEXIST = 1
    SKB_MODE = 2  # generic
    DRV_MODE = 4  # native


def bpf(cmd: BpfCmd, attr: ctypes.Array[ctypes.c_char]) -> int:
    number = _SYSCALL_NUMBERS.get(platform.machine())
    if number is None:
        raise OSError(f"bpf(): unsupported architecture {platform.machine()}")
    result: int = _libc.syscall(number, int(cmd), attr, len(attr))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def link_create(prog_fd: int, ifindex: int, attach_type: AttachType, flags: int = 0) -> int:
    """BPF_LINK_CREATE; returns the link fd, which owns the attachment."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IIII", attr, 0, prog_fd, ifindex, int(attach_type), flags)
    return bpf(BpfCmd.LINK_CREATE, attr)


def query_program_count(ifindex: int, attach_type: AttachType) -> int:
    """How many programs are attached at a TCX hook of an interface."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=II", attr, 0, ifindex, int(attach_type))
    bpf(BpfCmd.PROG_QUERY, attr)
    count: int = struct.unpack_from("=I", attr, 24)[0]
    return count


def program_name(prog_id: int) -> str:
    """The name the kernel keeps for a loaded program (first 15 characters)."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=I", attr, 0, prog_id)
    fd = bpf(BpfCmd.PROG_GET_FD_BY_ID, attr)
    try:
        info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("=IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
        bpf(BpfCmd.OBJ_GET_INFO_BY_FD, attr)
        raw: bytes = info.raw[_PROG_INFO_NAME_OFFSET:_PROG_INFO_NAME_OFFSET + 16]
        return raw.split(b"\0", 1)[0].decode()
    finally:
        os.close(fd)


# struct bpf_prog_info: name[BPF_OBJ_NAME_LEN] sits at offset 64.
_PROG_INFO_NAME_OFFSET = 64
_PROG_INFO_SIZE = 80
