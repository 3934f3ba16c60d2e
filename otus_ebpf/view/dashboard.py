"""The dashboard at the top of the live view (otus_ebpf.view.app), drawn with rich:
rates, drops at every stage (red when not zero), calls, each output's health,
RTP quality, and optionally the latest SIP messages. It reads the same samples
the metrics use, so nothing is counted twice on the packet path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from otus_ebpf.capture.sampling import TaskSample

RECENT_SHOWN = 8
# Characters a terminal acts on instead of showing: C0/C1 controls (ESC
# starts CSI/OSC sequences), DEL, and the bidirectional and zero-width
# format characters that make text read differently than it is.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def printable(value: object) -> str:
    """Untrusted text (a Call-ID, an address from the wire) made safe to draw:
    control characters become visible escapes like \\x1b."""
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], str(value))


def plain(value: object, limit: int | None = None) -> Text:
    """Untrusted text as a rich Text: never parsed as markup (no "[/]" can break a view)."""
    text = printable(value)
    return Text(text if limit is None else text[:limit])


class ViewedTask(Protocol):
    """What the view reads of a task: otus_ebpf.control.task.Task here, or a daemon's
    task through the control socket (`otus-ebpf top`)."""

    name: str

    def metrics_sample(self) -> TaskSample: ...

    def recent_rows(self) -> list[list[str]]: ...


def _total(sample: TaskSample, metric: str, **labels: str) -> int:
    wanted = set(labels.items())
    return int(sum(v for key, v in sample.counters.get(metric, {}).items() if wanted <= set(key)))


def _gauge(sample: TaskSample, metric: str, **labels: str) -> float:
    wanted = set(labels.items())
    return float(sum(v for key, v in sample.gauges.get(metric, {}).items() if wanted <= set(key)))


def _capture(sample: TaskSample, suffix: str) -> int:
    return sum(v for values in sample.capturers.values() for name, v in values.items()
               if name.endswith(suffix))


@dataclass(slots=True)
class _Previous:
    at: float
    packets: int
    sip: int


@dataclass(slots=True)
class Dashboard:
    tasks: Callable[[], Sequence[ViewedTask]]
    clock: Callable[[], float] = time.monotonic
    recent: bool = True  # the latest SIP messages under the figures
    _previous: dict[str, _Previous] = field(default_factory=dict)

    def render(self) -> RenderableType:
        panels: list[RenderableType] = []
        for task in self.tasks():
            sample = task.metrics_sample()
            panels.append(self._task_panel(task, sample))
        return Group(*panels) if panels else Text("no task running")

    def _rates(self, name: str, packets: int, sip: int) -> tuple[float, float]:
        now = self.clock()
        before = self._previous.get(name)
        self._previous[name] = _Previous(now, packets, sip)
        if before is None or now <= before.at:
            return 0.0, 0.0
        elapsed = now - before.at
        return max(0, packets - before.packets) / elapsed, max(0, sip - before.sip) / elapsed

    def _task_panel(self, task: ViewedTask, sample: TaskSample) -> RenderableType:
        packets = _capture(sample, "_seen") + _capture(sample, "packets")
        sip = _total(sample, "otus_sip_messages_total")
        pps, sip_rate = self._rates(task.name, packets, sip)
        head = Table.grid(padding=(0, 3))
        for _ in range(4):
            head.add_column()
        name = Text.assemble((printable(task.name), "bold"), f" {printable(sample.state)}")
        head.add_row(name, f"packets/s [b]{pps:,.0f}[/]",
                     f"SIP msg/s [b]{sip_rate:,.0f}[/]", f"SIP messages [b]{sip:,}[/]")
        head.add_row(f"calls active [b]{_gauge(sample, 'otus_dialogs_active'):,.0f}[/]",
                     f"calls ended [b]{_total(sample, 'otus_calls_total', outcome='ended'):,}[/]",
                     f"RTP streams [b]{_gauge(sample, 'otus_rtp_streams_active'):,.0f}[/]",
                     f"MOS [b]{_gauge(sample, 'otus_rtp_mos'):.2f}[/]")
        parts = [head, self._drops(sample), self._outputs(sample)]
        if self.recent:
            parts.append(self._recent(task))
        return Panel(Group(*parts), title="otus-ebpf", border_style="blue")

    def _drops(self, sample: TaskSample) -> RenderableType:
        stages = [
            ("ring full", _capture(sample, "submit_failed") // 2),  # counted per direction and per shard
            ("socket drops", _capture(sample, "drops")),
            ("decode errors", _total(sample, "otus_decode_errors_total")),
            ("fragments given up", sum(_total(sample, "otus_reassembly_total", outcome=o)
                                       for o in ("overlaps", "timeouts", "too_big", "evicted_datagrams"))),
            ("TCP gaps", _total(sample, "otus_tcp_total", outcome="gaps")),
            ("output overflow", _total(sample, "otus_output_records_total", outcome="overflow")),
            ("output failed", _total(sample, "otus_output_records_total", outcome="failed")),
            ("kafka dropped", _total(sample, "otus_kafka_records_total", outcome="dropped")),
        ]
        text = Text("drops  ")
        for label, value in stages:
            text.append(f"{label} {value:,}   ", style="bold red" if value else "green")
        return text

    def _outputs(self, sample: TaskSample) -> RenderableType:
        table = Table("output", "written", "queued", "overflow", "failed", box=None, padding=(0, 2))
        names = sorted({dict(key)["output"] for key in sample.counters.get("otus_output_records_total", {})})
        for name in names:
            failed = _total(sample, "otus_output_records_total", output=name, outcome="failed")
            overflow = _total(sample, "otus_output_records_total", output=name, outcome="overflow")
            written = _total(sample, "otus_output_records_total", output=name, outcome="written")
            table.add_row(plain(name), f"{written:,}",
                          f"{_gauge(sample, 'otus_output_queued', output=name):,.0f}",
                          Text(f"{overflow:,}", style="bold red" if overflow else ""),
                          Text(f"{failed:,}", style="bold red" if failed else ""))
        return table

    def _recent(self, task: ViewedTask) -> RenderableType:
        table = Table("time", "dir", "from", "to", "message", "Call-ID", box=None, padding=(0, 1),
                      title="latest SIP", title_justify="left")
        for row in task.recent_rows()[-RECENT_SHOWN:]:
            table.add_row(*(plain(cell, 60) for cell in row[:5]), plain(row[5], 40))
        return table
