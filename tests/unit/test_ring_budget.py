"""The ring memory per worker: one setting in MiB, the size of its ring
buffer, always a power of two."""

from __future__ import annotations

import errno
import os

import pytest

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel import loader
from otus_ebpf.kernel.settings import DEFAULT_RING_MB, PAGE_SIZE, KernelSettings


def test_the_default_budget_is_64_mib_a_worker() -> None:
    settings = KernelSettings()
    assert DEFAULT_RING_MB == 64
    assert settings.ring_bytes == 64 << 20 and settings.ring_bytes % PAGE_SIZE == 0


@pytest.mark.parametrize("ring_mb", [0, 3, 100, -64])
def test_a_budget_that_is_not_a_power_of_two_is_refused(ring_mb: int) -> None:
    with pytest.raises(SetupError, match=f"a ring of {ring_mb} MiB: not a power of two"):
        KernelSettings(ring_mb=ring_mb).validate()


def test_a_ring_the_kernel_cannot_allocate_is_refused_and_the_made_ones_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[int] = []

    def map_create(*_args: object) -> int:
        if len(made) == 2:
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        made.append(os.open(os.devnull, os.O_RDONLY))
        return made[-1]

    monkeypatch.setattr(loader, "map_create", map_create)
    monkeypatch.setattr(loader, "map_update", lambda *_args: None)
    with pytest.raises(SetupError, match=r"^cannot create the 64 MiB ring of shard 2: Cannot allocate"):
        loader.create_rings(-1, 4, 64 << 20)
    for fd in made:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed
