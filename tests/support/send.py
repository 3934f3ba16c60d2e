"""Send datagrams from inside a lab namespace (the only place tests send to)."""

from __future__ import annotations

import socket

from tests.support import netns


def send_udp(namespace: str, src: str, sport: int, dst: str, dport: int, payloads: list[bytes]) -> None:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with netns.inside(namespace), socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((src, sport))
        for payload in payloads:
            sock.sendto(payload, (dst, dport))
