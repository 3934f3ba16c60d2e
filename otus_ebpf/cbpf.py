"""Classic BPF for the AF_PACKET fallback, compiled by libpcap from the same
settings the eBPF programs use (SIP ports, signature, fragments, networks).

libpcap is already on the machine (tcpdump depends on it); its compiler
knows every offset trick, so we write the expression, not the bytecode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable

from otus_ebpf.errors import SetupError
from otus_ebpf.loader import KernelSettings

DLT_EN10MB = 1
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
# The first four payload bytes of a SIP status line or request (RFC 3261 §7),
# for --signature: big-endian words as the filter loads them.
SIGNATURE_WORDS = tuple(int.from_bytes(w.encode(), "big") for w in (
    "SIP/", "INVI", "ACK ", "BYE ", "CANC", "OPTI", "REGI", "PRAC", "SUBS", "NOTI", "PUBL", "INFO",
    "REFE", "MESS", "UPDA",
))


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(SockFilter))]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def filter_expression(settings: KernelSettings, media_ports: Iterable[int] = ()) -> str:
    """The socket filter for these settings. ``media_ports`` are the ports of
    learned RTP/RTCP endpoints; matching on ports alone keeps the program
    short, and user space checks the exact endpoint (userspace.classify)."""
    ports = " or ".join(f"port {p}" for p in settings.sip_ports)
    alternatives = [f"((udp or tcp) and ({ports}))",
                    "(ip and ip[6:2] & 0x3fff != 0)",  # IPv4 fragment: MF set or offset > 0
                    "(ip6 and ip6[6] == 44)"]           # IPv6 fragment header first
    if media_ports:
        alternatives.append("(udp and (" + " or ".join(f"port {p}" for p in sorted(set(media_ports))) + "))")
    if settings.signature:
        words = " or ".join(f"udp[8:4] == 0x{w:08x}" for w in SIGNATURE_WORDS)
        alternatives.append(f"(udp and ({words}))")
    expression = "(" + " or ".join(alternatives) + ")"
    if settings.include:
        expression += " and (" + " or ".join(f"net {n}" for n in settings.include) + ")"
    if settings.exclude:
        expression += " and not (" + " or ".join(f"net {n}" for n in settings.exclude) + ")"
    # Tags still in the frame (no rx VLAN offload) shift every offset.
    return f"({expression}) or (vlan and ({expression})) or (vlan and vlan and ({expression}))"


def compile_filter(expression: str, snaplen: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions for SO_ATTACH_FILTER."""
    name = ctypes.util.find_library("pcap")
    if name is None:
        raise SetupError("libpcap is missing (install tcpdump, which brings it)")
    pcap = ctypes.CDLL(name)
    pcap.pcap_open_dead.restype = ctypes.c_void_p
    pcap.pcap_geterr.restype = ctypes.c_char_p
    pcap.pcap_geterr.argtypes = [ctypes.c_void_p]
    pcap.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(BpfProgram), ctypes.c_char_p,
                                  ctypes.c_int, ctypes.c_uint32]
    handle = pcap.pcap_open_dead(DLT_EN10MB, snaplen)
    program = BpfProgram()
    try:
        if pcap.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, PCAP_NETMASK_UNKNOWN):
            raise SetupError(f"cannot compile capture filter: {pcap.pcap_geterr(handle).decode()}")
        insns = [(i.code, i.jt, i.jf, i.k) for i in program.bf_insns[: program.bf_len]]
        pcap.pcap_freecode(ctypes.byref(program))
        return insns
    finally:
        pcap.pcap_close(ctypes.c_void_p(handle))


Instructions = list[tuple[int, int, int, int]]


def socket_filter(instructions: Instructions) -> tuple[SockFprog, ctypes.Array[SockFilter]]:
    """A sock_fprog for setsockopt; keep the array alive while it is used."""
    array = (SockFilter * len(instructions))(*[SockFilter(*i) for i in instructions])
    return SockFprog(len(instructions), ctypes.cast(array, ctypes.POINTER(SockFilter))), array
