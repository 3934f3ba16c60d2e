"""A call saved from the live view: its messages as JSON, or as a pcap to open in
Wireshark or sngrep.

The view keeps each message's text and addresses, not its frames, so the pcap
is rebuilt: one Ethernet/IP/UDP datagram a message, at its capture time, with
its text (cut at the book's TEXT_KEPT). A message that came over TCP, TLS or
WebSocket is written as UDP too; the JSON says how it came.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from pathlib import Path
from typing import Any, BinaryIO

import dpkt
import orjson

from userspace.callbook import CallDetail, MessageLine

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
NAME_KEPT = 48  # characters of the Call-ID in a file name
SAVES_PER_NAME = 1_000
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def file_stem(detail: CallDetail) -> str:
    """A file name from a Call-ID off the wire: no path, no control characters."""
    call_id = _UNSAFE.sub("_", detail.row.call_id)[:NAME_KEPT].strip("._") or "call"
    return f"call-{call_id}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(detail.row.start_ns / 1e9))}"


def save_json(detail: CallDetail, directory: Path) -> Path:
    row = detail.row._asdict()
    document: dict[str, Any] = {
        "call": row,
        "messages": [m._asdict() for m in detail.messages],
        "streams": [s._asdict() for s in detail.streams],
        "messages_not_kept": detail.not_kept,
    }
    path, file = _new_file(directory / f"{file_stem(detail)}.json")
    with file:
        file.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return path


def save_pcap(detail: CallDetail, directory: Path) -> Path:
    path, file = _new_file(directory / f"{file_stem(detail)}.pcap")
    with file:
        writer = dpkt.pcap.Writer(file, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        for message in detail.messages:
            frame = _frame(message)
            if frame is not None:
                writer.writepkt(frame, ts=message.ts_ns / 1e9)
    return path


def _new_file(path: Path) -> tuple[Path, BinaryIO]:
    """A file made here and now, readable by its owner only (it holds SIP, credentials
    included): ``path``, or with -1, -2… before its suffix. Never an existing file,
    nor one a symbolic link points to."""
    for n in range(SAVES_PER_NAME):
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            fd = os.open(candidate, _NEW_FILE, 0o600)
        except FileExistsError:
            continue
        return candidate, os.fdopen(fd, "wb")
    raise FileExistsError(f"{path} and {SAVES_PER_NAME - 1} more like it exist")


def _split(endpoint: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    host, _, port = endpoint.rpartition(":")
    try:
        return ipaddress.ip_address(host.strip("[]")), int(port)
    except ValueError:
        return None


def _frame(message: MessageLine) -> bytes | None:
    src, dst = _split(message.src), _split(message.dst)
    if src is None or dst is None or src[0].version != dst[0].version:
        return None
    payload = message.text.encode("utf-8", "surrogateescape")
    udp = dpkt.udp.UDP(sport=src[1], dport=dst[1], data=payload)
    udp.ulen = len(udp)
    ip: dpkt.Packet
    if src[0].version == 4:
        ip = dpkt.ip.IP(src=src[0].packed, dst=dst[0].packed, p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp)
        ip.len = len(ip)
        ethertype = dpkt.ethernet.ETH_TYPE_IP
    else:
        ip = dpkt.ip6.IP6(src=src[0].packed, dst=dst[0].packed, nxt=dpkt.ip.IP_PROTO_UDP, hlim=64, data=udp)
        ip.plen = len(udp)
        ethertype = dpkt.ethernet.ETH_TYPE_IP6
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x02" * 6, type=ethertype, data=ip))
