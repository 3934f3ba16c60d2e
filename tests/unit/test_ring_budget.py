"""The ring memory per worker: one setting in MiB, turned into a ring buffer's
pages, or split over the CPUs for perf buffers, always a power of two."""

from __future__ import annotations

import pytest

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.settings import DEFAULT_RING_MB, MIN_PERF_PAGES, PAGE_SIZE, KernelSettings


def test_the_default_budget_is_64_mib_a_worker() -> None:
    settings = KernelSettings()
    assert DEFAULT_RING_MB == 64
    assert settings.ring_pages * PAGE_SIZE == 64 << 20


@pytest.mark.parametrize(("cpus", "share"), [(1, 1.0), (2, 0.5), (3, 0.25), (64, 1 / 64)])
def test_perf_buffers_split_the_budget_over_the_cpus(cpus: int, share: float) -> None:
    pages = KernelSettings(ring_mb=64).perf_pages(cpus)
    assert pages & (pages - 1) == 0
    assert pages * cpus <= KernelSettings(ring_mb=64).ring_pages
    assert pages == int(KernelSettings(ring_mb=64).ring_pages * share)


def test_a_tiny_budget_on_many_cpus_keeps_a_usable_perf_buffer() -> None:
    assert KernelSettings(ring_mb=1).perf_pages(4096) == MIN_PERF_PAGES


@pytest.mark.parametrize("ring_mb", [0, 3, 100, -64])
def test_a_budget_that_is_not_a_power_of_two_is_refused(ring_mb: int) -> None:
    with pytest.raises(SetupError, match=f"a ring of {ring_mb} MiB: not a power of two"):
        KernelSettings(ring_mb=ring_mb).validate()
