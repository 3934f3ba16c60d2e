"""Peak memory with 100,000 live dialogs.

    .venv/bin/python scripts/bench/memory.py [--dialogs 100000]

Feeds the pipeline INVITE (with SDP) and 200 OK (with SDP) for every
dialog and never a BYE, so every call stays live with its learned media
endpoints — its own, as on a real network: each SDP names an address of
its own (until 2026-11-30 every call announced the same one, which held one
endpoint for all and understated the memory by ~1 kB a dialog) — then reads
the process's peak RSS. The baseline, in the same run,
is the same process before the first dialog (interpreter, modules, an empty
pipeline). Target: at most 256 MB peak with 100,000 dialogs.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.bench.sip import call_messages
from tests.support.frames import ethernet, ipv4, ring_record, udp
from userspace.calls import CallLimits
from userspace.pipeline import Pipeline

TARGET_MB = 256.0
SDP_ADDRESS, SDP_PORT = b"192.0.2.1", b"49172"  # in tests.support.sip_samples.SDP
BATCH = 1_000


def own_media(message: bytes, address: str, n: int) -> bytes:
    """The message with its SDP naming this dialog's own address and port, and the
    Content-Length to match."""
    head, _, body = message.partition(b"\r\n\r\n")
    body = body.replace(SDP_ADDRESS, address.encode()).replace(SDP_PORT, str(10_000 + n % 50_000).encode())
    head = head.replace(b"Content-Length: %d" % len(message.partition(b"\r\n\r\n")[2]),
                        b"Content-Length: %d" % len(body))
    return head + b"\r\n\r\n" + body


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogs", type=int, default=100_000)
    args = parser.parse_args()
    pipeline = Pipeline({}, 0, calls=CallLimits(max_calls=args.dialogs + 1))
    baseline = peak_mb()
    hosts = ("10.0.0.1", "10.0.0.2")
    for start in range(0, args.dialogs, BATCH):
        events = []
        for n in range(start, min(start + BATCH, args.dialogs)):
            invite, _trying, _ringing, ok, *_rest = call_messages(n)  # INVITE and 200 OK, both with SDP
            for message, from_caller in (invite, ok):
                own = own_media(message, f"10.{1 if from_caller else 2}.{n >> 8 & 255}.{n & 255}", n)
                frame = ethernet(ipv4(udp(own), src=hosts[not from_caller], dst=hosts[from_caller]))
                events.append(ring_record(frame, ts_ns=1_000_000 + n))
        pipeline.process(events)
        pipeline.take_flow_events()
    live = len(pipeline.calls)
    assert live == args.dialogs, f"{live} live dialogs of {args.dialogs}"
    peak = peak_mb()
    print(f"{live:,} live dialogs (each with its SDP-learned media endpoints)")
    print(f"  baseline (empty pipeline) : {baseline:8.1f} MB peak RSS")
    per_dialog_kb = (peak - baseline) * 1024 / live
    print(f"  with the dialogs          : {peak:8.1f} MB peak RSS ({per_dialog_kb:.2f} kB a dialog)")
    print(f"  ratio to baseline         : {peak / baseline:8.1f}x")
    print(f"target <= {TARGET_MB:.0f} MB: {'met' if peak <= TARGET_MB else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
