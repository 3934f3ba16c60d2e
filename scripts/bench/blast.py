"""Send one SIP datagram over and over from several source addresses, as fast
as one Python process can (or at RATE packets/s), for a fixed time; print how
many were sent.

    python scripts/bench/blast.py DST_IP SECONDS SRC_IP [SRC_IP ...]
    OTUS_BLAST_RATE=20000 python scripts/bench/blast.py ...   (paced)

Run it inside a lab namespace (scripts/bench/live_loss.py does); it only
ever sends to DST_IP, which must be a lab address.
"""

from __future__ import annotations

import os
import socket
import sys
import time

MESSAGE = (b"OPTIONS sip:bench@lab SIP/2.0\r\nVia: SIP/2.0/UDP lab;branch=z9hG4bKbench\r\n"
           b"From: <sip:a@lab>;tag=1\r\nTo: <sip:b@lab>\r\nCall-ID: bench@lab\r\nCSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")
CHECK_CLOCK_EVERY = 1024


def main() -> int:
    destination, seconds, sources = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    sockets = []
    for source in sources:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 5060))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sockets.append(sock)
    sent, started = 0, time.monotonic()
    deadline = started + seconds
    target = (destination, 5060)
    rate = float(os.environ.get("OTUS_BLAST_RATE", "0"))
    while True:
        if rate:  # paced: no further ahead than the rate allows
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        for _ in range(CHECK_CLOCK_EVERY // len(sockets)):
            for sock in sockets:
                try:
                    sock.sendto(MESSAGE, target)
                    sent += 1
                except BlockingIOError:
                    pass
        if time.monotonic() >= deadline:
            break
    print(sent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
