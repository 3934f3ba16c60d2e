"""`otus-ebpf attach`: one task (otus_ebpf.task) in the foreground until
SIGINT/SIGTERM; the signal handlers it installs are restored when it ends,
however it ends."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections import deque
from types import FrameType

from otus_ebpf.errors import SetupError
from otus_ebpf.metrics import MetricsServer
from otus_ebpf.options import AttachOptions
from otus_ebpf.task import Task, TaskStartError, require_root, resolve_interface
from otus_ebpf.tui import Dashboard, LiveView

__all__ = ["AttachOptions", "install_stop_signals", "log", "require_root", "resolve_interface", "run_attach"]


def run_attach(options: AttachOptions, name: str = "attach", metrics_listen: str | None = None,
               live_view: bool = False) -> int:
    """``metrics_listen``: HOST:PORT for /metrics, None for none. ``live_view``:
    draw the rich dashboard on the terminal instead of printing stats lines."""
    with contextlib.ExitStack() as stack:
        stop = install_stop_signals(stack)
        task = Task(name, options, log)
        try:
            task.start(through="init")  # checked, resolved, outputs open; nothing attached yet
            if metrics_listen is not None:
                try:
                    metrics = MetricsServer(metrics_listen, lambda: [task])
                except SetupError:
                    task.abandon()
                    raise
                stack.callback(metrics.close)  # after the task has stopped: the last scrape sees the end
                log(f"metrics on http://{metrics.address}/metrics")
            task.start()
        except TaskStartError as failed:
            # One task in the foreground: the cause is the message, as the operator expects it.
            raise SetupError(str(failed.__cause__)) from None
        stack.callback(task.stop)
        if live_view:
            task.recent = deque(maxlen=64)
            task.periodic_stats = False
            view = LiveView(Dashboard(lambda: [task]))
            stack.callback(view.close)  # before the task stops: its final figures print plainly
        task.run(stop)
        log("stopping: detaching, draining, flushing outputs")
    return 0


def install_stop_signals(stack: contextlib.ExitStack) -> threading.Event:
    """SIGINT/SIGTERM set a flag the poll loop checks; old handlers come back on exit."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.signal(signum, request_stop)
        stack.callback(signal.signal, signum, previous)
    return stop


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
