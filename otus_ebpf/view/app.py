"""The interactive live view: a call list under the dashboard, a call's ladder,
a message's text. Built on Textual (rich's authors; it renders through rich,
which the dashboard already uses), because it brings keys, screens, scrolling
tables and a headless pilot to test them with.

It only reads: a CallSource (an agent's private socket for `attach`, a
daemon's control socket for `top`; this process's tasks in tests) is asked
for at most ROWS_ASKED rows a refresh and for one call at a time, so what it
costs does not grow with the calls the agent follows. For `attach` it runs in
a process of its own (python -m otus_ebpf.view): drawing never takes the
capture's interpreter lock.

Keys: / filter, s sort, p pause, enter open, escape back, j save JSON,
c save pcap, q quit.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, Log, OptionList, Static

from otus_ebpf.view.dashboard import printable
from otus_ebpf.view.ladder import endpoints, header, message_line, streams_table
from otus_ebpf.view.save import save_json, save_pcap
from otus_ebpf.view.sources import ROWS_ASKED, CallSource
from userspace.callbook import SORTS, CallDetail, CallRow, MessageLine

REFRESH_S = 1.0
FINISHED_CHECK_S = 0.5
ROWS_FIRST = 60  # rows asked for while the cursor is near the top
COLUMNS = ("start", "task", "method", "from", "to", "state", "dur s", "status", "MOS a→b", "MOS b→a",
           "lost", "msgs", "Call-ID")


def _cells(row: CallRow) -> tuple[str | Text, ...]:
    started = time.strftime("%H:%M:%S", time.localtime(row.start_ns / 1e9))
    status = Text(str(row.status or ""), style="bold red" if row.status >= 400 else "")
    return (started, printable(row.task)[:16], printable(row.method)[:10], printable(row.from_user)[:24],
            printable(row.to_user)[:24], printable(row.state)[:14], f"{row.duration_s:.1f}", status,
            _mos(row.mos_ab), _mos(row.mos_ba), f"{row.lost:,}", str(row.messages),
            printable(row.call_id)[:48])


def _mos(mos: float) -> Text:
    if not mos:
        return Text("-", style="dim")
    return Text(f"{mos:.2f}", style="green" if mos >= 4.0 else "yellow" if mos >= 3.6 else "bold red")


WIDTHS = (8, 10, 8, 18, 18, 11, 7, 6, 7, 7, 7, 5, 0)  # the columns' widths; the Call-ID takes what is left


def _line(cells: tuple[str | Text, ...]) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    for cell, width in zip(cells, WIDTHS, strict=True):
        piece = cell if isinstance(cell, Text) else Text(cell)
        if width:
            piece.truncate(width, pad=True)
        line.append_text(piece)
        line.append(" ")
    return line


HEADER = _line(COLUMNS)
HEADER.stylize("bold")


class CallTable(Widget, can_focus=True):
    """The call list: one line a call, a cursor line, drawn as plain text (a DataTable
    redrew every cell of every row on each change: ~200 ms a second under load)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", show=False), Binding("down", "move(1)", show=False),
        Binding("pageup", "move(-20)", show=False), Binding("pagedown", "move(20)", show=False),
        Binding("home", "move(-1000000)", show=False), Binding("end", "move(1000000)", show=False),
        Binding("enter", "choose", "open", show=False),
    ]

    class NearEnd(Message):
        """The cursor came near the last row asked for."""

    class Chosen(Message):
        def __init__(self, row: CallRow) -> None:
            super().__init__()
            self.row = row

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: list[CallRow] = []
        self.cursor = 0
        self._top = 0

    def show(self, rows: list[CallRow]) -> None:
        """New rows; the cursor stays on the call it was on when that call is still listed."""
        chosen = self.chosen()
        self.rows = rows
        keys = [(r.task, r.call_id) for r in rows]
        if chosen is not None and (chosen.task, chosen.call_id) in keys:
            self.cursor = keys.index((chosen.task, chosen.call_id))
        self.cursor = max(0, min(self.cursor, len(rows) - 1))
        self.refresh()

    def chosen(self) -> CallRow | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def action_move(self, by: int) -> None:
        self.cursor = max(0, min(self.cursor + by, len(self.rows) - 1))
        self.refresh()
        if self.cursor + self.size.height >= len(self.rows):  # near the end: more rows at the next refresh
            self.post_message(self.NearEnd())

    def action_choose(self) -> None:
        row = self.chosen()
        if row is not None:
            self.post_message(self.Chosen(row))

    def render(self) -> Text:
        visible = max(1, self.size.height - 1)
        if self.cursor < self._top:
            self._top = self.cursor
        elif self.cursor >= self._top + visible:
            self._top = self.cursor - visible + 1
        lines = [HEADER]
        for index in range(self._top, min(len(self.rows), self._top + visible)):
            line = _line(_cells(self.rows[index]))
            if index == self.cursor:
                line.stylize("reverse" if self.has_focus else "underline")
            lines.append(line)
        return Text("\n", no_wrap=True).join(lines)


def message_text(text: str) -> Text:
    """A message as received, each line made safe to draw (its line breaks kept)."""
    return Text("\n".join(printable(line) for line in text.replace("\r\n", "\n").split("\n")))


class CallList(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "filter"),
        Binding("s", "sort", "sort"),
        Binding("p", "pause", "pause"),
        Binding("q", "app.quit", "quit"),
        Binding("escape", "leave_filter", "list", show=False),
    ]

    def __init__(self, source: CallSource) -> None:
        super().__init__()
        self.source = source
        self.query_text = ""
        self.sort = SORTS[0]
        self.paused = False
        self._shown: list[CallRow] = []

    def compose(self) -> ComposeResult:
        yield Static(id="dashboard")
        yield Input(placeholder="/ to filter: user, Call-ID, state, status…", id="filter")
        yield Static(id="status")
        yield CallTable(id="calls")
        yield Log(id="log", max_lines=200)
        yield Footer()

    @property
    def table(self) -> CallTable:
        return self.query_one("#calls", CallTable)

    def on_mount(self) -> None:
        self.table.focus()
        self.refresh_view()
        self.set_interval(REFRESH_S, self.refresh_view)

    def refresh_view(self) -> None:
        self.query_one("#dashboard", Static).update(self.source.dashboard())
        if not self.paused:
            self._fill(self.source.rows(self.query_text, self.sort, self._wanted()))
        self._say_status()

    def _wanted(self) -> int:
        """Rows worth asking for: what fits twice over, and the rows down to the cursor."""
        table = self.table
        return min(ROWS_ASKED, max(ROWS_FIRST, table.cursor + 2 * table.size.height))

    def _fill(self, rows: list[CallRow]) -> None:
        if rows != self._shown:  # nothing changed: no redraw
            self._shown = rows
            self.table.show(rows)

    def _say_status(self) -> None:
        matching = f" matching {printable(self.query_text)!r}" if self.query_text else ""
        shown = f"{len(self._shown)} calls shown{matching}"
        paused = ("   PAUSED (p resumes)", "bold") if self.paused else ""
        self.query_one("#status", Static).update(Text.assemble(f"sort: {self.sort}   {shown}", paused))

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        self._fill(self.source.rows(self.query_text, self.sort, self._wanted()))
        self._say_status()

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.table.focus()

    def on_call_table_near_end(self, _event: CallTable.NearEnd) -> None:
        if not self.paused:
            self._fill(self.source.rows(self.query_text, self.sort, self._wanted()))

    def on_call_table_chosen(self, event: CallTable.Chosen) -> None:
        self.app.push_screen(Ladder(self.source, event.row))

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_leave_filter(self) -> None:
        self.table.focus()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._fill(self.source.rows(self.query_text, self.sort, self._wanted()))
        self._say_status()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.refresh_view()

    def on_print(self, event: events.Print) -> None:
        if event.text.strip():
            self.say(event.text.rstrip("\n"))

    def say(self, line: str) -> None:
        """A log line of the agent, in the panel under the list."""
        self.query_one("#log", Log).write_line(printable(line))


class CallScreen(Screen[None]):
    """A screen of one call: back, and the call saved as JSON or pcap."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "back"),
        Binding("j", "save_json", "save JSON"),
        Binding("c", "save_pcap", "save pcap"),
        Binding("q", "app.quit", "quit"),
    ]
    detail: CallDetail | None

    def action_save_json(self) -> None:
        _save(self.app, self.detail, "json")

    def action_save_pcap(self) -> None:
        _save(self.app, self.detail, "pcap")


class Ladder(CallScreen):
    """One call: its message flow, its media; enter opens a message."""

    def __init__(self, source: CallSource, row: CallRow) -> None:
        super().__init__()
        self.source = source
        self.row = row
        self.detail: CallDetail | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="endpoints")
        yield OptionList(id="ladder")
        yield Static(id="streams")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()
        self.set_interval(REFRESH_S, self.refresh_view)
        self.query_one("#ladder", OptionList).focus()

    def refresh_view(self) -> None:
        detail = self.source.detail(self.row)
        if detail is None:
            if self.detail is None:
                waiting = f"call {printable(self.row.call_id)}: waiting for it…"
                self.query_one("#title", Static).update(Text(waiting))
            return
        if self.detail is not None and detail == self.detail:
            return
        fresh = self.detail is None or len(detail.messages) != len(self.detail.messages)
        self.detail = detail
        self._draw(detail, fresh)

    def _draw(self, detail: CallDetail, fresh_messages: bool) -> None:
        row = detail.row
        more = f"   ({detail.not_kept} later messages counted, not kept)" if detail.not_kept else ""
        self.query_one("#title", Static).update(Text.assemble(
            ("call ", "bold"), printable(row.call_id)[:80],
            f"   {printable(row.from_user)} → {printable(row.to_user)}   {printable(row.state)}"
            f" {row.status or ''}   {row.duration_s:.1f} s{more}"))
        width = max(60, self.size.width)
        columns = endpoints(detail.messages)
        self.query_one("#endpoints", Static).update(header(columns, width))
        if fresh_messages:
            ladder = self.query_one("#ladder", OptionList)
            highlighted = ladder.highlighted
            start = detail.messages[0].ts_ns if detail.messages else 0
            ladder.set_options([message_line(m, columns, start, width) for m in detail.messages])
            if detail.messages:
                ladder.highlighted = min(highlighted or 0, len(detail.messages) - 1)
        self.query_one("#streams", Static).update(streams_table(detail))

    def on_resize(self, _event: events.Resize) -> None:
        if self.detail is not None:  # the columns follow the terminal's width
            self._draw(self.detail, True)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if self.detail is not None and 0 <= event.option_index < len(self.detail.messages):
            self.app.push_screen(MessageView(self.detail.messages[event.option_index], self.detail))


class MessageView(CallScreen):
    """One message's text, as captured."""

    def __init__(self, message: MessageLine, detail: CallDetail) -> None:
        super().__init__()
        self.message = message
        self.detail = detail

    def compose(self) -> ComposeResult:
        m = self.message
        yield Static(Text.assemble((printable(m.label), "bold"), f"   {printable(m.src)} → {printable(m.dst)}"
                                   f"   {m.transport}" + ("   retransmission" if m.retransmission else "")),
                     id="title")
        with VerticalScroll(id="message"):
            yield Static(message_text(m.text), id="text")
        yield Footer()


def _save(app: App[None], detail: CallDetail | None, kind: str) -> None:
    if detail is None:
        app.notify("nothing to save yet", severity="warning")
        return
    directory = getattr(app, "save_dir", Path.cwd())
    try:
        path = save_json(detail, directory) if kind == "json" else save_pcap(detail, directory)
    except OSError as exc:
        app.notify(f"cannot save: {printable(exc)}", severity="error")
        return
    app.notify(f"saved {path}")


VIEW_NICENESS = 10  # the view yields the CPUs to the capture when both want them


def yield_to_capture() -> None:
    """Lower this process's priority: on a busy machine the capture goes first, and
    the view draws with what is left (it stays responsive on an idle one)."""
    with contextlib.suppress(OSError):
        os.nice(VIEW_NICENESS)


class LiveApp(App[None]):
    """The view; exits by itself when the source says the capture is over."""

    TITLE = "otus-ebpf"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+c", "quit", "quit", show=False, priority=True)]
    CSS = """
    #dashboard { height: auto; max-height: 14; }
    #filter { height: 3; }
    #status { height: 1; color: $text-muted; }
    #calls { height: 1fr; }
    #log { height: 4; border-top: solid $primary-darken-2; }
    #title { height: auto; padding: 0 1; }
    #endpoints { height: 1; }
    #ladder { height: 1fr; }
    #streams { height: auto; max-height: 10; }
    #message { height: 1fr; padding: 0 1; }
    """

    def __init__(self, source: CallSource, save_dir: Path | None = None) -> None:
        super().__init__()
        self.source = source
        self.save_dir = save_dir if save_dir is not None else Path.cwd()
        self.calls = CallList(source)

    def on_mount(self) -> None:
        self.push_screen(self.calls)
        self.begin_capture_print(self.calls, stdout=False, stderr=True)  # log lines go to the view's log
        self.set_interval(FINISHED_CHECK_S, self._check_finished)

    def _check_finished(self) -> None:
        finished = self.source.finished()
        for line in self.source.log_lines():
            self.calls.say(line)
        if finished:
            self.exit()
