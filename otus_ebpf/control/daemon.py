"""`otus-ebpf daemon -c FILE`: every task of the file, a control socket, the
metrics endpoint; SIGHUP re-reads the file and applies the differences,
SIGINT/SIGTERM stop everything in order (tasks newest first, then the
control socket and metrics), and the signal handlers are given back."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from otus_ebpf import logs
from otus_ebpf.capture.sampling import sample_to_json
from otus_ebpf.control.config import Config, ConfigInvalid, TaskConfig
from otus_ebpf.control.config import load as load_config
from otus_ebpf.control.manager import ApplyResult, TaskManager
from otus_ebpf.control.metrics import MetricsServer
from otus_ebpf.control.server import ControlServer
from otus_ebpf.control.task import CaptureOpener, Task
from otus_ebpf.errors import EXIT_INVALID, SetupError
from otus_ebpf.signals import SignalFlag

RECENT_KEPT = 64
_log = logs.get(__name__)


class Daemon:
    def __init__(self, config_path: Path, capture_opener: CaptureOpener | None = None) -> None:
        self.config_path = config_path
        self.manager = TaskManager(capture_opener)
        self.stop_requested = SignalFlag()  # set by signal handlers: no lock (otus_ebpf.signals)
        self.reload_requested = SignalFlag()
        self._reload_lock = threading.Lock()

    def reload(self) -> ApplyResult:
        """Read the file again and apply it; an invalid file changes nothing."""
        with self._reload_lock:
            try:
                config = load_config(self.config_path)
            except ConfigInvalid as invalid:
                for problem in invalid.problems:
                    _log.warning(f"reload refused: {problem}")
                raise SetupError(f"{self.config_path} is invalid ({len(invalid.problems)} problem(s)); "
                                 "nothing changed") from None
            result = self.apply(config)
        _log.info(f"reloaded {self.config_path}: started {result.started}, "
                 f"reconfigured {result.reconfigured}, restarted {result.restarted}, "
                 f"stopped {result.stopped}, unchanged {result.unchanged}, failed {list(result.failed)}")
        return result

    def apply(self, config: Config) -> ApplyResult:
        result = self.manager.apply(config)
        for task in self.manager.tasks():
            task.keep_recent(RECENT_KEPT)
        return result

    # -- control socket handlers ----------------------------------------------

    def handlers(self) -> dict[str, Any]:
        return {"list": self._list, "status": self._status, "stats": self._stats, "samples": self._samples,
                "create": self._create, "delete": self._delete, "reload": self._reload,
                "pause": self._pause, "resume": self._resume}

    def _list(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"tasks": [{"name": t.name, "state": t.state.value, "interfaces": list(t.options.interfaces),
                           "failure": t.failure} for t in self.manager.tasks()]}

    def _task(self, request: dict[str, Any]) -> Task:
        task = self.manager.get(str(request.get("task")))
        if task is None:
            raise SetupError(f"no task named {request.get('task')!r}")
        return task

    def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        task = self._task(request)
        return {"task": {"name": task.name, "state": task.state.value, "phase": task.phase,
                         "interfaces": list(task.options.interfaces), "stats": task.stats_line(),
                         "failure": task.failure}}

    def _stats(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"stats": {t.name: t.stats_line() for t in self.manager.tasks()}}

    def _samples(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"tasks": [{"name": t.name, "sample": sample_to_json(t.metrics_sample()),
                           "recent": t.recent_rows()} for t in self.manager.tasks()]}

    def _create(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            config = load_config(Path(str(request.get("config"))))
        except ConfigInvalid as invalid:
            more = f" (and {len(invalid.problems) - 1} more)" if len(invalid.problems) > 1 else ""
            raise SetupError(f"{invalid.problems[0]}{more}") from None
        wanted = str(request.get("task"))
        task_config = next((t for t in config.tasks if t.name == wanted), None)
        if task_config is None:
            raise SetupError(f"{request.get('config')}: no task named {wanted!r}")
        self._create_task(task_config)
        return {"created": wanted}

    def _create_task(self, config: TaskConfig) -> None:
        try:
            self.manager.create(config)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        task = self.manager.get(config.name)
        if task is not None:
            task.keep_recent(RECENT_KEPT)

    def _pause(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._pause_or_resume(request, Task.pause, "paused")

    def _resume(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._pause_or_resume(request, Task.resume, "resumed")

    def _pause_or_resume(self, request: dict[str, Any], action: Callable[[Task], None],
                         done: str) -> dict[str, Any]:
        try:
            action(self._task(request))
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        return {done: request.get("task")}

    def _delete(self, request: dict[str, Any]) -> dict[str, Any]:
        if not self.manager.delete(str(request.get("task"))):
            raise SetupError(f"no task named {request.get('task')!r}")
        return {"deleted": request.get("task")}

    def _reload(self, _request: dict[str, Any]) -> dict[str, Any]:
        result = self.reload()
        return {"started": result.started, "reconfigured": result.reconfigured, "restarted": result.restarted,
                "stopped": result.stopped,
                "unchanged": result.unchanged, "failed": result.failed}



def run_daemon(config_path: Path, capture_opener: CaptureOpener | None = None) -> int:
    try:
        config = load_config(config_path)
    except ConfigInvalid as invalid:
        for problem in invalid.problems:
            _log.error(str(problem))
        return EXIT_INVALID
    daemon = Daemon(config_path, capture_opener)
    with contextlib.ExitStack() as stack:
        _install_signals(stack, daemon)
        if config.metrics_listen is not None:
            metrics = MetricsServer(config.metrics_listen, daemon.manager.tasks)
            stack.callback(metrics.close)
            _log.info(f"metrics on http://{metrics.address}/metrics")
        control = ControlServer(config.control_socket, daemon.handlers())
        stack.callback(control.close)
        _log.info(f"control socket {config.control_socket}")
        stack.callback(daemon.manager.stop_all)  # first on the way out: tasks, newest first
        result = daemon.apply(config)
        if result.failed and not daemon.manager.tasks():
            raise SetupError(f"no task could start: {'; '.join(result.failed.values())}")
        _log.info(f"daemon: {len(daemon.manager.tasks())} task(s) running")
        while not daemon.stop_requested.is_set():
            if daemon.reload_requested.wait(0.2):
                daemon.reload_requested.clear()
                _reload_safely(daemon)
        _log.info("daemon: stopping")
    return 0


def _reload_safely(daemon: Daemon) -> None:
    """SIGHUP: a reload that fails in any way leaves the daemon up and says why."""
    try:
        daemon.reload()
    except SetupError:
        return  # an invalid file: logged, nothing changed
    except Exception as exc:
        _log.error(f"reload failed: {type(exc).__name__}: {exc}; the tasks that were running still run")


def _install_signals(stack: contextlib.ExitStack, daemon: Daemon) -> None:
    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        daemon.stop_requested.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        daemon.reload_requested.set()

    for signum, handler in ((signal.SIGINT, on_stop), (signal.SIGTERM, on_stop), (signal.SIGHUP, on_hup)):
        previous = signal.signal(signum, handler)
        stack.callback(signal.signal, signum, previous)
