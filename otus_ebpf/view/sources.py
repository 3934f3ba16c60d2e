"""Where a live view reads: the tasks of this process (`attach`), or a daemon's
through its control socket (`top`). One protocol, so the app cannot tell."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Protocol

from rich.console import RenderableType
from rich.text import Text

from otus_ebpf.capture.sampling import TaskSample, sample_from_json
from otus_ebpf.control.server import request
from otus_ebpf.errors import SetupError
from otus_ebpf.view.dashboard import Dashboard, printable
from userspace.callbook import FIELD_SHOWN, CallDetail, CallRow, detail_of, row_of

ROWS_ASKED = 200  # the list's rows: what a terminal can page through, whatever the calls live
LOG_LINE_SHOWN = 1_000
# What a request may meet: no answer (SetupError), or an answer of another version's shape.
_NOT_ANSWERED = (SetupError, ValueError, KeyError, TypeError)
ASK_TIMEOUT_S = 2.0  # a request the view makes: past it, "not answering" (the view never freezes longer)


class CallSource(Protocol):
    def dashboard(self) -> RenderableType: ...

    def rows(self, query: str, sort: str, limit: int) -> list[CallRow]: ...

    def detail(self, row: CallRow) -> CallDetail | None: ...

    def finished(self) -> bool: ...

    def log_lines(self) -> list[str]: ...


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
    """Tasks over a control socket: a daemon's (`otus-ebpf top`), or with ``agent`` the
    private socket of the `attach` this view belongs to, whose end is the view's end
    and whose log lines it shows. A socket that stops answering is said on the
    dashboard (a daemon restarting) or ends the view (an agent gone)."""

    def __init__(self, socket_path: str, agent: bool = False) -> None:
        self._path = socket_path
        self._agent = agent
        self._dashboard = Dashboard(self.remote_tasks, recent=False)
        self._rows: list[CallRow] = []
        self._log_after = 0
        self._lines: list[str] = []
        self._gone = False
        self._agent_pid = os.getppid() if agent else 0  # the agent started this view

    def remote_tasks(self) -> list[_RemoteTask]:
        answer = self._ask({"cmd": "samples"})
        self._gone = self._gone or bool(answer.get("stopping"))
        return [_RemoteTask(t) for t in answer["tasks"]]

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        return request(self._path, message, timeout=ASK_TIMEOUT_S)

    def dashboard(self) -> RenderableType:
        try:
            return self._dashboard.render()
        except _NOT_ANSWERED as exc:
            said = f"{printable(self._path)} not answering: {printable(exc)}"
            return Text(said[:FIELD_SHOWN], style="bold red")

    def rows(self, query: str, sort: str, limit: int) -> list[CallRow]:
        with contextlib.suppress(*_NOT_ANSWERED):  # said on the dashboard; the last rows stay
            answer = self._ask({"cmd": "calls", "query": query, "sort": sort, "limit": limit})
            self._rows = [row_of(row) for row in answer["calls"]]
        return self._rows

    def detail(self, row: CallRow) -> CallDetail | None:
        try:
            answer = self._ask({"cmd": "call", "task": row.task, "call_id": row.call_id})
            return detail_of(answer["call"]) if answer.get("call") is not None else None
        except _NOT_ANSWERED:
            return None

    def finished(self) -> bool:
        """For an agent's view: the agent stops, or is gone. Asked twice a second,
        with its new log lines (a daemon's view ends by q only)."""
        if not self._agent:
            return False
        if os.getppid() != self._agent_pid or not os.path.exists(self._path):
            return True  # the agent is gone (its socket goes with it); a slow one is waited for
        try:
            answer = self._ask({"cmd": "log", "after": self._log_after})
            self._log_after = int(answer["last"])
            self._lines += [printable(line)[:LOG_LINE_SHOWN] for line in answer["lines"]]
        except _NOT_ANSWERED:
            return self._gone
        return self._gone or bool(answer.get("stopping"))

    def log_lines(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines
