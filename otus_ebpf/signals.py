"""A flag that a signal handler may set.

A Python signal handler runs in the main thread between two bytecodes,
wherever that thread is. threading.Event.set takes the event's lock: if the
handler interrupts the same thread inside that event's set or wait (a second
SIGTERM right behind the first, as a dying parent's PDEATHSIG and a process
group's SIGTERM arrive), it waits for a lock its own thread holds, forever,
and every other thread that touches the event joins it. A worker found so,
all its threads in futex waits, outlived its killed parent. This flag is a
plain attribute: setting it takes no lock.
"""

from __future__ import annotations

import time

POLL_S = 0.05  # how soon a waiter sees the flag


class SignalFlag:
    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """True once set; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._set:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, POLL_S))
        return True
