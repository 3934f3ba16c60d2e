"""What the agent's resident memory may reach with live calls, all its
processes summed (proportional set sizes: pages the forked workers share
with their parent count once). docs/CONFIG.md states it; the scale test
(tests/integration/test_calls_scale_live.py) and scripts/bench/live_calls.py
hold live runs to it.

What mattered most, measured at 100,000 calls: a parent that wrote 400,000
flow-map entries on its loop's thread stopped reading the workers for
seconds, and each worker's records piled up behind it (2.2-2.5 GiB in all);
with the map written from a thread of its own, 1.3 GiB. (Capping glibc's
heap arenas made no difference: 697 and 735 MB for one process with 20,000
calls.)
"""

from __future__ import annotations

MiB = 1 << 20
# Measured: the task's own process with bcc and LLVM loaded ~245 MiB alone,
# ~125 MiB once two workers share its pages; a worker ~100 MiB idle, up to
# ~150 MiB more at the high-water of its output queue in a burst (it keeps
# what it freed), plus its ring as it fills; ~9 KiB a live call at 100,000
# calls (1,333 MiB in all; 20,000 calls: 774-828 MiB).
FIRST_PROCESS_BYTES = 256 * MiB
WORKER_BYTES = 160 * MiB
CALL_BYTES = 12 * 1024


def memory_budget(live_calls: int, workers: int, ring_mb: int) -> int:
    """Resident bytes the agent's processes may use together with ``live_calls`` calls,
    ``workers`` ring readers (worker processes, or 1 in-process) and rings of ``ring_mb``."""
    return FIRST_PROCESS_BYTES + workers * (WORKER_BYTES + ring_mb * MiB) + live_calls * CALL_BYTES
