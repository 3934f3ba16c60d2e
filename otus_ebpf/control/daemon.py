"""`otus-ebpf daemon -c FILE`: every task of the file and of the task store, a
control socket, the metrics endpoint, and with ``control.kafka`` the fleet's
command channel and heartbeats; SIGHUP re-reads the file and applies the differences,
SIGINT/SIGTERM stop everything in order (tasks newest first, then the
control socket and metrics), and the signal handlers are given back."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from otus_ebpf import logs
from otus_ebpf.control.commands import SOCKET, Commands, Handler
from otus_ebpf.control.config import Config, ConfigInvalid, TaskConfig, runtime_task, task_definition
from otus_ebpf.control.config import load as load_config
from otus_ebpf.control.manager import ApplyResult, TaskManager
from otus_ebpf.control.metrics import MetricsServer
from otus_ebpf.control.server import ControlServer
from otus_ebpf.control.settings import SETTINGS, Scope
from otus_ebpf.control.store import StoredTask, TaskStore
from otus_ebpf.control.task import CaptureOpener, Task
from otus_ebpf.control.viewing import ViewVerbs
from otus_ebpf.errors import EXIT_INVALID, SetupError
from otus_ebpf.fleet.channel import FleetChannel
from otus_ebpf.signals import SignalFlag

RECENT_KEPT = 64
_log = logs.get(__name__)


class Daemon:
    """The tasks of the config file and those created at run time (kept in the
    task store, so a restart or a reload brings them back), and the verbs that
    drive them (``commands``: the control socket's and the fleet's)."""

    def __init__(self, config_path: Path, capture_opener: CaptureOpener | None = None,
                 config: Config | None = None) -> None:
        self.config_path = config_path
        self.config = config if config is not None else Config(node_name="", metrics_listen=None,
                                                               control_socket="")
        self.manager = TaskManager(capture_opener)
        self.store: TaskStore | None = None  # opened by run_daemon (tests may run without one)
        self.stop_requested = SignalFlag()  # set by signal handlers: no lock (otus_ebpf.signals)
        self.reload_requested = SignalFlag()
        # One change at a time — a reload, a create, a delete, a pause — from the socket,
        # Kafka and SIGHUP alike; reentrant: a reload applies under it.
        self._reload_lock = threading.RLock()
        self._runtime: dict[str, StoredTask] = {}  # the stored tasks now wanted, by name
        self.commands = Commands(self.handlers())

    def reload(self) -> ApplyResult:
        """Read the file again and apply it with the stored tasks; an invalid file changes nothing."""
        with self._reload_lock:
            try:
                config = load_config(self.config_path)
            except ConfigInvalid as invalid:
                for problem in invalid.problems:
                    _log.warning(f"reload refused: {problem}")
                raise SetupError(f"{self.config_path} is invalid ({len(invalid.problems)} problem(s)); "
                                 "nothing changed") from None
            if config.fleet != self.config.fleet:
                _log.warning("reload: control.kafka changed; the fleet channel takes it at the next restart")
            result = self.apply(config)
        _log.info(f"reloaded {self.config_path}: started {result.started}, "
                 f"reconfigured {result.reconfigured}, restarted {result.restarted}, "
                 f"stopped {result.stopped}, unchanged {result.unchanged}, failed {list(result.failed)}")
        return result

    def apply(self, config: Config) -> ApplyResult:
        """The file's tasks and the stored ones, run as one set: the file wins a name
        both hold (the stored entry is set aside, and said)."""
        with self._reload_lock:
            self.config = config
            stored, self._runtime = self._restore(config)
            result = self.manager.apply(dataclasses.replace(config, tasks=(*config.tasks, *stored)))
            for task in self.manager.tasks():
                task.keep_recent(RECENT_KEPT)
                entry = self._runtime.get(task.name)
                fresh = task.name in result.started or task.name in result.restarted
                if entry is not None and entry.paused and fresh:  # a stored task comes back as it was left
                    with contextlib.suppress(ValueError):
                        task.pause()
        return result

    def _restore(self, config: Config) -> tuple[list[TaskConfig], dict[str, StoredTask]]:
        """The stored tasks to run with the file's, and their entries by name. Nothing the
        store holds stops the file's tasks: what cannot be read or moved is said and skipped."""
        if self.store is None:
            return [], {}
        entries, problems = self.store.load()
        for problem in problems:
            _log.error(f"task store: {problem}; skipped")
        in_file = {task.name for task in config.tasks}
        restored, runtime = [], {}
        for entry in entries:
            if entry.name in in_file:
                self._set_aside(entry.name, config.source)
                continue
            try:
                restored.append(runtime_task(entry.definition, config, f"stored task {entry.name!r}"))
            except ConfigInvalid as invalid:
                _log.error(f"task store: {invalid.problems[0]}; skipped")
                continue
            runtime[entry.name] = entry
        return restored, runtime

    def _set_aside(self, name: str, source: str) -> None:
        assert self.store is not None
        try:
            moved = self.store.set_aside(name, f"{source} defines a task {name!r}")
        except SetupError as exc:
            _log.error(f"task store: {name!r} is also defined in {source}; the file's runs, and the stored "
                       f"one could not be moved aside ({exc})")
            return
        _log.warning(f"task store: {name!r} is also defined in {source}; the file's runs, the stored one "
                     f"was moved to {moved}")

    def fleet_state(self) -> dict[str, Any]:
        """What a heartbeat says of this node's tasks."""
        return {"tasks": [_task_state(task, task.name in self._runtime) for task in self.manager.tasks()]}

    # -- the verbs ---------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {**ViewVerbs(self.manager.tasks).handlers(), "list": self._list, "status": self._status,
                "stats": self._stats, "create": self._create, "delete": self._delete, "reload": self._reload,
                "pause": self._pause, "resume": self._resume}

    def _list(self, _request: dict[str, Any], _origin: str) -> dict[str, Any]:
        return {"tasks": [{"name": t.name, "state": t.state.value, "interfaces": list(t.options.interfaces),
                           "failure": t.failure, "stored": t.name in self._runtime}
                          for t in self.manager.tasks()]}

    def _task(self, request: dict[str, Any]) -> Task:
        task = self.manager.get(_task_name(request))
        if task is None:
            raise SetupError(f"no task named {request.get('task')!r}")
        return task

    def _status(self, request: dict[str, Any], _origin: str) -> dict[str, Any]:
        task = self._task(request)
        return {"task": {"name": task.name, "state": task.state.value, "phase": task.phase,
                         "interfaces": list(task.options.interfaces), "stats": task.stats_line(),
                         "failure": task.failure}}

    def _stats(self, _request: dict[str, Any], _origin: str) -> dict[str, Any]:
        return {"stats": {t.name: t.stats_line() for t in self.manager.tasks()}}

    def _create(self, request: dict[str, Any], origin: str) -> dict[str, Any]:
        """A task from a config file (socket only: a remote command names no local
        file) or given whole; stored before it starts, unstored if it cannot."""
        name = _task_name(request)
        definition = self._definition(request, name, origin)
        try:
            task_config = runtime_task(definition, self.config, f"task {name!r}")
        except ConfigInvalid as invalid:
            raise SetupError(_first(invalid)) from None
        with self._reload_lock:  # one change at a time: socket, Kafka and reload never interleave
            if self.manager.get(name) is not None:
                raise SetupError(f"task {name!r} exists")
            if self.store is not None:
                self.store.save(name, definition, origin)
            try:
                self._create_task(task_config)
            except Exception:
                if self.store is not None:
                    self.store.remove(name)
                raise
            self._runtime[name] = StoredTask(name, definition, origin, False, 0)
        return {"created": name}

    def _definition(self, request: dict[str, Any], name: str, origin: str) -> dict[str, Any]:
        given = request.get("definition")
        if given is not None:
            if not isinstance(given, dict):
                raise SetupError('create: "definition" is an object, keyed as a task of a config file')
            if given.get("name", name) != name:
                raise SetupError(f"create: the definition names {given.get('name')!r}, not {name!r}")
            if origin != SOCKET:
                _refuse_secret_files(given)
            return {**given, "name": name}
        if origin != SOCKET:
            raise SetupError('create: over Kafka, a task is sent whole ("definition"), not as a file path')
        if not isinstance(request.get("config"), str):
            raise SetupError('create: "config" names a config file, or "definition" gives the task')
        try:
            return task_definition(Path(request["config"]), name)
        except ConfigInvalid as invalid:
            raise SetupError(_first(invalid)) from None

    def _create_task(self, config: TaskConfig) -> None:
        try:
            self.manager.create(config)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        task = self.manager.get(config.name)
        if task is not None:
            task.keep_recent(RECENT_KEPT)

    def _pause(self, request: dict[str, Any], _origin: str) -> dict[str, Any]:
        return self._pause_or_resume(request, Task.pause, "paused")

    def _resume(self, request: dict[str, Any], _origin: str) -> dict[str, Any]:
        return self._pause_or_resume(request, Task.resume, "resumed")

    def _pause_or_resume(self, request: dict[str, Any], action: Callable[[Task], None],
                         done: str) -> dict[str, Any]:
        with self._reload_lock:
            task = self._task(request)
            try:
                action(task)
            except ValueError as exc:
                raise SetupError(str(exc)) from None
            entry = self._runtime.get(task.name)
            if entry is not None and self.store is not None:  # a stored task comes back as it was left
                paused = done == "paused"
                self.store.save(entry.name, entry.definition, entry.origin, paused=paused)
                self._runtime[entry.name] = dataclasses.replace(entry, paused=paused)
        return {done: task.name}

    def _delete(self, request: dict[str, Any], _origin: str) -> dict[str, Any]:
        name = _task_name(request)
        with self._reload_lock:
            if self.manager.get(name) is None:
                raise SetupError(f"no task named {request.get('task')!r}")
            if self._runtime.pop(name, None) is not None and self.store is not None:
                self.store.remove(name)  # first: a task deleted never comes back, even if stopping fails
            self.manager.delete(name)
        return {"deleted": name}

    def _reload(self, _request: dict[str, Any], _origin: str) -> dict[str, Any]:
        result = self.reload()
        return {"started": result.started, "reconfigured": result.reconfigured, "restarted": result.restarted,
                "stopped": result.stopped,
                "unchanged": result.unchanged, "failed": result.failed}


def _first(invalid: ConfigInvalid) -> str:
    """The first problem, and how many more: an answer is one line."""
    more = f" (and {len(invalid.problems) - 1} more)" if len(invalid.problems) > 1 else ""
    return f"{invalid.problems[0]}{more}"


def _task_name(request: dict[str, Any]) -> str:
    name = request.get("task")
    if not isinstance(name, str) or not name:
        raise SetupError(f'{request.get("cmd")}: "task" names the task')
    return name


def _refuse_secret_files(definition: dict[str, Any]) -> None:
    """A remote command does not choose which of the node's files are read as secrets
    (and sent to a broker it names): those come from the node's own defaults."""
    for setting in SETTINGS:
        if not setting.secret_file or setting.scope is not Scope.TASK:
            continue
        found: Any = definition
        for part in setting.key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if found is not None:
            raise SetupError(f"create: {setting.key} is not taken over Kafka; set it in the node's defaults")
    processors = definition.get("processors")
    for item in processors if isinstance(processors, list) else []:
        if isinstance(item, dict) and ("plugin" in item or (isinstance(item.get("redact"), dict)
                                       and "key_file" in item["redact"])):
            raise SetupError("create: a redact key_file or a plugin is not taken over Kafka; use "
                             "select.redact_key_file and plugins in the node's own file")


def _task_state(task: Task, stored: bool) -> dict[str, Any]:
    """A task in a heartbeat: its state, how it captures, and its key counters."""
    sample = task.metrics_sample()

    def total(name: str) -> int:
        return int(sum(sample.counters.get(name, {}).values()))

    return {"name": task.name, "state": task.state.value, "mode": task.capture_mode,
            "interfaces": list(task.options.interfaces), "stored": stored, "failure": task.failure,
            "records": total("otus_records_total"), "sip_messages": total("otus_sip_messages_total"),
            "calls": int(sample.counters.get("otus_calls_total", {}).get((("outcome", "calls"),), 0)),
            "records_lost": task.records_lost()}


def run_daemon(config_path: Path, capture_opener: CaptureOpener | None = None) -> int:
    try:
        config = load_config(config_path)
    except ConfigInvalid as invalid:
        for problem in invalid.problems:
            _log.error(str(problem))
        return EXIT_INVALID
    daemon = Daemon(config_path, capture_opener, config)
    with contextlib.ExitStack() as stack:
        _install_signals(stack, daemon)
        daemon.store = TaskStore(Path(config.state_dir))
        fleet = None if config.fleet is None else FleetChannel(config.fleet, daemon.commands.answer,
                                                                daemon.fleet_state)
        if config.metrics_listen is not None:
            metrics = MetricsServer(config.metrics_listen, daemon.manager.tasks,
                                    fleet.figures if fleet is not None else None)
            stack.callback(metrics.close)
            _log.info(f"metrics on http://{metrics.address}/metrics")
        control = ControlServer(config.control_socket, daemon.commands.answer)
        stack.callback(control.close)
        _log.info(f"control socket {config.control_socket}")
        stack.callback(daemon.manager.stop_all)  # first on the way out: tasks, newest first
        result = daemon.apply(config)
        if result.failed and not daemon.manager.tasks() and fleet is None:
            raise SetupError(f"no task could start: {'; '.join(result.failed.values())}")
        if fleet is not None:  # after the tasks: a command never races the start; closed before them
            fleet.start()
            stack.callback(fleet.close)
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
