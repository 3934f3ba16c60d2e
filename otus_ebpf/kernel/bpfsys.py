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
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag

_SYSCALL_NUMBERS = {"x86_64": 321, "aarch64": 280}
# union bpf_attr is larger; the kernel accepts a shorter, zero-filled prefix.
_ATTR_SIZE = 128
_libc = ctypes.CDLL(None, use_errno=True)


class BpfCmd(IntEnum):
    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    PROG_TEST_RUN = 10
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    MAP_LOOKUP_BATCH = 24
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


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """BPF_MAP_CREATE; returns the map fd (the caller closes it)."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IIII", attr, 0, map_type, key_size, value_size, max_entries)
    return bpf(BpfCmd.MAP_CREATE, attr)


def prog_load(prog_type: int, instructions: bytes, license: bytes = b"GPL") -> int:
    """BPF_PROG_LOAD of raw instructions; returns the program fd (the caller closes it)."""
    insns = ctypes.create_string_buffer(instructions, len(instructions))
    licence = ctypes.create_string_buffer(license)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IIQQ", attr, 0, prog_type, len(instructions) // 8, ctypes.addressof(insns),
                     ctypes.addressof(licence))
    return bpf(BpfCmd.PROG_LOAD, attr)


_LOG_STATS = 4  # BPF_LOG_STATS: the verifier's totals, not its walk


def verifier_statistics(prog_type: int, instructions: bytes) -> tuple[bool, str]:
    """Whether the verifier takes these instructions, and its last line of statistics
    ("processed N insns (limit 1000000) ..."): how much of its budget a program uses.
    The program is closed again."""
    insns = ctypes.create_string_buffer(instructions, len(instructions))
    licence = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IIQQIIQ", attr, 0, prog_type, len(instructions) // 8, ctypes.addressof(insns),
                     ctypes.addressof(licence), _LOG_STATS, len(log), ctypes.addressof(log))
    try:
        os.close(bpf(BpfCmd.PROG_LOAD, attr))
        loaded = True
    except OSError:
        loaded = False
    lines = [line for line in log.value.decode(errors="replace").splitlines() if line.startswith("processed")]
    return loaded, lines[-1] if lines else ""


def link_create(prog_fd: int, ifindex: int, attach_type: AttachType, flags: int = 0) -> int:
    """BPF_LINK_CREATE; returns the link fd, which owns the attachment."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IIII", attr, 0, prog_fd, ifindex, int(attach_type), flags)
    return bpf(BpfCmd.LINK_CREATE, attr)


@dataclass(frozen=True, slots=True)
class ProgramInfo:
    id: int
    name: str
    map_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MapInfo:
    id: int
    name: str
    key_size: int
    value_size: int
    max_entries: int


# struct bpf_prog_info / bpf_map_info offsets (include/uapi/linux/bpf.h).
_PROG_INFO_SIZE = 80
_PROG_NR_MAP_IDS, _PROG_MAP_IDS, _PROG_NAME = 52, 56, 64
_MAP_INFO_SIZE = 40
_MAX_PROGRAM_MAPS = 64


def _get_info(fd: int, info: ctypes.Array[ctypes.c_char]) -> None:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
    bpf(BpfCmd.OBJ_GET_INFO_BY_FD, attr)


def _fd_by_id(cmd: BpfCmd, object_id: int) -> int:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=I", attr, 0, object_id)
    return bpf(cmd, attr)


def program_info(prog_id: int) -> ProgramInfo:
    fd = _fd_by_id(BpfCmd.PROG_GET_FD_BY_ID, prog_id)
    try:
        ids = (ctypes.c_uint32 * _MAX_PROGRAM_MAPS)()
        info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        struct.pack_into("=IQ", info, _PROG_NR_MAP_IDS, _MAX_PROGRAM_MAPS, ctypes.addressof(ids))
        _get_info(fd, info)
        count = struct.unpack_from("=I", info, _PROG_NR_MAP_IDS)[0]
        name = info.raw[_PROG_NAME:_PROG_NAME + 16].split(b"\0", 1)[0].decode()
        return ProgramInfo(prog_id, name, tuple(ids[: min(count, _MAX_PROGRAM_MAPS)]))
    finally:
        os.close(fd)


def program_name(prog_id: int) -> str:
    """The name the kernel keeps for a loaded program (first 15 characters)."""
    return program_info(prog_id).name


def open_map(map_id: int) -> tuple[int, MapInfo]:
    """An fd for the map with this id (the caller closes it) and its description."""
    fd = _fd_by_id(BpfCmd.MAP_GET_FD_BY_ID, map_id)
    try:
        return fd, map_info_by_fd(fd)
    except OSError:
        os.close(fd)
        raise


def map_info_by_fd(fd: int) -> MapInfo:
    info = ctypes.create_string_buffer(_MAP_INFO_SIZE)
    _get_info(fd, info)
    _type, map_id, key_size, value_size, max_entries, _flags = struct.unpack_from("=6I", info, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode()
    return MapInfo(map_id, name, key_size, value_size, max_entries)


BPF_F_LOCK = 4  # copy a value that holds a bpf_spin_lock under that lock


def map_lookup(fd: int, key: bytes, value_size: int, flags: int = 0) -> bytes | None:
    key_buf = ctypes.create_string_buffer(key, len(key))
    value = ctypes.create_string_buffer(value_size)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IxxxxQQQ", attr, 0, fd, ctypes.addressof(key_buf), ctypes.addressof(value), flags)
    try:
        bpf(BpfCmd.MAP_LOOKUP_ELEM, attr)
    except FileNotFoundError:
        return None
    return value.raw


class UpdateFlag(IntEnum):
    ANY = 0
    NOEXIST = 1  # fails with EEXIST when the key is there
    EXIST = 2


def map_update(fd: int, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
    key_buf = ctypes.create_string_buffer(key, len(key))
    value_buf = ctypes.create_string_buffer(value, len(value))
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IxxxxQQQ", attr, 0, fd, ctypes.addressof(key_buf), ctypes.addressof(value_buf),
                     int(flags))
    bpf(BpfCmd.MAP_UPDATE_ELEM, attr)


def map_delete(fd: int, key: bytes) -> None:
    key_buf = ctypes.create_string_buffer(key, len(key))
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IxxxxQ", attr, 0, fd, ctypes.addressof(key_buf))
    bpf(BpfCmd.MAP_DELETE_ELEM, attr)


def map_is_empty(fd: int) -> bool:
    key = ctypes.create_string_buffer(_MAX_KEY_SIZE)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IxxxxQQ", attr, 0, fd, 0, ctypes.addressof(key))  # NULL key: the first one
    try:
        bpf(BpfCmd.MAP_GET_NEXT_KEY, attr)
    except FileNotFoundError:
        return True
    return False


_MAX_KEY_SIZE = 64


def map_keys(fd: int, key_size: int, limit: int = 1 << 20) -> list[bytes]:
    """Every key of a hash map (BPF_MAP_GET_NEXT_KEY from NULL), at most ``limit``."""
    keys: list[bytes] = []
    current = ctypes.create_string_buffer(key_size)
    following = ctypes.create_string_buffer(key_size)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IxxxxQQ", attr, 0, fd, 0, ctypes.addressof(following))
    while len(keys) < limit:
        try:
            bpf(BpfCmd.MAP_GET_NEXT_KEY, attr)
        except FileNotFoundError:
            break
        keys.append(following.raw)
        ctypes.memmove(current, following, key_size)
        struct.pack_into("=IxxxxQQ", attr, 0, fd, ctypes.addressof(current), ctypes.addressof(following))
    return keys


def possible_cpus() -> int:
    """Per-CPU map values hold one slot per possible CPU, not per online CPU."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()  # e.g. "0-3" or "0"
    return sum(int(r.split("-")[-1]) - int(r.split("-")[0]) + 1 for r in text.split(","))


def query_program_ids(ifindex: int, attach_type: AttachType) -> list[int]:
    """Ids of the programs at a TCX hook of an interface."""
    ids = (ctypes.c_uint32 * _MAX_PROGRAM_MAPS)()
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IIIIQI", attr, 0, ifindex, int(attach_type), 0, 0, ctypes.addressof(ids),
                     _MAX_PROGRAM_MAPS)
    bpf(BpfCmd.PROG_QUERY, attr)
    count: int = struct.unpack_from("=I", attr, 24)[0]
    return list(ids[:count])


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1) -> tuple[int, int]:
    """BPF_PROG_TEST_RUN: run a program on ``data``; return (retval, mean ns per run)."""
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + 256)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IIIIQQII", attr, 0, prog_fd, 0, len(data), len(data_out),
                     ctypes.addressof(data_in), ctypes.addressof(data_out), repeat, 0)
    bpf(BpfCmd.PROG_TEST_RUN, attr)
    retval, duration = struct.unpack_from("=I", attr, 4)[0], struct.unpack_from("=I", attr, 36)[0]
    return retval, duration


def map_lookup_batch(fd: int, key_size: int, value_size: int, chunk: int,
                     flags: int = 0) -> Iterator[tuple[bytes, bytes, int]]:
    """A hash map, ``chunk`` entries a syscall (BPF_MAP_LOOKUP_BATCH, Linux 5.6): each batch as
    (its keys end to end, its values end to end, how many). Raises OSError(EINVAL) where the
    kernel has no batch operations."""
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    tokens = ctypes.create_string_buffer(16)  # in_batch, out_batch: a bucket number for hash maps
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    first = True
    while True:
        struct.pack_into("=QQQQIIQQ", attr, 0, 0 if first else ctypes.addressof(tokens),
                         ctypes.addressof(tokens) + 8, ctypes.addressof(keys), ctypes.addressof(values),
                         chunk, fd, flags, 0)
        done = False
        try:
            bpf(BpfCmd.MAP_LOOKUP_BATCH, attr)
        except FileNotFoundError:  # the last batch: count says how many it holds
            done = True
        count = struct.unpack_from("=I", attr, 32)[0]
        yield keys.raw[:count * key_size], values.raw[:count * value_size], count
        if done:
            return
        ctypes.memmove(tokens, ctypes.addressof(tokens) + 8, 8)  # out_batch is the next in_batch
        first = False
