"""The ring memory per worker: one setting in MiB, turned into a ring buffer's
pages, always a power of two."""

from __future__ import annotations

import pytest

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.settings import DEFAULT_RING_MB, PAGE_SIZE, KernelSettings


def test_the_default_budget_is_64_mib_a_worker() -> None:
    settings = KernelSettings()
    assert DEFAULT_RING_MB == 64
    assert settings.ring_pages * PAGE_SIZE == 64 << 20


@pytest.mark.parametrize("ring_mb", [0, 3, 100, -64])
def test_a_budget_that_is_not_a_power_of_two_is_refused(ring_mb: int) -> None:
    with pytest.raises(SetupError, match=f"a ring of {ring_mb} MiB: not a power of two"):
        KernelSettings(ring_mb=ring_mb).validate()
