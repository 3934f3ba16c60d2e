"""100,000 calls live at once on the lab, with RTP and RTCP endpoints of
their own (400,000 flow entries), RTP on a sample, then all torn down.

    sudo .venv/bin/python scripts/bench/live_calls.py [--calls 100000] [--workers 2]

tests/support/mass_calls.py does the work (the integration suite runs it
with 20,000 calls): the agent runs as `otus-ebpf attach` in a lab this
script creates and removes. Printed: the time until every endpoint is
learned and until every call is gone, the endpoints in user space and in the
kernel's map at the peak, the memory of the agent's processes at the peak
(proportional set sizes, summed) against the budget of docs/CONFIG.md, and
what is left after the teardown.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf.control.memory import memory_budget
from otus_ebpf.kernel.settings import DEFAULT_RING_MB
from tests.support.lab import lab_down, lab_up
from tests.support.mass_calls import run_mass_calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    lab = lab_up(f"otus-c{os.getpid() % 100000}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_mass_calls(lab, Path(tmp), args.calls, ("--workers", str(args.workers)),
                                    say=lambda m: print(time.strftime("%X"), m, flush=True)
                                    if not m.startswith("  waiting") else None)
    finally:
        with contextlib.suppress(Exception):
            lab_down(lab)
    calls = args.calls
    summaries = [r for r in result.records if r["kind"] == "call"]
    budget = memory_budget(calls, int(args.workers), DEFAULT_RING_MB)
    peak, each = result.rss_bytes_at_peak, ", ".join(f"{p / 2**20:.0f}" for p in result.pss_by_process)
    ends = sorted({s["end_cause"] for s in summaries})
    print(f"  {calls:,} calls: set up and learned in {result.setup_s:.1f} s, "
          f"torn down in {result.teardown_s:.1f} s")
    print(f"  endpoints at the peak: {result.learned:,} in the workers, "
          f"{result.kernel_flows_at_peak:,} in the kernel")
    print(f"  memory at the peak: {peak / 2**20:,.0f} MiB over {result.processes} processes ({each} MiB); "
          f"budget {budget / 2**20:,.0f} MiB: {'within' if peak <= budget else 'OVER'}")
    print(f"  after the teardown: gauges {result.gauges_after}, kernel flow entries "
          f"{result.kernel_flows_after} ({result.kernel_drain_s:.1f} s after the gauges)")
    print(f"  records: {len(summaries):,} call summaries, ends {ends}; exit status {result.exit_status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
