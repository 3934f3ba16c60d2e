"""Captured events in, records out: the per-packet path of whatever captures
(a task, each of its worker processes, replay).

An event is a ring record from the kernel, decoded here, or one the frame
parser built in user space (userspace.classify: AF_PACKET and replay).
Reassembles IP fragments, frames SIP messages and builds records; feeds
RTP and RTCP on learned flows to their calls' streams, which give periodic
``rtp`` reports and ``rtcp`` records. Bad input is counted by layer and
skipped. Any other exception is a bug: the failure boundary around each
event counts it by stage and type and goes on with the next event (or
re-raises, strict).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from userspace.boundary import Boundary
from userspace.calls import CallLimits, CallTracker
from userspace.classify import SIGNATURES, Rules
from userspace.endpoints import FlowEvent
from userspace.errors import DecodeError
from userspace.event import Captured, Event, Flag, Kind, decode_event
from userspace.frame import (
    DEFAULT_TUNNELS,
    TCP,
    UDP,
    Layout,
    Packet,
    decode_datagram,
    encapsulation,
    packet_at,
    tunnel_frame,
    vlan_ids,
    walk,
)
from userspace.kernel_streams import StreamSource, stream_key
from userspace.reassembly import Fragment, Reassembler, ReassemblyLimits
from userspace.records import Frame, Origin, Record, RtcpRecord, SipRecord, StreamReport
from userspace.rtcp import is_rtcp
from userspace.sharding import HandOff, decode_handoff, handoff_record, owner_of
from userspace.sip import looks_like_sip, parse_message
from userspace.tcp import SEQ_MOD, SYN, TcpLimits, TcpStreams
from userspace.tls import TLS, WSS, Process, decode_chunk
from userspace.tunnel import Encap, Tunnels
from userspace.websocket import WS

_MEDIA_KINDS = frozenset((Kind.RTP, Kind.RTCP))
# Flags and kinds as plain ints: ``int & IntFlag`` builds an enum object per event (~2 µs compiled).
_INNER, _STREAM, _OWNED, _FRAGMENT = int(Flag.INNER), int(Flag.STREAM), int(Flag.OWNED), int(Flag.FRAGMENT)
_SIP_KIND, _FRAGMENT_KIND, _RTP_KIND = int(Kind.SIP), int(Kind.FRAGMENT), int(Kind.RTP)
_TLS_KIND = int(Kind.TLS)
TLS_INTERFACE = "tls"  # the interface of records read as TLS plaintext (they come from no interface)


@dataclass(slots=True)
class PipelineStats:
    events: int = 0
    media: int = 0  # RTP/RTCP events on learned flows (measured per stream: userspace.media)
    event_errors: int = 0
    decode_errors: int = 0
    empty_payloads: int = 0
    not_sip: int = 0
    sip_errors: int = 0
    sip_defects: int = 0  # messages parsed with a counted defect
    records: int = 0
    handed_off: int = 0   # messages framed here whose Call-ID another worker owns
    handed_in: int = 0    # messages another worker framed for a Call-ID this one owns
    tunnels_reassembled: int = 0  # tunnels carried in fragmented datagrams, opened once whole
    tunnels_filtered: int = 0     # of them, inner addresses the address filters keep out
    tunnels_untrusted: int = 0    # tunnels in fragments from a source outside the trusted mirrors
    tls_chunks: int = 0           # TLS plaintext chunks (userspace.tls), framed as SIP over TCP is
    # SIP messages by method (known ones, else "other") or status class ("2xx"):
    # bounded, so hostile methods cannot grow it (or a metric's label set).
    sip_messages: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Turns captured events into records: SIP messages, call summaries, RTP
    stream reports and RTCP.

    ``clock_offset_ns`` turns the kernel's monotonic timestamps into wall
    clock time; the caller measures it, since this package reads no clock.
    The same monotonic timestamps drive fragment and stream expiry.
    One UDP datagram holds one SIP message (RFC 3261 §18.3); TCP segments go
    through per-direction stream reassembly, which frames the messages.
    """

    def __init__(self, interface_names: Mapping[int, str], clock_offset_ns: int,
                 reassembly: ReassemblyLimits | None = None, tcp: TcpLimits | None = None,
                 calls: CallLimits | None = None, boundary: Boundary | None = None,
                 route: Route | None = None, websocket_ports: frozenset[int] = frozenset(),
                 tunnels: Tunnels = DEFAULT_TUNNELS) -> None:
        """``boundary``: where bugs are counted; strict (they raise) unless given.
        ``route``: (this worker, workers) when SIP is sharded by Call-ID over worker
        processes: a message another worker owns is handed over (take_handoffs).
        ``websocket_ports``: TCP streams to or from them carry SIP over WebSocket."""
        self._interface_names = interface_names
        self._tunnels = tunnels  # to walk a tunnelled event's outer headers again (Flag.INNER)
        self.boundary = boundary or Boundary()
        self._clock_offset_ns = clock_offset_ns
        self.stats = PipelineStats()
        self.reassembler = Reassembler(reassembly)
        self.tcp = TcpStreams(tcp, websocket_ports)
        self.calls = CallTracker(calls)
        self._flow_events: list[FlowEvent] = []
        self.keep_frames = False  # for a pcap output: every event's frame, as captured
        self._frames: list[Frame] = []
        self._origins: dict[tuple[int, tuple[int, ...], Encap | None], Origin] = {}
        self._route = route
        self._handoffs: list[tuple[int, bytes]] = []
        # What the inner packet of a tunnel opened here (its outer datagram reassembled: the
        # kernel cannot open one in fragments) must match to go on, as the kernel's match()
        # would have: SIP ports, signature, address filters (learned media: the calls');
        # None: any UDP or TCP inside. Set by the capture from its settings.
        self.opened_rules: Rules | None = None

    def process(self, captured: Iterable[Captured]) -> list[Record]:
        """Ring records, or events built in user space, in capture order."""
        records: list[Record] = []
        items = iter(captured)
        item: Captured = b""
        while True:
            # The boundary is around the loop, not inside it: a try costs nothing until it
            # catches, and the loop resumes with the event after the one that failed.
            try:
                for item in items:
                    self.stats.events += 1
                    event = item if isinstance(item, Event) else self._decoded(item)
                    if event is not None:
                        self._event(event, records)
                break
            except Exception as exc:  # a bug: counted, and the next event goes on
                example = item.frame if isinstance(item, Event) else item
                self.boundary.failed("pipeline", exc, example[:_EXAMPLE_BYTES], refine=True)
        self.stats.records += len(records)
        return records

    def _decoded(self, raw: bytes) -> Event | None:
        """A ring record's event; None when it is damaged (counted)."""
        try:
            return decode_event(raw)
        except DecodeError:
            self.stats.event_errors += 1
            return None

    def _event(self, event: Event, records: list[Record]) -> None:
        stats = self.stats
        if event.kind == Kind.HANDOFF:  # a message, not a frame: its frames stay where it was framed
            self._handed_in(event.frame, records)
            return
        if event.kind == _TLS_KIND:  # plaintext, not a frame: never in a pcap output
            self._tls(event, records)
            return
        frame = None
        if self.keep_frames:
            frame = Frame(event.ts_ns + self._clock_offset_ns, event.frame, event.orig_len,
                          self._interface_names.get(event.ifindex, str(event.ifindex)), event.direction)
            self._frames.append(frame)
        if event.kind in _MEDIA_KINDS:
            stats.media += 1
            call_id = self._media(event, records)
            if frame is not None:
                frame.call_id = call_id
            return
        first_record = len(records)
        self._signalling(event, records)
        if frame is not None and len(records) > first_record:
            frame.call_id = _call_of(records[first_record])

    def _signalling(self, event: Event, records: list[Record], outer_fragments: int = 0) -> None:
        """A SIP, fragment or TCP event's records. ``outer_fragments``: the event is the
        inner packet of a tunnel that came in that many fragments (``_packet``)."""
        stats = self.stats
        # the tunnel it came in: fragments and TCP streams are keyed by it, records carry it
        encap, tunnel = None, b""
        if event.flags & _INNER:
            encap = encapsulation(event.frame, self._tunnels)
            tunnel = b"?" if encap is None else encap.tag  # the kernel saw a tunnel this walk did not
        packet, fragments = self._packet(event, tunnel)
        if packet is None:
            return
        if isinstance(packet, Event):  # a tunnel carried in fragments, whole now: its inner packet
            if packet.kind == _RTP_KIND:
                stats.media += 1
                self._media(packet, records)
            else:
                self._signalling(packet, records, fragments)
            return
        fragments = max(fragments, outer_fragments)  # at least: the inner's, or its tunnel's
        if packet.transport == TCP:
            key = (packet.src, packet.sport, packet.dst, packet.dport, tunnel)
            tcp = self.tcp
            messages = tcp.feed(key, packet.tcp_seq, packet.tcp_flags, packet.payload, event.ts_ns)
            for message in messages:  # framed as SIP over TCP, or over WebSocket
                self._record(event, packet, fragments, message, records, tcp.framed_transport, encap)
        elif not packet.payload:
            stats.empty_payloads += 1
        elif looks_like_sip(packet.payload):
            self._record(event, packet, fragments, packet.payload, records, UDP, encap)
        else:
            stats.not_sip += 1

    def expire(self, now_ns: int) -> list[Record]:
        """Let time pass when no packets arrive (monotonic ns, as in events);
        returns the summaries of calls that expired."""
        summaries: list[Record] = []
        for stage, step in (("reassembly", self.reassembler.expire), ("tcp", self.tcp.expire)):
            try:
                step(now_ns)
            except Exception as exc:
                self.boundary.failed(stage, exc)
        try:
            flows, ended = self.calls.expire(now_ns)
        except Exception as exc:
            self.boundary.failed("calls", exc)
            return summaries
        self._flow_events += flows
        summaries += ended
        return summaries

    def finish(self) -> list[Record]:
        """Capture stops: every call in progress summarised (``capture-stopped``), with
        its streams so far; their endpoints are released."""
        try:
            flows, ended = self.calls.end_all("capture-stopped")
        except Exception as exc:
            self.boundary.failed("calls", exc)
            return []
        self._flow_events += flows
        return list(ended)

    def measure_in_kernel(self, source: StreamSource, worker: int | None) -> None:
        """The kernel keeps RTP statistics: only each stream's first packet comes here
        (userspace.kernel_streams); ``sync_streams`` reads the rest."""
        self.calls.media.use_kernel(source, worker)

    def sync_streams(self, now_ns: int) -> list[Record]:
        """The kernel's stream statistics read (monotonic ns, as in events): the reports
        now due. Called every report interval by whoever owns the clock."""
        media = self.calls.media
        try:
            due = media.sync(now_ns)
        except Exception as exc:
            self.boundary.failed("media", exc)
            return []
        wall_ns = now_ns + self._clock_offset_ns
        records: list[Record] = [StreamReport(wall_ns, s.call_id, media.report(s)) for s in due]
        self.stats.records += len(records)
        return records

    def take_frames(self) -> list[Frame]:
        """(wall-clock ns, frame, original length) of every event since the last call."""
        frames, self._frames = self._frames, []
        return frames

    def take_handoffs(self) -> list[tuple[int, bytes]]:
        """(owner worker, ring record of kind HANDOFF) of each message framed here for another worker."""
        handoffs, self._handoffs = self._handoffs, []
        return handoffs

    def take_flow_events(self) -> list[FlowEvent]:
        """Media flows to learn or forget since the last call, in order."""
        events, self._flow_events = self._flow_events, []
        return events

    def _packet(self, event: Event, tunnel: bytes) -> tuple[Packet | Event | None, int]:
        """The event's packet and how many fragments it took; None while a
        datagram is incomplete or when the frame is bad (counted). ``tunnel``:
        the Encap.tag of the tunnel it came in (b"": none). A tunnel carried in
        fragments (the kernel sends them up unopened) is opened once whole: the
        event of its inner packet instead."""
        try:
            decoded = packet_at(event.frame, event.l3_offset, event.l4_offset, event.flags, event.l4_proto)
            if not isinstance(decoded, Fragment):
                return decoded, 1
            if tunnel:  # fragments of one tunnel's packets only meet each other
                decoded = dataclasses.replace(decoded, tunnel=tunnel)
            datagram = self.reassembler.feed(decoded, event.ts_ns)
            if datagram is None:
                return None, 0
            sip_ports = frozenset() if self.opened_rules is None else self.opened_rules.sip_ports
            # one level: a tunnel inside a tunnel is not opened
            whole = None if tunnel else tunnel_frame(datagram, self._tunnels, sip_ports,
                                                     event.frame[:event.l3_offset])
            if whole is not None:
                if not self._tunnels.trusted(datagram.src):
                    self.stats.tunnels_untrusted += 1  # as the kernel's DECAP_UNTRUSTED: not opened
                    return None, 0
                layout = walk(whole, self._tunnels)
                if layout is not None and layout.encap is not None:
                    return self._opened(event, whole, layout), datagram.fragments
                # else a header it refuses: decoded as the datagram it is
            return decode_datagram(datagram), datagram.fragments
        except DecodeError:
            self.stats.decode_errors += 1
            return None, 0

    def _opened(self, event: Event, frame: bytes, layout: Layout) -> Event | None:
        """The event of the inner packet of ``frame``, a reassembled tunnel (``tunnel_frame``)
        whose ``layout`` was walked, arriving as its last fragment did; None when it matches
        none of ``opened_rules`` (counted not SIP) or the address filters keep it out."""
        self.stats.tunnels_reassembled += 1
        rules, kind = self.opened_rules, _SIP_KIND
        if rules is not None and rules.networks is not None and rules.networks.out(layout.src, layout.dst):
            self.stats.tunnels_filtered += 1
            return None
        if layout.flags & _FRAGMENT:
            kind = _FRAGMENT_KIND
        elif rules is not None and not (layout.sport in rules.sip_ports or layout.dport in rules.sip_ports):
            if layout.proto == UDP and self.calls.media_owner((layout.dst, layout.dport),
                                                              (layout.src, layout.sport))[0] is not None:
                kind = _RTP_KIND
            elif not (rules.signature and layout.proto == UDP
                      and frame[layout.payload:layout.payload + 8].startswith(SIGNATURES)):
                self.stats.not_sip += 1
                return None
        return Event(event.ts_ns, event.ifindex, len(frame), len(frame), 0, layout.l3, layout.l4,
                     layout.payload, event.direction, kind, layout.proto, layout.flags, event.shard, frame)

    def _media(self, event: Event, records: list[Record]) -> str | None:
        """Feed an RTP/RTCP packet to its call's stream; returns the call its flow belongs to
        now. A stream's periodic report and every RTCP report become records."""
        try:
            decoded = packet_at(event.frame, event.l3_offset, event.l4_offset, event.flags, event.l4_proto)
        except DecodeError:
            self.stats.decode_errors += 1
            return None
        if not isinstance(decoded, Packet) or decoded.transport != UDP:
            self.stats.decode_errors += 1
            return None
        calls = self.calls
        src, dst = decoded.src, decoded.dst
        call_id, formats = calls.media_owner((dst, decoded.dport), (src, decoded.sport))
        flow = (src, decoded.sport, dst, decoded.dport)
        wall_ns = event.ts_ns + self._clock_offset_ns
        if is_rtcp(decoded.payload):  # RFC 5761: muxed or on its own port, told apart by type
            reports = calls.media.rtcp(decoded.payload, wall_ns, call_id)
            if reports and call_id is not None:
                origin = self._origin(event)
                records += [RtcpRecord(wall_ns, call_id, origin, flow, report.homer_json())
                            for report in reports]
            return call_id
        kernel_key = None
        if event.flags & _STREAM and len(decoded.payload) >= _RTP_HEADER:
            # the first packet of a stream the kernel measures; its owner is the flow's (event.owner)
            kernel_key = stream_key(src, decoded.sport, dst, decoded.dport,
                                    int.from_bytes(decoded.payload[8:12]), event.owner, event.flow_hash)
        # a tunnelled packet's origin walks its outer headers again: only for a new stream
        where: Origin | Callable[[], Origin] = \
            (lambda: self._origin(event)) if event.flags & _INNER else self._origin(event)
        stream = calls.media.rtp(flow, decoded.payload, event.ts_ns, event.orig_len - event.payload_offset,
                                 call_id, formats, where, kernel_key)
        if stream is not None:  # its periodic report is due
            records.append(StreamReport(wall_ns, stream.call_id, calls.media.report(stream)))
        return call_id

    def _origin(self, event: Event) -> Origin:
        """Where the event was captured; one shared value per interface, VLAN
        stack and tunnel, as every media packet asks."""
        encap = encapsulation(event.frame, self._tunnels) if event.flags & _INNER else None
        key = (event.ifindex, _vlans(event.frame), encap)
        origin = self._origins.get(key)
        if origin is None:
            origin = Origin(self._interface_names.get(event.ifindex, str(event.ifindex)), key[1], encap)
            if len(self._origins) < _MAX_ORIGINS:  # VLAN ids and tunnels come off the wire: bounded
                self._origins[key] = origin
        return origin

    def _record(self, event: Event, packet: Packet, fragments: int, data: bytes,
                records: list[Record], transport: int, encap: Encap | None) -> None:
        vlans = _vlans(event.frame)
        owner = None if event.flags & _OWNED else self._elsewhere(data)  # the kernel could not route it
        if owner is not None:
            self._hand_off(owner, HandOff(event.ts_ns, event.ifindex, event.direction, transport,
                                          packet.src, packet.sport, packet.dst, packet.dport, fragments,
                                          vlans, data, encap))
            return
        self._sip(event.ts_ns, event.ifindex, event.direction, transport, packet.src, packet.sport,
                  packet.dst, packet.dport, fragments, event.shard, vlans, data, records, encap)

    def _tls(self, event: Event, records: list[Record]) -> None:
        """A chunk of TLS plaintext: its direction's stream, at its offset (a lost chunk is a
        gap there), framed as SIP over TCP or over WebSocket; records say tls or wss."""
        try:
            chunk = decode_chunk(event.frame, event.payload_offset, event.orig_len)
        except DecodeError:
            self.stats.event_errors += 1
            return
        self.stats.tls_chunks += 1
        seq, flags = chunk.offset % SEQ_MOD, 0
        if chunk.offset == 0:  # the connection's first byte: framed from it, as after a SYN
            seq, flags = SEQ_MOD - 1, SYN
        tcp = self.tcp
        key = (chunk.src, chunk.sport, chunk.dst, chunk.dport, chunk.stream_tag)
        for message in tcp.feed(key, seq, flags, chunk.data, event.ts_ns, ordered=True):
            transport = WSS if tcp.framed_transport == WS else TLS
            owner = self._elsewhere(message)  # chunks go to a shard by connection, never by Call-ID
            if owner is not None:
                self._hand_off(owner, HandOff(event.ts_ns, 0, event.direction, transport, chunk.src,
                                              chunk.sport, chunk.dst, chunk.dport, 1, (), message, None,
                                              chunk.process))
                continue
            self._sip(event.ts_ns, 0, event.direction, transport, chunk.src, chunk.sport, chunk.dst,
                      chunk.dport, 1, event.shard, (), message, records, None, chunk.process)

    def _elsewhere(self, message: bytes) -> int | None:
        """The worker that owns ``message``'s Call-ID when SIP is sharded over workers and
        it is another one; else None."""
        route = self._route
        if route is None:
            return None
        owner = owner_of(message, route[1])
        return owner if owner is not None and owner != route[0] else None

    def _hand_off(self, owner: int, handoff: HandOff) -> None:
        self._handoffs.append((owner, handoff_record(handoff)))
        self.stats.handed_off += 1

    def _handed_in(self, raw: bytes, records: list[Record]) -> None:
        try:
            h = decode_handoff(raw)
        except DecodeError:
            self.stats.event_errors += 1
            return
        self.stats.handed_in += 1
        shard = self._route[0] if self._route is not None else 0
        self._sip(h.ts_ns, h.ifindex, h.direction, h.transport, h.src, h.sport, h.dst, h.dport, h.fragments,
                  shard, h.vlans, h.message, records, h.encap, h.process)

    def _sip(self, ts_ns: int, ifindex: int, direction: int, transport: int, src: bytes, sport: int,
             dst: bytes, dport: int, fragments: int, shard: int, vlans: tuple[int, ...], data: bytes,
             records: list[Record], encap: Encap | None = None, process: Process | None = None) -> None:
        try:
            message = parse_message(data)
        except DecodeError:
            self.stats.sip_errors += 1
            return
        kind = _STATUS_CLASSES[message.status // 100] if message.status is not None else \
            (message.method if message.method in _KNOWN_METHODS else "other")
        by_kind = self.stats.sip_messages
        by_kind[kind] = by_kind.get(kind, 0) + 1
        if message.defects:
            self.stats.sip_defects += 1
        interface = TLS_INTERFACE if process is not None else self._interface_names.get(ifindex, str(ifindex))
        record = SipRecord(ts_ns + self._clock_offset_ns, interface, direction, transport, src, sport, dst,
                           dport, message, fragments, shard, vlans, encap, process)
        records.append(record)
        try:
            flows, summaries = self.calls.observe(record, ts_ns, shard)
        except Exception as exc:  # a bug in call tracking loses no SIP record, nor the rest of a segment
            self.boundary.failed("calls", exc, data[:_EXAMPLE_BYTES], refine=True)
            return
        self._flow_events += flows
        records += summaries


Route = tuple[int, int]  # (this worker, workers)
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 7)}
_EXAMPLE_BYTES = 512  # of the input that hit a bug, for its one log line
_KNOWN_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
                            "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"})


def _vlans(frame: bytes) -> tuple[int, ...]:
    """The frame's VLAN ids; one byte compare when it has none (nearly always)."""
    return vlan_ids(frame) if len(frame) > 12 and frame[12] in _TPID_FIRST_BYTES else ()


_MAX_ORIGINS = 4_096
_RTP_HEADER = 12
_TPID_FIRST_BYTES = frozenset((0x81, 0x88))  # 0x8100 802.1Q, 0x88A8 802.1ad


def _call_of(record: Record) -> str | None:
    """The first record an event yields is its SIP message's."""
    return record.message.call_id if isinstance(record, SipRecord) else None
