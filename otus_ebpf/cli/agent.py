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
import subprocess
import sys
import tempfile
import termios
import threading
from types import FrameType
from typing import Any

from otus_ebpf import logs
from otus_ebpf.control.commands import Commands
from otus_ebpf.control.metrics import MetricsServer
from otus_ebpf.control.server import ControlServer
from otus_ebpf.control.task import Task, TaskStartError, TaskState, require_root, resolve_interface
from otus_ebpf.control.viewing import ViewVerbs
from otus_ebpf.errors import EXIT_RECORDS_LOST, EXIT_TASK_FAILED, SetupError
from otus_ebpf.options import AttachOptions
from otus_ebpf.signals import SignalFlag

__all__ = ["AttachOptions", "install_stop_signals", "log", "require_root", "resolve_interface", "run_attach"]

VIEW_CLOSE_GRACE_S = 5.0  # for the live view to give the terminal back once the capture ends
LEAVE_FULL_SCREEN = "\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1003l\x1b[?1006l"  # screen, cursor, mouse
_log = logs.get(__name__)


def run_attach(options: AttachOptions, name: str = "attach", metrics_listen: str | None = None,
               live_view: bool = False) -> int:
    """``metrics_listen``: HOST:PORT for /metrics, None for none. ``live_view``:
    the interactive view on the terminal instead of printing stats lines."""
    view_failed = False
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
            view_failed = run_viewed(task, stop)
        else:
            task.run(stop)
        if task.state is not TaskState.FAILED:
            _log.info("stopping: detaching, draining, flushing outputs")
    status = exit_status(task)
    return EXIT_TASK_FAILED if view_failed and status == 0 else status  # its capture was cut short


def exit_status(task: Task) -> int:
    if task.state is TaskState.FAILED:
        _log.error(f"otus-ebpf: the capture failed: {task.failure}")
        return EXIT_TASK_FAILED
    lost = task.records_lost()
    if lost:
        _log.error(f"otus-ebpf: {lost} records were lost (see the records: line above)")
        return EXIT_RECORDS_LOST
    return 0


def run_viewed(task: Task, stop: SignalFlag) -> bool:
    """The capture runs here as without a view; the view is a process of its own
    (otus_ebpf.view) reading this one over a private control socket, so drawing never
    takes the capture's interpreter lock, and a view that dies or hangs cannot hold the
    capture up. q in the view stops the capture; a stop here closes the view. While the
    view holds the terminal, this process's log lines go to it, and are printed after.
    True when the view died (killed, crashed) and so stopped the capture."""
    closing = threading.Event()
    held = logs.HeldLines()
    with contextlib.ExitStack() as stack:
        private = stack.enter_context(tempfile.TemporaryDirectory(prefix="otus-view-"))  # 0700
        verbs = ViewVerbs(lambda: [task], held.after, stopping=lambda: closing.is_set() or stop.is_set())
        server = ControlServer(os.path.join(private, "view.sock"), Commands(verbs.handlers()).answer)
        stack.callback(server.close)
        stack.callback(_give_back_stderr, sys.stderr, held)
        terminal = _terminal_state()
        sys.stderr = held  # a text stream, as far as logging goes
        # -I: the view imports from the installed program only, never from the directory the
        # operator runs attach in (root).
        view = subprocess.Popen([sys.executable, "-I", "-m", "otus_ebpf.view", str(server.path)])
        failed: list[bool] = []
        stack.callback(_close_view, view, closing, terminal, failed)
        watch = threading.Thread(target=_stop_when_gone, args=(view, stop), name="view-watch", daemon=True)
        watch.start()
        task.run(stop)
    return bool(failed)


def _stop_when_gone(view: subprocess.Popen[bytes], stop: SignalFlag) -> None:
    view.wait()
    stop.set()  # q in the view (or a view that died): the capture stops too


def _terminal_state() -> list[Any] | None:
    try:
        return termios.tcgetattr(sys.stdin.fileno())
    except (termios.error, OSError, ValueError):
        return None


def _close_view(view: subprocess.Popen[bytes], closing: threading.Event, terminal: list[Any] | None,
                failed: list[bool]) -> None:
    """The view sees the stop within half a second and gives the terminal back; one that
    does not is ended, and the terminal put back as it was before it. A view ended by the
    terminal's hang-up has not failed: the agent got the same hang-up, a stop like ^C."""
    closing.set()
    try:
        view.wait(VIEW_CLOSE_GRACE_S)
    except subprocess.TimeoutExpired:
        view.kill()
        view.wait()
        _log.error("otus-ebpf: the live view did not close; it was ended")
    if view.returncode not in (0, -signal.SIGHUP):  # killed, crashed: it could not put the terminal back
        failed.append(True)
        _restore_terminal(terminal)
        _log.error(f"otus-ebpf: the live view ended with status {view.returncode}; the capture was stopped")


def _restore_terminal(terminal: list[Any] | None) -> None:
    if terminal is None:
        return
    with contextlib.suppress(termios.error, OSError, ValueError, AttributeError):
        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, terminal)
        sys.__stdout__.write(LEAVE_FULL_SCREEN)  # type: ignore[union-attr]
        sys.__stdout__.flush()  # type: ignore[union-attr]


def _give_back_stderr(stderr: Any, held: logs.HeldLines) -> None:
    sys.stderr = stderr
    for line in held.lines():
        print(line, file=sys.stderr)


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
