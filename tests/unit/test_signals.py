"""The stop and reload flags that signal handlers set take no lock: a handler
that interrupts its own thread inside the flag's set cannot wait for itself."""

from __future__ import annotations

import os
import signal
import threading
import time

from otus_ebpf.signals import SignalFlag


def test_a_handler_that_interrupts_the_flags_own_set_does_not_hang() -> None:
    flag = SignalFlag()
    nested: list[bool] = []

    def handler(_signum: int, _frame: object) -> None:
        if not nested:
            nested.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)  # a second signal while the first is being handled
        flag.set()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.wait(2.0)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert nested == [True]


def test_wait_returns_when_another_thread_sets_it_and_times_out_otherwise() -> None:
    flag = SignalFlag()
    started = time.monotonic()
    assert not flag.wait(0.1)
    assert time.monotonic() - started >= 0.1
    threading.Timer(0.05, flag.set).start()
    assert flag.wait(2.0)
    flag.clear()
    assert not flag.is_set()
