"""`otus-ebpf attach`: one task (otus_ebpf.control.task) in the foreground until
SIGINT, SIGTERM or SIGHUP (an ssh session that hangs up); the signal
handlers it installs are restored when it ends, however it ends.

Exit status: 0, or EXIT_TASK_FAILED when the capture failed while running,
or EXIT_RECORDS_LOST when an output lost records (the last line says how
many and where); setup errors are the CLI's (1)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType

from otus_ebpf import logs
from otus_ebpf.control.metrics import MetricsServer
from otus_ebpf.control.task import Task, TaskStartError, TaskState, require_root, resolve_interface
from otus_ebpf.errors import EXIT_RECORDS_LOST, EXIT_TASK_FAILED, SetupError
from otus_ebpf.options import AttachOptions
from otus_ebpf.signals import SignalFlag
from otus_ebpf.view.app import LiveApp
from otus_ebpf.view.sources import LocalSource

__all__ = ["AttachOptions", "install_stop_signals", "log", "require_root", "resolve_interface", "run_attach"]

VIEW_CLOSE_GRACE_S = 5.0  # for the live view to give the terminal back once the capture ends
_log = logs.get(__name__)


def run_attach(options: AttachOptions, name: str = "attach", metrics_listen: str | None = None,
               live_view: bool = False) -> int:
    """``metrics_listen``: HOST:PORT for /metrics, None for none. ``live_view``:
    the interactive view on the terminal instead of printing stats lines."""
    with contextlib.ExitStack() as stack:
        stop = install_stop_signals(stack)
        task = Task(name, options)
        try:
            task.start(through="init")  # checked, resolved, outputs open; nothing attached yet
            if metrics_listen is not None:
                try:
                    metrics = MetricsServer(metrics_listen, lambda: [task])
                except SetupError:
                    task.abandon()
                    raise
                stack.callback(metrics.close)  # after the task has stopped: the last scrape sees the end
                _log.info(f"metrics on http://{metrics.address}/metrics")
            task.start()
        except TaskStartError as failed:
            # One task in the foreground: the cause is the message, as the operator expects it.
            raise SetupError(str(failed.__cause__)) from None
        stack.callback(task.stop)
        if live_view:
            task.periodic_stats = False
            run_viewed(task, stop)
        else:
            task.run(stop)
        if task.state is not TaskState.FAILED:
            _log.info("stopping: detaching, draining, flushing outputs")
    return exit_status(task)


def exit_status(task: Task) -> int:
    if task.state is TaskState.FAILED:
        _log.error(f"otus-ebpf: the capture failed: {task.failure}")
        return EXIT_TASK_FAILED
    lost = task.records_lost()
    if lost:
        _log.error(f"otus-ebpf: {lost} records were lost (see the records: line above)")
        return EXIT_RECORDS_LOST
    return 0


def run_viewed(task: Task, stop: SignalFlag) -> None:
    """The capture loop on a thread of its own, the interactive view on this one until
    q, a signal or the capture's end. A view whose terminal is gone (a hang-up) may never
    return from restoring it: then the capture thread stops the task itself (detach,
    drain, flush) and ends the process, so nothing stays attached."""
    view_closed, capture_ended = threading.Event(), threading.Event()

    def capture() -> None:
        try:
            task.run(stop)
        finally:
            capture_ended.set()
            if not view_closed.wait(VIEW_CLOSE_GRACE_S):
                task.stop()
                _log.error("otus-ebpf: the live view did not close (its terminal gone?); "
                           "the capture stopped and flushed its outputs")
                os._exit(exit_status(task))

    loop = threading.Thread(target=capture, name="otus-capture")
    loop.start()
    try:
        LiveApp(LocalSource(lambda: [task], lambda: stop.is_set() or capture_ended.is_set())).run()
    finally:
        view_closed.set()
        stop.set()
        loop.join()


def install_stop_signals(stack: contextlib.ExitStack) -> SignalFlag:
    """SIGINT/SIGTERM/SIGHUP set a flag the poll loop checks; old handlers come back on exit.
    A hang-up is a stop like the others: detach, drain, flush, exit."""
    stop = SignalFlag()  # set in a signal handler: no lock (otus_ebpf.signals)

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous = signal.signal(signum, request_stop)
        stack.callback(signal.signal, signum, previous)
    return stop


def log(message: str) -> None:
    """An info line, for otus_ebpf.cli.main, which says what it did through this."""
    _log.info(message)
