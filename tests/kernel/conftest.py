from __future__ import annotations

from collections.abc import Iterator

import pytest

from otus_ebpf.kernel.settings import KernelSettings, MediaMode
from tests.support.kernel import KernelHarness

SHARDS = 2
MEDIA_SNAPLEN = 32


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelHarness]:
    """The real programs, compiled once per module with two ring shards; every learned
    RTP packet goes up (the copy path; tests/kernel/test_stream_stats.py has the kernel's
    own statistics)."""
    harness = KernelHarness(KernelSettings(shards=SHARDS, media_snaplen=MEDIA_SNAPLEN, route_by_call_id=True,
                                           media=MediaMode.PACKETS))
    try:
        yield harness
    finally:
        harness.close()
