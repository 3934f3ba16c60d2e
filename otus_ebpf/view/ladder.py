"""A call's message flow as text: one column per endpoint, an arrow a message.

Pure rendering (rich Text, no widgets), so the ladder reads the same in the
app, in a test and in a saved file. Every string from the wire goes through
``printable`` first: a Call-ID or reason phrase cannot move the cursor.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from otus_ebpf.view.dashboard import plain, printable
from userspace.callbook import CallDetail, MessageLine

TIME_WIDTH = 10      # "+12.345s " before the first column
MIN_COLUMN = 18
MAX_COLUMN = 44


def endpoints(messages: list[MessageLine]) -> list[str]:
    """Every address:port the call's messages went between, in the order first seen."""
    seen: dict[str, None] = {}
    for m in messages:
        seen.setdefault(m.src)
        seen.setdefault(m.dst)
    return list(seen)


def column_width(count: int, width: int) -> int:
    return max(MIN_COLUMN, min(MAX_COLUMN, (width - TIME_WIDTH) // max(1, count)))


def header(columns: list[str], width: int) -> Text:
    size = column_width(len(columns), width)
    text = Text(" " * TIME_WIDTH)
    for name in columns:
        shown = printable(name)[:size - 1]
        text.append(shown.center(size), style="bold cyan")
    return text


def message_line(message: MessageLine, columns: list[str], start_ns: int, width: int) -> Text:
    """Two lines: the label over its arrow, the time since the call's first message at the left."""
    size = column_width(len(columns), width)
    centre = [i * size + size // 2 for i in range(len(columns))]
    span = len(columns) * size
    a, b = centre[columns.index(message.src)], centre[columns.index(message.dst)]
    left, right = min(a, b), max(a, b)
    arrow = [" "] * span
    for x in centre:
        arrow[x] = "│"
    if left == right:  # to itself: a short loop
        arrow[left:left + 3] = "└─┘"[:max(0, span - left)]
    else:
        arrow[left:right + 1] = "─" * (right - left + 1)
        arrow[b] = "▶" if b > a else "◀"
        arrow[a] = "├" if b > a else "┤"
    label = printable(message.label)
    if message.retransmission:
        label += " (retransmission)"
    room = max(1, right - left - 1) if right > left else size - 1
    label = label[:room].center(room)
    above = [" "] * span
    for x in centre:
        above[x] = "│"
    above[left + 1:left + 1 + len(label)] = label
    offset = f"+{(message.ts_ns - start_ns) / 1e9:.3f}s".rjust(TIME_WIDTH - 1) + " "
    style = "yellow" if message.retransmission else ("bold green" if _is_request(message) else "bold magenta")
    text = Text(" " * TIME_WIDTH)
    text.append("".join(above[:span]), style=style)
    text.append("\n")
    text.append(offset, style="dim")
    text.append("".join(arrow[:span]))
    return text


def _is_request(message: MessageLine) -> bool:
    """A response's label starts with its status code; a method from the wire may hold
    digits that are not ASCII ('²'), which a status never does."""
    code = message.label[:3]
    return not (code.isascii() and code.isdigit())


def streams_table(detail: CallDetail) -> Table:
    table = Table("RTP from", "to", "codec", "packets", "lost", "loss %", "jitter ms", "MOS",
                  box=None, padding=(0, 2), title="media", title_justify="left")
    for s in detail.streams:
        table.add_row(plain(s.src), plain(s.dst), plain(s.codec), f"{s.packets:,}", f"{s.lost:,}",
                      f"{s.loss_percent:.2f}", f"{s.jitter_ms:.2f}",
                      Text(f"{s.mos:.2f}" if s.mos else "-", style=_mos_style(s.mos)))
    if not detail.streams:
        table.add_row("no RTP measured for this call", *[""] * 7)
    return table


def _mos_style(mos: float) -> str:
    if not mos:
        return ""
    return "green" if mos >= 4.0 else "yellow" if mos >= 3.6 else "bold red"


def ladder_text(detail: CallDetail, width: int = 120) -> Text:
    """The whole ladder as one Text (a saved file, a test)."""
    columns = endpoints(detail.messages)
    text = header(columns, width)
    start = detail.messages[0].ts_ns if detail.messages else 0
    for message in detail.messages:
        text.append("\n")
        text.append(message_line(message, columns, start, width))
    return text
