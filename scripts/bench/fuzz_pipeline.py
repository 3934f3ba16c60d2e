"""Fuzz the whole pipeline with a million hostile events.

    .venv/bin/python scripts/bench/fuzz_pipeline.py [--events 1000000] [--seed 1]

Generated calls (tests/support/hostile.py): SIP and SDP with Unicode digits,
huge, negative and signed numbers, host names, every port edge, malformed
structure; hostile RTP and RTCP to what was learned and to what was not;
over UDP and TCP (some segments shuffled). Everything goes through the
pipeline and the flow learning, into a table that packs the kernel's flow
key for every endpoint a dialog asks for. The failure boundaries count
instead of raising here; the run fails (exit 1) if any of them counted, or
a flow event was refused. CI runs the same generator under hypothesis
(tests/unit/test_hostile_properties.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf.kernel.flows import FlowStats
from tests.support.hostile import CheckedFlowTable, drive_hostile
from userspace.boundary import Boundary
from userspace.pipeline import Pipeline

CALLS_PER_STEP = 500


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    said: list[str] = []
    boundary = Boundary(lambda stage, kind, exc, example: said.append(f"{stage} {kind}: {exc} {example!r}"),
                        strict=False)
    pipeline = Pipeline({}, 0, boundary=boundary)
    table, stats = CheckedFlowTable(), FlowStats()
    fed = calls = 0
    started = time.perf_counter()
    while fed < args.events:
        fed += drive_hostile(pipeline, table, stats, rng, CALLS_PER_STEP, start=calls)
        calls += CALLS_PER_STEP
    elapsed = time.perf_counter() - started
    p, c, m = pipeline.stats, pipeline.calls.stats, pipeline.calls.media.stats
    print(f"{fed:,} events ({calls:,} calls) in {elapsed:.1f} s: {fed / elapsed:,.0f} events/s")
    print(f"records {p.records:,}; SIP rejected {p.sip_errors:,}; SDP errors {c.sdp_errors:,}, "
          f"unlearnable {c.sdp_unlearnable:,}, bad ports {c.sdp_bad_ports:,}, "
          f"bad clocks {c.sdp_bad_clock:,}, "
          f"media over cap {c.media_over_cap:,}; media: rtp {m.rtp:,} rtcp {m.rtcp:,} not rtp {m.not_rtp:,} "
          f"without call {m.without_call:,} streams over cap {m.streams_over_cap:,}; "
          f"flows learned {stats.learned:,}")
    print(f"internal errors {boundary.total}, flow events refused {stats.failed}")
    for line in said[:10]:
        print(f"  {line[:300]}")
    return 1 if boundary.total or stats.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
