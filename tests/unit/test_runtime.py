"""The pipeline process's runtime settings: the cyclic collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from otus_ebpf.capture.runner import GC_YOUNG_THRESHOLD, tune_runtime


@pytest.fixture
def restored_collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_collections_come_less_often_and_start_up_objects_are_frozen(restored_collector: None) -> None:
    tune_runtime()
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    assert gc.get_freeze_count() > 0
