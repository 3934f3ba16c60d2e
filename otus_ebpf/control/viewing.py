"""The verbs a live view reads through: a daemon's control socket answers them
for `otus-ebpf top`, and `attach` answers them on a private socket for its
own view, which runs in a process of its own (otus_ebpf.view). Over the
control socket only: a call's messages are for the node's own operator, not
for the fleet."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from otus_ebpf.capture.sampling import TaskSample, sample_to_json
from otus_ebpf.control.commands import SOCKET, Handler
from otus_ebpf.errors import SetupError
from userspace.callbook import ROWS_SHOWN, SORTS, CallDetail, CallRow, detail_json, order_rows

MAX_QUERY = 200  # characters of a call list's filter


class ViewedTask(Protocol):
    """What the verbs read of a task (otus_ebpf.control.task.Task)."""

    name: str

    def metrics_sample(self) -> TaskSample: ...

    def recent_rows(self) -> list[list[str]]: ...

    def watch_calls(self) -> None: ...

    def calls(self, query: str, sort: str, limit: int) -> list[CallRow]: ...

    def call_detail(self, call_id: str) -> CallDetail | None: ...


class ViewVerbs:
    """samples, calls and call over ``tasks``; ``log`` is what the agent said while
    its view held the terminal (None for a daemon, whose lines go to its journal)."""

    def __init__(self, tasks: Callable[[], Sequence[ViewedTask]],
                 log: Callable[[int], tuple[int, list[str]]] | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self._tasks = tasks
        self._log = log
        self._stopping = stopping

    def handlers(self) -> dict[str, Handler]:
        verbs: dict[str, Handler] = {"samples": self.samples, "calls": self.calls, "call": self.call}
        if self._log is not None:
            verbs["log"] = self.log
        return verbs

    def samples(self, _request: dict[str, Any], _origin: str) -> dict[str, Any]:
        return {"stopping": self._stopping(),
                "tasks": [{"name": t.name, "sample": sample_to_json(t.metrics_sample()),
                           "recent": t.recent_rows()} for t in self._tasks()]}

    def calls(self, request: dict[str, Any], origin: str) -> dict[str, Any]:
        """The call list over every task; asking starts keeping calls."""
        _socket_only(request, origin)
        query, sort = request.get("query", ""), request.get("sort", "start")
        limit = request.get("limit", ROWS_SHOWN)
        if not isinstance(query, str) or len(query) > MAX_QUERY:
            raise SetupError(f'calls: "query" is a text of at most {MAX_QUERY} characters')
        if sort not in SORTS:
            raise SetupError(f'calls: "sort" is one of {", ".join(SORTS)}')
        if type(limit) is not int or not 0 < limit <= ROWS_SHOWN:
            raise SetupError(f'calls: "limit" is a whole number from 1 to {ROWS_SHOWN}')
        rows = []
        for task in self._tasks():
            task.watch_calls()
            rows += task.calls(query, sort, limit)
        return {"calls": [list(row) for row in order_rows(rows, sort)[:limit]]}

    def call(self, request: dict[str, Any], origin: str) -> dict[str, Any]:
        """One call of a task whole: its messages and media, or null when not kept."""
        _socket_only(request, origin)
        call_id, name = request.get("call_id"), request.get("task")
        if not isinstance(call_id, str):
            raise SetupError('call: "call_id" names the call')
        task = next((t for t in self._tasks() if t.name == name), None)
        if task is None:
            raise SetupError(f"no task named {name!r}")
        detail = task.call_detail(call_id)
        return {"call": detail_json(detail) if detail is not None else None}

    def log(self, request: dict[str, Any], origin: str) -> dict[str, Any]:
        """The agent's log lines after line number ``after``."""
        _socket_only(request, origin)
        after = request.get("after", 0)
        if type(after) is not int or after < 0:
            raise SetupError('log: "after" is a line number')
        assert self._log is not None
        last, lines = self._log(after)
        return {"last": last, "lines": lines}


def _socket_only(request: dict[str, Any], origin: str) -> None:
    if origin != SOCKET:
        raise SetupError(f"{request.get('cmd')}: only over the control socket")
