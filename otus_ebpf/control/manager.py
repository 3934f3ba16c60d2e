"""Many tasks at once: started from a config, each polling on its own thread,
changed by diffing a reloaded config against what runs.

``apply(config)`` stops the tasks the new config no longer has, changes
filters (SIP ports, signature, networks) and outputs live where only those
changed (nothing detached, no dialog dropped; outputs of tasks with worker
processes excepted), restarts the ones whose other settings changed, starts
the new ones, and leaves every other task alone — its counters and its
capture keep running. A task that fails
to start leaves the manager as it was (the task released what it started).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from otus_ebpf import logs
from otus_ebpf.control.config import Config, TaskConfig
from otus_ebpf.control.task import CaptureOpener, Task, TaskStartError, TaskState

_log = logs.get(__name__)


@dataclass(slots=True)
class ApplyResult:
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)  # filters changed live
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class _Running:
    def __init__(self, config: TaskConfig, task: Task) -> None:
        self.config = config
        self.task = task
        self.thread = threading.Thread(target=task.run, name=f"task-{config.name}", daemon=True)


class TaskManager:
    def __init__(self, capture_opener: CaptureOpener | None = None,
                 task_factory: Callable[..., Task] = Task) -> None:
        self._opener = capture_opener
        self._factory = task_factory
        self._running: dict[str, _Running] = {}
        self._lock = threading.RLock()  # apply, create, delete and stop never interleave

    def tasks(self) -> list[Task]:
        with self._lock:
            return [r.task for r in self._running.values()]

    def get(self, name: str) -> Task | None:
        with self._lock:
            running = self._running.get(name)
            return running.task if running else None

    def create(self, config: TaskConfig) -> None:
        """Start one task; raises TaskStartError (nothing left running) or ValueError (name taken)."""
        with self._lock:
            if config.name in self._running:
                raise ValueError(f"task {config.name!r} exists")
            task = self._factory(config.name, config.options, self._opener)
            task.start()
            running = _Running(config, task)
            self._running[config.name] = running
            running.thread.start()
            _log.info(f"task {config.name}: running")

    def delete(self, name: str) -> bool:
        with self._lock:
            running = self._running.pop(name, None)
        if running is None:
            return False
        running.task.stop()
        running.thread.join()
        _log.info(f"task {name}: stopped")
        return True

    def apply(self, config: Config) -> ApplyResult:
        result = ApplyResult()
        wanted = {task.name: task for task in config.tasks}
        with self._lock:
            for name in [n for n in self._running if n not in wanted]:
                self.delete(name)
                result.stopped.append(name)
            for name, task_config in wanted.items():
                current = self._running.get(name)
                failed = current is not None and current.task.state is TaskState.FAILED
                if current is not None and current.config == task_config and not failed:
                    result.unchanged.append(name)
                    continue
                if failed and current is not None:
                    _log.warning(f"task {name}: failed earlier ({current.task.failure}); starting it again")
                if current is not None and not failed and current.config.dispatch == task_config.dispatch \
                        and current.task.can_reconfigure(task_config.options):
                    current.task.reconfigure(task_config.options)
                    current.config = task_config
                    result.reconfigured.append(name)
                    continue
                if current is not None:
                    self.delete(name)
                try:
                    self.create(task_config)
                except TaskStartError as exc:
                    result.failed[name] = str(exc)
                    _log.error(str(exc))
                    continue
                (result.restarted if current is not None else result.started).append(name)
        return result

    def stop_all(self) -> None:
        """Stop every task, newest first; safe to call more than once."""
        with self._lock:
            names = list(self._running)
        for name in reversed(names):
            self.delete(name)
