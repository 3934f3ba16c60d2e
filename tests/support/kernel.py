"""Run the compiled kernel programs on crafted frames with BPF_PROG_TEST_RUN.

No interface is involved: the kernel runs the program on our bytes, and we
read back its verdict, which counters moved, and the records it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from otus_ebpf.kernel.bpfsys import prog_test_run
from otus_ebpf.kernel.counters import KernelCounts, read_kernel_counters
from otus_ebpf.kernel.loader import LoadedPrograms, load_programs
from otus_ebpf.kernel.maps import KernelMaps
from otus_ebpf.kernel.rings import Reader, open_reader
from otus_ebpf.kernel.settings import KernelSettings
from userspace.event import Counter, Direction, Event, decode_event

XDP_PASS = 2
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1 as the u32 the kernel hands back


class Hook(Enum):
    XDP = "xdp"
    TC = "tc"

    @property
    def direction(self) -> Direction:
        return Direction.INGRESS if self is Hook.XDP else Direction.EGRESS

    @property
    def pass_verdict(self) -> int:
        return XDP_PASS if self is Hook.XDP else TC_ACT_UNSPEC


@dataclass(frozen=True, slots=True)
class Run:
    retval: int
    moved: dict[Counter, int]  # counters of the hook's direction that changed
    events: list[Event]

    @property
    def event(self) -> Event:
        assert len(self.events) == 1, self.events
        return self.events[0]


class KernelHarness:
    def __init__(self, settings: KernelSettings) -> None:
        self.programs: LoadedPrograms = load_programs(settings)
        self.reader: Reader = open_reader(self.programs)

    @property
    def maps(self) -> KernelMaps:
        return self.programs.maps

    def forget_seen(self) -> None:
        """Empty the duplicate window: no packet seen yet."""
        self.maps.forget_seen()

    def counters(self) -> KernelCounts:
        return read_kernel_counters(self.programs.bpf)

    def run(self, frame: bytes, hook: Hook = Hook.XDP) -> Run:
        before = self.counters()
        fd = self.programs.xdp_fd if hook is Hook.XDP else self.programs.tc_fd
        retval, _ns = prog_test_run(fd, frame)
        events = [decode_event(raw) for raw in self.reader.drain()]
        after = self.counters()
        moved = {c: after[hook.direction, c] - before[hook.direction, c]
                 for (d, c) in after if d is hook.direction and after[d, c] != before[d, c]}
        return Run(retval, moved, events)

    def close(self) -> None:
        self.programs.close()
