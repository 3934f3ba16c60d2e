"""Set-up compiles the per-message modules with mypyc (scripts/build_native.py):
all of them or none, in CI all of them (a failed build would otherwise pass
unnoticed as pure Python), and never one whose source changed since."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
from pathlib import Path

import pytest

from scripts.build_native import MODULES
from userspace import refuse_stale_native_modules
from userspace.endpoints import FlowAction, FlowEvent
from userspace.event import Kind

IN_CI = os.environ.get("CI") == "true"
PURE_PASS = os.environ.get("OTUS_PURE_PASS") == "1"  # scripts/test.sh's second pass, on a copy


def test_the_per_message_modules_are_all_compiled_or_none() -> None:
    compiled = {name: Path(importlib.import_module(f"userspace.{name}").__file__ or "").suffix == ".so"
                for name in MODULES}
    if PURE_PASS:
        assert not any(compiled.values()), compiled
    elif IN_CI:
        assert all(compiled.values()), f"set-up did not compile: {[n for n, c in compiled.items() if not c]}"
    else:
        assert len(set(compiled.values())) == 1, compiled


def test_a_module_edited_after_it_was_compiled_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sip.py").write_text("x = 1\n")
    digest = hashlib.sha256(b"x = 1\n").hexdigest()
    (tmp_path / "_native.json").write_text(json.dumps({"sources": {"sip": digest}}))
    refuse_stale_native_modules(tmp_path)  # as built: fine
    (tmp_path / "sip.py").write_text("x = 2\n")
    with pytest.raises(ImportError, match=r"userspace/sip\.py changed since it was compiled"):
        refuse_stale_native_modules(tmp_path)


def test_pure_python_has_nothing_to_check(tmp_path: Path) -> None:
    refuse_stale_native_modules(tmp_path)


def test_what_crosses_from_worker_processes_pickles() -> None:
    """Workers send their FlowEvents to the task's process by pickle; a compiled frozen
    dataclass refuses to be unpickled (endpoints.py stays interpreted for it)."""
    event = FlowEvent(FlowAction.LEARN, bytes([10, 0, 0, 1]), 4000, Kind.RTP, "c", 1, 7, ((101, 0),))
    assert pickle.loads(pickle.dumps(event)) == event
