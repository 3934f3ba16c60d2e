"""`otus-ebpf replay FILE`: a pcap or pcapng file through the same user-space
pipeline and reporters as a live capture.

Each frame is classified as the kernel would have done it (userspace.classify
mirrors bpf/otus.c; a parity test holds them equal), so only what the agent
would have captured reaches the pipeline, media flows included once their
SDP has been seen. Times are the file's: records carry the capture time,
and calls expire by it. pcapng keeps each frame's interface and direction
(as otus-ebpf writes them); classic pcap has neither, so its frames count as
ingress on an interface named after the file. ``--speed N`` paces frames by
their timestamps N times faster than captured; ``max`` (the default) reads
as fast as it can.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from otus_ebpf import logs
from otus_ebpf.capture.capture_file import CapturedFrame, CaptureFile, CaptureFileError, read_frames
from otus_ebpf.capture.processing import open_chain
from otus_ebpf.capture.runner import strict_mode
from otus_ebpf.errors import EXIT_RECORDS_LOST, SetupError
from otus_ebpf.kernel.flows import FlowStats, apply_each
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs.fanout import QueuedReporter
from otus_ebpf.outputs.wiring import (
    FrameOutputs,
    account_outputs,
    accounts_line,
    flush_reporters,
    open_frame_outputs,
    open_reporters,
)
from userspace.boundary import Boundary
from userspace.classify import Networks, Rules, Screen, classify_frame
from userspace.endpoints import FlowEvent
from userspace.event import Event, Flag, Kind
from userspace.pipeline import Pipeline
from userspace.processors.chain import ProcessorChain
from userspace.records import Record
from userspace.reporters.pcap import PcapReporter
from userspace.tunnel import TunnelCounts, media_protocol

# The reader's names stay importable from here, as before it had a module of its own.
__all__ = ["CaptureFileError", "CapturedFrame", "read_frames", "run_replay"]

BATCH = 512
_MEDIA = frozenset((Kind.RTP, Kind.RTCP))
_SIGNATURE = int(Flag.SIGNATURE)  # SIP found by its first bytes, where learned media would have come first
EXPIRY_STEP_NS = 100_000_000  # capture time between expiry passes: as often as the live loop
JUMP_NS = 60_000_000_000      # a frame stamped further ahead than this waits for the next to agree
UDP = 17
MAX_PAUSE_S = 60.0  # a gap in the file longer than this is replayed as this
_log = logs.get(__name__)


def run_replay(path: Path, options: AttachOptions, speed: float | None) -> int:
    """Replay ``path`` into the outputs of ``options``; ``speed`` None: as fast as possible.
    Returns 0, or EXIT_RECORDS_LOST when an output lost records; a file broken
    part way raises CaptureFileError once what came before it is written."""
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from None
    broken: CaptureFileError | None = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(stream)
        try:
            capture = CaptureFile(stream, path.stem)  # not a capture file: said before any output exists
        except SetupError as exc:
            raise SetupError(f"{path}: {exc}") from None
        reporters, kafka = open_reporters(stack, options, path.stem)
        frame_outputs = open_frame_outputs(stack, options)
        replayer = _Replayer(options, frame_outputs.wanted)
        try:
            _replay_frames(capture.frames(), replayer, reporters, frame_outputs, speed)
        except CaptureFileError as exc:
            broken = CaptureFileError(exc.offset, exc.reason, str(path))  # said once what came before is out
        last = replayer.pipeline.finish()  # calls still going at the end of the file
        processed = replayer.chain.process(last)
        for reporter in reporters:
            reporter.write(processed)
        if frame_outputs.wanted:
            frame_outputs.write(replayer.pipeline.take_frames(), last)
        flush_reporters(reporters)
        p = replayer.pipeline.stats
        errors = p.event_errors + p.decode_errors + p.sip_errors
        produced = replayer.records + len(last)
        clock = replayer.clock
        odd_times = (f", stamped_back={clock.stamped_back} stamped_ahead={clock.stamped_ahead}"
                     if clock.stamped_back or clock.stamped_ahead else "")
        odd_times += f", skipped_packets={capture.skipped}" if capture.skipped else ""
        screen = replayer.screen
        odd_times += f", filtered={replayer.filtered}" if replayer.filtered else ""
        odd_times += f", dropped_method={screen.dropped_methods}" if screen.dropped_methods else ""
        odd_times += f", duplicate={screen.duplicates}" if screen.duplicates else ""
        odd_times += "".join(f", {name}={n}" for name, n in replayer.tunnel_counts.counters().items() if n)
        unwritable = _unwritable(frame_outputs)
        odd_times += f", frames_the_pcap_cannot_hold={unwritable}" if unwritable else ""
        internal = replayer.pipeline.boundary.total
        if replayer.chain:
            said = processors_line(replayer.chain)
            _log.log(logging.WARNING if " failed=" in said else logging.INFO, said)
        _log.info(f"replayed {path}: {replayer.frames} frames, {replayer.events} captured, "
                  f"{produced} records, errors={errors}, internal_errors={internal}{odd_times}")
    accounts = account_outputs(reporters, kafka, frame_outputs)
    lost = any(a.lost for a in accounts)
    _log.log(logging.WARNING if lost else logging.INFO, accounts_line(produced, accounts))
    if broken is not None:
        raise broken
    return EXIT_RECORDS_LOST if lost else 0


def processors_line(chain: ProcessorChain) -> str:
    """What each processor did: ``processors: NAME VERDICT=N ...; ...`` (``failed``: batches it raised on)."""
    return "processors: " + "; ".join(
        " ".join([name, *(f"{verdict}={n}" for verdict, n in sorted(counts.items()))])
        for name, counts in chain.counts().items())


def _unwritable(frame_outputs: FrameOutputs) -> int:
    """Frames stamped where a pcap output has no room (a capture file may say any time)."""
    pcap = frame_outputs.pcap.stats.unwritable if isinstance(frame_outputs.pcap, PcapReporter) else 0
    return pcap + (frame_outputs.per_call.stats.unwritable if frame_outputs.per_call else 0)


def _replay_frames(frames: Iterator[CapturedFrame], replayer: _Replayer, reporters: list[QueuedReporter],
                   frame_outputs: FrameOutputs, speed: float | None) -> None:
    started, first_ts = time.monotonic(), None
    batch: list[CapturedFrame] = []
    try:
        for frame in frames:
            if speed is not None:
                first_ts = frame.ts_ns if first_ts is None else first_ts
                delay = (frame.ts_ns - first_ts) / 1e9 / speed - (time.monotonic() - started)
                if delay > 0.001:
                    _deliver(replayer, batch, reporters, frame_outputs)
                    batch = []
                    time.sleep(min(delay, MAX_PAUSE_S))
            batch.append(frame)
            if len(batch) >= BATCH:
                _deliver(replayer, batch, reporters, frame_outputs)
                batch = []
    finally:
        _deliver(replayer, batch, reporters, frame_outputs)  # what was read before a broken block too


def _deliver(replayer: _Replayer, batch: list[CapturedFrame], reporters: list[QueuedReporter],
             frame_outputs: FrameOutputs) -> None:
    if not batch:
        return
    records = replayer.process(batch)
    processed = replayer.chain.process(records)
    for reporter in reporters:
        reporter.write(processed)
    if frame_outputs.wanted:
        frame_outputs.write(replayer.pipeline.take_frames(), records)


class ExpiryClock:
    """The capture time calls and streams expire by. A pcap may be merged or
    edited: it never goes back, and one frame stamped far ahead of the rest does
    not move it (it would time out every call at once, then expire nothing for
    as long) — a jump is believed when the next frame lands past it too, as
    after a real gap in a capture. Both are counted."""

    def __init__(self) -> None:
        self.now = 0
        self.stamped_back = 0    # frames stamped before the latest time
        self.stamped_ahead = 0   # lone frames stamped more than JUMP_NS ahead, not believed
        self._ahead: int | None = None

    def see(self, ts_ns: int) -> None:
        if not self.now:
            self.now = ts_ns
            return
        if ts_ns - self.now > JUMP_NS:
            if self._ahead is None:
                self._ahead = ts_ns  # believed if the next frame agrees
                return
            self.now, self._ahead = ts_ns, None
            return
        if self._ahead is not None:
            self.stamped_ahead += 1
            self._ahead = None
        if ts_ns < self.now:
            self.stamped_back += 1
        else:
            self.now = ts_ns


class _Replayer:
    """Frames to records: the kernel's classification, then the pipeline."""

    def __init__(self, options: AttachOptions, keep_frames: bool) -> None:
        self.interfaces: dict[str, int] = {}
        self._names: dict[int, str] = {}  # the pipeline reads interface names from here
        boundary = Boundary(self._report_bug, strict_mode())
        self.pipeline = Pipeline(self._names, 0, options.reassembly, options.tcp, options.calls, boundary,
                                 websocket_ports=frozenset(options.kernel.ws_ports),
                                 tunnels=options.kernel.tunnels)
        self.pipeline.keep_frames = keep_frames
        self.pipeline.opened_rules = options.kernel.opened_rules()
        self.chain = open_chain(options, boundary)
        kernel = options.kernel
        # Learned endpoints, as the kernel's flow map would hold them; the rules see the
        # same dict, so learning is one assignment, not a copy of every endpoint.
        self._media: dict[tuple[bytes, int, int], tuple[Kind, int]] = {}
        # No socket filter here: the address filters judge every frame (a tunnel's by its inner addresses)
        self.networks = Networks.of(kernel.include, kernel.exclude, plain=True)
        self.tunnel_counts = TunnelCounts()  # the kernel's DECAP_* counters, counted here
        self._rules = Rules(frozenset(kernel.capture_ports), kernel.signature, 1, self._media, kernel.tunnels,
                            self.networks, self.tunnel_counts)
        # The drop list and dedup, as the kernel applies them; the window runs on the frames' own times.
        window_ns = kernel.dedup_window_ms * 1_000_000 if kernel.dedup else None
        self.screen = Screen(kernel.drop_methods, window_ns, kernel.snaplen)
        self.frames = self.events = self.records = 0
        self.clock = ExpiryClock()
        self._next_expiry = 0
        self.flow_stats = FlowStats()

    def _ifindex(self, name: str) -> int:
        index = self.interfaces.get(name)
        if index is None:
            index = self.interfaces[name] = len(self.interfaces) + 1
            self._names[index] = name
        return index

    def process(self, batch: list[CapturedFrame]) -> list[Record]:
        """Frames in capture order, as the kernel sees them: a SIP frame's learning
        (its SDP's media) applies before the next frame whose classification it
        could change (media, a signature match, one not captured) is classified.
        Frames on a SIP port and fragments do not depend on it: a run of them
        goes through the pipeline together, as media frames do, until capture
        time reaches the next expiry step."""
        records: list[Record] = []
        events: list[Event] = []
        learning = False  # events holds a message that may learn or forget media
        for frame in batch:
            self.frames += 1
            filtered = self.filtered
            event = self._classify(frame)
            if learning and self.filtered == filtered and (
                    event is None or event.kind in _MEDIA or event.flags & _SIGNATURE):
                records += self._run(events)
                events, learning = [], False
                event = self._classify(frame)
            if event is None or (self.screen.active and not self.screen.admit(event)):
                continue  # admitted once a frame: its last classification is the one
            events.append(event)
            self.clock.see(frame.ts_ns)
            learning = learning or event.kind not in _MEDIA
            if self.clock.now >= self._next_expiry:  # calls expire by capture time, here as live
                records += self._run(events)
                events, learning = [], False
        records += self._run(events)
        return records

    @property
    def filtered(self) -> int:
        """Frames the address filters kept out (the kernel's FILTERED); a frame they keep
        out is not classified again once media is learned."""
        return 0 if self.networks is None else self.networks.filtered

    def _classify(self, frame: CapturedFrame) -> Event | None:
        return classify_frame(frame.data, self._rules, frame.direction, frame.ts_ns,
                              self._ifindex(frame.interface), frame.orig_len)

    def _run(self, events: list[Event]) -> list[Record]:
        if not events:
            return []
        self.events += len(events)
        records = self.pipeline.process(events)
        now = self.clock.now
        if now >= self._next_expiry:  # calls expire by capture time
            records += self.pipeline.expire(now)
            self._next_expiry = now + EXPIRY_STEP_NS
        self._learn(self.pipeline.take_flow_events())
        self.records += len(records)
        return records

    def _learn(self, flow_events: list[FlowEvent]) -> None:
        if not flow_events:
            return
        media = self._media

        def learn(event: FlowEvent) -> None:
            media[event.address, event.port, media_protocol(UDP, event.tunnel)] = (event.kind, 0)

        def forget(event: FlowEvent) -> None:
            media.pop((event.address, event.port, media_protocol(UDP, event.tunnel)), None)

        apply_each(flow_events, learn, forget, self.flow_stats, self.pipeline.boundary)

    def _report_bug(self, stage: str, kind: str, exc: BaseException, example: bytes | None) -> None:
        shown = f"; input: {example[:200]!r}" if example is not None else ""
        _log.error(f"replay: internal error in {stage}: {kind}: {exc} (counted; replay goes on){shown}",
                   exc_info=exc if _log.isEnabledFor(logging.DEBUG) else None)


