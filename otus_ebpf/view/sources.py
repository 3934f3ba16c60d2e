"""Where a live view reads: the tasks of this process (`attach`), or a daemon's
through its control socket (`top`). One protocol, so the app cannot tell."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from rich.console import RenderableType
from rich.text import Text

from otus_ebpf.capture.sampling import TaskSample, sample_from_json
from otus_ebpf.control.server import request
from otus_ebpf.errors import SetupError
from otus_ebpf.view.dashboard import Dashboard, printable
from userspace.callbook import CallDetail, CallRow, detail_of, row_of

ROWS_ASKED = 200  # the list's rows: what a terminal can page through, whatever the calls live
FOLLOW_TIMEOUT_S = 2.0  # an agent that does not answer its view's poll for this long is taken as gone


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

    def remote_tasks(self) -> list[_RemoteTask]:
        answer = request(self._path, {"cmd": "samples"})
        self._gone = self._gone or bool(answer.get("stopping"))
        return [_RemoteTask(t) for t in answer["tasks"]]

    def dashboard(self) -> RenderableType:
        try:
            return self._dashboard.render()
        except SetupError as exc:
            return Text(f"not answering: {printable(exc)}", style="bold red")

    def rows(self, query: str, sort: str, limit: int) -> list[CallRow]:
        with contextlib.suppress(SetupError):  # said on the dashboard; the last rows stay
            answer = request(self._path, {"cmd": "calls", "query": query, "sort": sort, "limit": limit})
            self._rows = [row_of(row) for row in answer["calls"]]
        return self._rows

    def detail(self, row: CallRow) -> CallDetail | None:
        try:
            answer = request(self._path, {"cmd": "call", "task": row.task, "call_id": row.call_id})
        except SetupError:
            return None
        return detail_of(answer["call"]) if answer.get("call") is not None else None

    def finished(self) -> bool:
        """For an agent's view: the agent stops, or is gone. Asked twice a second,
        with its new log lines (a daemon's view ends by q only)."""
        if not self._agent:
            return False
        try:
            answer = request(self._path, {"cmd": "log", "after": self._log_after}, timeout=FOLLOW_TIMEOUT_S)
        except SetupError:
            return True
        self._log_after = int(answer["last"])
        self._lines += [str(line) for line in answer["lines"]]
        return self._gone or bool(answer.get("stopping"))

    def log_lines(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines
