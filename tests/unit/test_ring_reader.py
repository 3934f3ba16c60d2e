"""The ring reader's own bookkeeping, with libbcc's ring functions stood in for:
what it mapped is unmapped when a later ring fails, and a closed reader is
refused instead of handing libbpf a freed pointer."""

from __future__ import annotations

import types
from typing import Any

import pytest

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel import rings


class FakeLibbcc:
    """bpf_new_ringbuf/bpf_add_ringbuf/bpf_poll_ringbuf/bpf_free_ringbuf as libbcc has them."""

    def __init__(self, refuse_fd: int | None = None) -> None:
        self.refuse_fd = refuse_fd
        self.freed: list[int] = []
        self.polled: list[int] = []

    def bpf_new_ringbuf(self, fd: int, _callback: Any, _ctx: Any) -> int:
        return 0 if fd == self.refuse_fd else 0x1000

    def bpf_add_ringbuf(self, _manager: int, fd: int, _callback: Any, _ctx: Any) -> int:
        return -1 if fd == self.refuse_fd else 0

    def bpf_poll_ringbuf(self, manager: int, _timeout_ms: int) -> int:
        self.polled.append(manager)
        return 0

    def bpf_consume_ringbuf(self, manager: int) -> int:
        self.polled.append(manager)
        return 0

    def bpf_free_ringbuf(self, manager: int) -> None:
        self.freed.append(manager)


def with_lib(monkeypatch: pytest.MonkeyPatch, lib: FakeLibbcc) -> None:
    fake_importlib = types.SimpleNamespace(import_module=lambda _name: types.SimpleNamespace(lib=lib))
    monkeypatch.setattr(rings, "importlib", fake_importlib)


def test_a_ring_that_cannot_be_mapped_unmaps_those_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = FakeLibbcc(refuse_fd=12)
    with_lib(monkeypatch, lib)
    with pytest.raises(SetupError, match="fd 12"):
        rings.RingReader([10, 11, 12])
    assert lib.freed == [0x1000]


def test_a_closed_reader_is_refused_not_handed_to_libbpf(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = FakeLibbcc()
    with_lib(monkeypatch, lib)
    reader = rings.RingReader([10, 11])
    assert reader.poll(0) == [] and lib.polled == [0x1000]
    reader.close()
    reader.close()  # twice is harmless
    assert lib.freed == [0x1000]
    with pytest.raises(SetupError, match="after it was closed"):
        reader.poll(0)
    with pytest.raises(SetupError, match="after it was closed"):
        reader.drain()
    assert lib.polled == [0x1000]
