"""Where a live view reads: the tasks of this process (`attach`), or a daemon's
through its control socket (`top`). One protocol, so the app cannot tell."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from rich.console import RenderableType

from otus_ebpf.capture.sampling import TaskSample, sample_from_json
from otus_ebpf.control.server import request
from otus_ebpf.view.dashboard import Dashboard
from userspace.callbook import CallDetail, CallRow, detail_of, order_rows, row_of

ROWS_ASKED = 200  # the list's rows: what a terminal can page through, whatever the calls live


class CallSource(Protocol):
    def dashboard(self) -> RenderableType: ...

    def rows(self, query: str, sort: str) -> list[CallRow]: ...

    def detail(self, row: CallRow) -> CallDetail | None: ...

    def finished(self) -> bool: ...


class WatchedTask(Protocol):
    """What the view reads of a task (otus_ebpf.control.task.Task)."""

    name: str

    def metrics_sample(self) -> TaskSample: ...

    def recent_rows(self) -> list[list[str]]: ...

    def watch_calls(self) -> None: ...

    def calls(self, query: str, sort: str, limit: int) -> list[CallRow]: ...

    def call_detail(self, call_id: str) -> CallDetail | None: ...


class LocalSource:
    """The tasks of this process; ``finished`` says when the capture is over."""

    def __init__(self, tasks: Callable[[], Sequence[WatchedTask]], finished: Callable[[], bool]) -> None:
        self._tasks = tasks
        self._finished = finished
        self._dashboard = Dashboard(tasks, recent=False)
        for task in tasks():
            task.watch_calls()

    def dashboard(self) -> RenderableType:
        return self._dashboard.render()

    def rows(self, query: str, sort: str) -> list[CallRow]:
        rows = [row for task in self._tasks() for row in task.calls(query, sort, ROWS_ASKED)]
        return order_rows(rows, sort)[:ROWS_ASKED]

    def detail(self, row: CallRow) -> CallDetail | None:
        for task in self._tasks():
            if task.name == row.task or not row.task:
                return task.call_detail(row.call_id)
        return None

    def finished(self) -> bool:
        return self._finished()


class _RemoteTask:
    def __init__(self, data: dict[str, Any]) -> None:
        self.name = str(data["name"])
        self._sample = sample_from_json(data["sample"])
        self._recent = [list(map(str, row)) for row in data["recent"]]

    def metrics_sample(self) -> TaskSample:
        return self._sample

    def recent_rows(self) -> list[list[str]]:
        return self._recent


class RemoteSource:
    """A running daemon's tasks over its control socket (`otus-ebpf top`)."""

    def __init__(self, socket_path: str) -> None:
        self._path = socket_path
        self._dashboard = Dashboard(self.remote_tasks, recent=False)

    def remote_tasks(self) -> list[_RemoteTask]:
        return [_RemoteTask(t) for t in request(self._path, {"cmd": "samples"})["tasks"]]

    def dashboard(self) -> RenderableType:
        return self._dashboard.render()

    def rows(self, query: str, sort: str) -> list[CallRow]:
        answer = request(self._path, {"cmd": "calls", "query": query, "sort": sort, "limit": ROWS_ASKED})
        return [row_of(row) for row in answer["calls"]]

    def detail(self, row: CallRow) -> CallDetail | None:
        answer = request(self._path, {"cmd": "call", "task": row.task, "call_id": row.call_id})
        return detail_of(answer["call"]) if answer.get("call") is not None else None

    def finished(self) -> bool:
        return False
