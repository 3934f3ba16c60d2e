"""SIP over WebSocket (RFC 7118): the frame parser, its place in TCP stream
reassembly, and the records it gives (transport "ws")."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.frames import TCP, ethernet, ipv4, ring_record, tcp
from tests.support.sip_samples import INVITE, OK_200, request
from tests.support.websocket import (
    client_frame,
    fragments,
    frame,
    mutated_stream,
    upgrade_request,
    upgrade_response,
)
from userspace.event import Direction
from userspace.frame import IPProto
from userspace.pipeline import Pipeline
from userspace.records import SipRecord, encode_json
from userspace.reporters.hep import HepEncoder, HepIdentity
from userspace.sharding import HandOff, decode_handoff, encode_handoff
from userspace.tcp import SYN, StreamKey, TcpLimits, TcpStreams
from userspace.websocket import (
    INFLATER_CHARGE,
    MAX_MESSAGE_FRAMES,
    WS,
    Opcode,
    Role,
    WebSocketFramer,
    WebSocketStats,
    parse_header,
    unmask,
)

MAX = 65_535 + 8192
WS_PORT = 8080
CLIENT = (bytes([10, 0, 0, 1]), 40000, bytes([10, 0, 0, 2]), WS_PORT, b"")
SERVER = (bytes([10, 0, 0, 2]), WS_PORT, bytes([10, 0, 0, 1]), 40000, b"")
BYE = request("BYE", 2)


def framer(resync: bool = False) -> WebSocketFramer:
    return WebSocketFramer(object(), WebSocketStats(), resync)


def feed_all(f: WebSocketFramer, data: bytes, step: int | None = None) -> list[bytes]:
    """``data`` whole, or ``step`` bytes at a time."""
    out: list[bytes] = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        f.buffer += data[i:i + step]
        out += f.frame(MAX)
    return out


CLIENT_BYTES = (upgrade_request() + client_frame(INVITE) + frame(b"ping", Opcode.PING, mask=b"abcd")
                + fragments(BYE, 3, mask=True, opcode=Opcode.BINARY) + client_frame(b"\r\n\r\n"))
SERVER_BYTES = upgrade_response() + frame(OK_200) + frame(b"", Opcode.PONG) + fragments(OK_200, 4, mask=False)


def test_a_client_direction_whole_byte_at_a_time_and_with_trailing_bytes() -> None:
    for step in (None, 1, 7):
        f = framer()
        assert feed_all(f, CLIENT_BYTES, step) == [INVITE, BYE], step
        assert (f.role, f.ws.handshakes, f.ws.messages, f.ws.continued) == (Role.CLIENT, 1, 2, 1)
        assert (f.ws.control_frames, f.ws.keepalives, f.ws.unmasked_from_client) == (1, 1, 0)
        assert len(f) == 0 and not f.partial
    trailing = frame(INVITE, mask=b"wxyz")[:20]  # the beginning of the next frame stays
    f = framer()
    assert feed_all(f, CLIENT_BYTES + trailing) == [INVITE, BYE]
    assert bytes(f.buffer) == trailing and f.ws.frames == 6


def test_a_server_direction_with_unmasked_frames_and_a_message_in_four_frames() -> None:
    for step in (None, 1):
        f = framer()
        assert feed_all(f, SERVER_BYTES, step) == [OK_200, OK_200]
        assert (f.role, f.ws.masked_from_server, f.ws.continued) == (Role.SERVER, 0, 1)


def test_masking_the_wrong_way_round_is_counted_and_still_read() -> None:
    f = framer()
    assert feed_all(f, upgrade_response() + frame(OK_200, mask=b"\x01\x02\x03\x04")) == [OK_200]
    assert f.ws.masked_from_server == 1
    f = framer()
    assert feed_all(f, upgrade_request() + frame(INVITE)) == [INVITE]
    assert f.ws.unmasked_from_client == 1


def test_control_frames_between_continuations_do_not_break_the_message() -> None:
    first, rest = INVITE[:100], INVITE[100:]
    data = (upgrade_response() + frame(first, fin=False) + frame(b"x", Opcode.PING)
            + frame(rest, Opcode.CONTINUATION))
    f = framer()
    assert feed_all(f, data, 3) == [INVITE]
    assert f.ws.control_frames == 1


def test_hostile_frames_are_counted_and_skipped_and_framing_goes_on() -> None:
    data = upgrade_response() + b"".join((
        frame(b"junk", opcode=3),                             # reserved opcode
        frame(OK_200, rsv=0x20),                              # RSV2
        frame(OK_200, rsv=0x40),                              # RSV1: compressed, not inflated
        frame(b"x" * 10, Opcode.PING, fin=False),             # a fragmented control frame
        frame(b"x" * 200, Opcode.CLOSE),                      # a control frame over 125 bytes
        frame(b"tail", Opcode.CONTINUATION),                  # no message begun
        frame(INVITE[:50], fin=False), frame(OK_200),         # a message begun over another
        frame(OK_200),
    ))
    for step in (None, 1):
        f = framer()
        assert feed_all(f, data, step) == [OK_200, OK_200]
        ws = f.ws
        assert (ws.bad_opcodes, ws.reserved_bits, ws.compressed, ws.bad_control) == (1, 1, 1, 2)
        assert (ws.stray_continuations, ws.interrupted) == (1, 1)


def test_a_message_over_the_limit_is_skipped_as_it_passes_never_held() -> None:
    huge = frame(b"A" * 5000, length=3_000_000)  # says 3 MB; the rest streams past
    f = framer()
    f.buffer += upgrade_response() + huge
    assert f.frame(MAX) == [] and f.ws.too_large == 1
    held = []
    for _ in range(599):  # the rest of the 3 MB pass, 5,000 bytes at a time
        f.buffer += b"A" * 5000
        f.frame(MAX)
        held.append(len(f))
    assert max(held) == 0
    f.buffer += frame(OK_200)
    assert f.frame(MAX) == [OK_200]
    assert f.ws.skipped_bytes == 3_000_000


def test_a_message_whose_fragments_add_up_over_the_limit_is_dropped_whole() -> None:
    f = framer()
    piece = b"B" * 40_000
    data = (upgrade_response() + frame(piece, fin=False) + frame(piece, Opcode.CONTINUATION, fin=False)
            + frame(piece, Opcode.CONTINUATION) + frame(OK_200))
    assert feed_all(f, data, 1000) == [OK_200]
    assert (f.ws.too_large, f.ws.stray_continuations, f.ws.interrupted) == (1, 0, 0)


def test_a_64_bit_length_with_its_top_bit_set_loses_framing_until_the_next_sip_frame() -> None:
    data = upgrade_response() + frame(b"zz", length=-5) + b"\x81\x7f garbage" * 3 + frame(OK_200)
    for step in (None, 1):
        f = framer()
        assert feed_all(f, data, step) == [OK_200]
        assert (f.ws.bad_lengths, f.ws.resyncs) == (1, 1)


def test_joined_after_the_handshake_framing_is_found_at_a_frame_that_begins_sip() -> None:
    stream = frame(OK_200, mask=b"\x11\x22\x33\x44") + frame(INVITE, mask=b"\x55\x66\x77\x88")
    f = framer(resync=True)
    assert feed_all(f, stream[30:], 5) == [INVITE], "the cut first message is skipped"
    assert f.ws.resyncs == 1 and f.role == Role.UNKNOWN


def test_a_direction_that_is_not_a_handshake_is_given_up() -> None:
    f = framer()
    assert feed_all(f, INVITE + frame(OK_200)) == []
    assert f.ws.not_websocket == 1
    f = framer()
    assert feed_all(f, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + frame(OK_200)) == []  # plain HTTP
    assert f.ws.not_websocket == 1


def test_parse_header_forms() -> None:
    for n in (0, 125, 126, 65535, 65536):
        header = parse_header(frame(b"", length=n, mask=b"abcd"), 0)
        assert header is not None and header.length == n and header.mask == b"abcd"
    assert parse_header(b"\x81\xff\x00", 0) is None
    assert unmask(unmask(b"hello world", b"k3y!"), b"k3y!") == b"hello world"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_fuzzed_frames_give_messages_or_counts_nothing_else(rng: random.Random) -> None:
    """Mutated, cut and spliced frames: SIP messages or counted outcomes, no exception,
    and what a direction holds stays within a frame header and a message."""
    data = bytearray(mutated_stream(rng))
    f = framer(resync=rng.random() < 0.3)
    out = feed_all(f, bytes(data), rng.choice((1, 3, 64, 1400)))
    assert all(isinstance(m, bytes) and len(m) <= 4096 for m in out)
    assert len(f) <= 4096 + 14 + 8192


# -- in TCP stream reassembly ---------------------------------------------------------


def test_a_stream_on_a_websocket_port_is_framed_as_websocket_both_ways() -> None:
    streams = TcpStreams(websocket_ports=frozenset({WS_PORT}))
    assert streams.feed(CLIENT, 100, SYN, b"", 0) == [] and streams.feed(SERVER, 500, SYN, b"", 0) == []
    assert streams.feed(CLIENT, 101, 0, CLIENT_BYTES, 1) == [INVITE, BYE]
    assert streams.framed_transport == WS
    assert streams.feed(SERVER, 501, 0, SERVER_BYTES, 2) == [OK_200, OK_200]
    assert streams.websocket.handshakes == 2 and streams.stats.messages == 4


def test_a_stream_elsewhere_is_recognised_by_its_upgrade_and_sip_is_left_alone() -> None:
    streams = TcpStreams()
    key = (CLIENT[0], 40000, CLIENT[2], 5060, b"")
    streams.feed(key, 100, SYN, b"", 0)
    data = CLIENT_BYTES
    out = [m for i in range(0, len(data), 3) for m in streams.feed(key, 101 + i, 0, data[i:i + 3], 1)]
    assert out == [INVITE, BYE] and streams.framed_transport == WS
    plain = (CLIENT[0], 40001, CLIENT[2], 5060, b"")
    streams.feed(plain, 100, SYN, b"", 0)
    assert streams.feed(plain, 101, 0, INVITE + OK_200, 2) == [INVITE, OK_200]
    assert streams.framed_transport == IPProto.TCP and streams.websocket.handshakes == 1


def test_a_websocket_stream_joined_midway_and_past_a_gap_finds_its_frames_again() -> None:
    streams = TcpStreams(TcpLimits(reorder_segments=2), websocket_ports=frozenset({WS_PORT}))
    body = frame(OK_200) + frame(INVITE) + frame(OK_200) + frame(BYE)
    out = streams.feed(SERVER, 1000, 0, body[10:], 0)  # no SYN: joined after the handshake
    assert out == [INVITE, OK_200, BYE]
    seq = 1000 + len(body)
    nxt = frame(INVITE) + frame(OK_200) + frame(BYE)
    # the first 30 bytes of nxt are never captured; two later segments give the hole up
    streams.feed(SERVER, seq + 30, 0, nxt[30:200], 1)
    out = streams.feed(SERVER, seq + 200, 0, nxt[200:], 2)
    assert out == [OK_200, BYE]
    assert streams.stats.gaps == 1 and streams.websocket.resyncs == 2
    assert streams.stats.lost_messages == 1  # the INVITE whose head the gap took


def test_memory_charged_includes_a_message_being_joined() -> None:
    streams = TcpStreams(websocket_ports=frozenset({WS_PORT}))
    streams.feed(SERVER, 500, SYN, b"", 0)
    data = upgrade_response() + frame(INVITE[:300], fin=False)
    streams.feed(SERVER, 501, 0, data, 1)
    assert streams.buffered_bytes == 300
    out = streams.feed(SERVER, 501 + len(data), 0, frame(INVITE[300:], Opcode.CONTINUATION), 2)
    assert out == [INVITE] and streams.buffered_bytes == 0


# -- records ---------------------------------------------------------------------------


def test_pipeline_records_say_ws_and_hep_sends_tcp_as_heplify_does() -> None:
    pipeline = Pipeline({2: "eth0"}, 0, websocket_ports=frozenset({WS_PORT}))
    syn = tcp(b"", 40000, WS_PORT, seq=100, flags=0x02)
    data = tcp(upgrade_request() + client_frame(INVITE), 40000, WS_PORT, seq=101)
    records = pipeline.process([ring_record(ethernet(ipv4(s, proto=TCP)), Direction.INGRESS)
                                for s in (syn, data)])
    (record,) = [r for r in records if isinstance(r, SipRecord)]
    assert record.transport == WS and record.message.method == "INVITE"
    assert orjson.loads(encode_json(record))["transport"] == "ws"
    hep = HepEncoder(HepIdentity(1)).sip(record)
    assert hep is not None and b"\x00\x00\x00\x02\x00\x07\x06" in hep  # chunk 2, IP protocol 6
    handoff = HandOff(1, 2, Direction.INGRESS, WS, b"\1\2\3\4", 1, b"\4\3\2\1", 2, 1, (), INVITE)
    assert decode_handoff(encode_handoff(handoff)) == handoff


def test_plain_sip_over_tcp_on_a_websocket_port_is_still_framed_as_sip() -> None:
    streams = TcpStreams(websocket_ports=frozenset({WS_PORT}))
    streams.feed(CLIENT, 100, SYN, b"", 0)
    out = [m for i, b in enumerate(INVITE) for m in streams.feed(CLIENT, 101 + i, 0, bytes([b]), 1)]
    assert out == [INVITE] and streams.framed_transport == IPProto.TCP
    assert streams.websocket.not_websocket == 0


# -- settings and capture -------------------------------------------------------------------


def test_ws_port_flag_reaches_the_kernel_ports_the_socket_filter_and_replay_rules() -> None:
    from otus_ebpf.capture.cbpf import filter_expression  # noqa: PLC0415
    from otus_ebpf.cli import main as cli  # noqa: PLC0415

    options = cli._attach_options(cli.build_parser().parse_args(
        ["attach", "eth0", "--ws-port", "8080", "--ws-port", "5062", "--ws-port", "8080"]))
    kernel = options.kernel
    assert kernel.ws_ports == (8080, 5062) and kernel.sip_ports == (5060, 5061)
    assert kernel.capture_ports == (5060, 5061, 8080, 5062)
    assert "port 8080" in filter_expression(kernel)
    default = cli._attach_options(cli.build_parser().parse_args(["attach", "eth0"]))
    assert default.kernel.ws_ports == () and "port 8080" not in filter_expression(default.kernel)


def test_replay_takes_ws_port_and_records_every_message_as_ws(tmp_path: Path) -> None:
    """Offline, as live: the port goes into replay's rules (8080 is no SIP port)."""
    import dpkt  # noqa: PLC0415

    from otus_ebpf.cli.main import main  # noqa: PLC0415

    client = upgrade_request() + client_frame(INVITE) + fragments(BYE, 3, mask=True)
    server = upgrade_response() + frame(OK_200)
    segments = [(40000, WS_PORT, 100, 0x02, b""), (WS_PORT, 40000, 500, 0x12, b""),
                (40000, WS_PORT, 101, 0x18, client), (WS_PORT, 40000, 501, 0x18, server)]
    capture = tmp_path / "ws.pcap"
    with capture.open("wb") as f:
        writer = dpkt.pcap.Writer(f)
        for n, (sport, dport, seq, flags, data) in enumerate(segments):
            src, dst = ("10.0.0.1", "10.0.0.2") if sport == 40000 else ("10.0.0.2", "10.0.0.1")
            writer.writepkt(ethernet(ipv4(tcp(data, sport, dport, seq, flags), proto=TCP, src=src, dst=dst)),
                            ts=1_700_000_000 + n / 1000)
    cases: list[tuple[list[str], list[object]]] = [([], []),
                                                   (["--ws-port", str(WS_PORT)], ["INVITE", "BYE", 200])]
    for extra, expected in cases:
        out = tmp_path / f"out{len(extra)}.jsonl"
        assert main(["replay", str(capture), "--out", str(out), *extra]) == 0
        sip = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        sip = [r for r in sip if r["kind"] == "sip"]
        assert [r["method"] or r["status"] for r in sip] == expected
        assert all(r["transport"] == "ws" for r in sip)


# -- permessage-deflate (RFC 7692) ----------------------------------------------------------


def deflated(messages: list[bytes], takeover: bool = True) -> list[bytes]:
    """Each message as permessage-deflate sends it: a sync flush, its 00 00 ff ff cut off."""
    out, compressor = [], zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for message in messages:
        if not takeover:
            compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        out.append(data[:-4])
    return out


def test_deflated_messages_are_inflated_with_the_window_kept_across_messages() -> None:
    first, second, third = deflated([INVITE, INVITE, OK_200])  # the second refers back into the first
    data = (upgrade_request() + frame(first, rsv=0x40, mask=b"abcd")
            + frame(second[:20], rsv=0x40, fin=False, mask=b"efgh")
            + frame(second[20:], Opcode.CONTINUATION, mask=b"ijkl") + frame(third, rsv=0x40, mask=b"mnop")
            + client_frame(BYE))
    for step in (None, 1):
        f = framer()
        assert feed_all(f, data, step) == [INVITE, INVITE, OK_200, BYE]
        assert (f.ws.compressed, f.ws.inflate_errors) == (3, 0)


def test_a_deflated_message_missed_fails_the_ones_that_refer_back_counted_never_misread() -> None:
    _first, second = deflated([INVITE, INVITE])  # the first never captured
    (alone,) = deflated([OK_200], takeover=False)
    f = framer()
    data = upgrade_response() + frame(second, rsv=0x40) + frame(alone, rsv=0x40)
    assert feed_all(f, data) == [OK_200]
    assert (f.ws.compressed, f.ws.inflate_errors) == (2, 1)


def test_a_deflate_bomb_is_cut_at_the_message_limit_and_the_window_let_go() -> None:
    (bomb,) = deflated([b"A" * (4 << 20)])  # 4 MiB of one byte: about 4 KiB deflated
    f = framer()
    assert feed_all(f, upgrade_response() + frame(bomb, rsv=0x40) + frame(OK_200)) == [OK_200]
    assert f.ws.too_large == 1 and f.charge == 0


def test_an_inflater_is_charged_to_its_stream() -> None:
    streams = TcpStreams(websocket_ports=frozenset({WS_PORT}))
    streams.feed(SERVER, 500, SYN, b"", 0)
    (ok,) = deflated([OK_200])
    assert streams.feed(SERVER, 501, 0, upgrade_response() + frame(ok, rsv=0x40), 1) == [OK_200]
    assert streams.buffered_bytes == INFLATER_CHARGE
    streams.feed(SERVER, 0, 0x01, b"", 2)  # FIN at a sequence number already seen: the stream ends
    assert streams.buffered_bytes == 0


def test_a_websocket_message_handed_to_its_call_ids_worker_stays_ws() -> None:
    from userspace.sharding import owner_of  # noqa: PLC0415

    owner = owner_of(INVITE, 2)
    assert owner is not None
    framer = Pipeline({2: "eth0"}, 0, route=(1 - owner, 2), websocket_ports=frozenset({WS_PORT}))
    receiver = Pipeline({2: "eth0"}, 0, route=(owner, 2), websocket_ports=frozenset({WS_PORT}))
    segments = [tcp(b"", 40000, WS_PORT, seq=100, flags=0x02),
                tcp(upgrade_request() + client_frame(INVITE), 40000, WS_PORT, seq=101)]
    assert framer.process([ring_record(ethernet(ipv4(s, proto=TCP))) for s in segments]) == []
    (handoff,) = framer.take_handoffs()
    (record,) = [r for r in receiver.process([handoff[1]]) if isinstance(r, SipRecord)]
    assert record.transport == WS and record.message.method == "INVITE"


def test_an_upgrade_to_another_subprotocol_is_not_read_as_sip() -> None:
    chat = upgrade_request().replace(b"Sec-WebSocket-Protocol: sip", b"Sec-WebSocket-Protocol: chat, mqtt")
    f = framer()
    assert feed_all(f, chat + client_frame(INVITE)) == []
    assert (f.ws.handshakes, f.ws.other_protocols) == (1, 1)
    offered = upgrade_request().replace(b"Sec-WebSocket-Protocol: sip", b"Sec-WebSocket-Protocol: chat, SIP")
    unnamed = upgrade_response().replace(b"Sec-WebSocket-Protocol: sip\r\n", b"")
    for head, payload in ((offered, client_frame(INVITE)), (unnamed, frame(INVITE))):
        f = framer()
        assert feed_all(f, head + payload) == [INVITE]


# -- review findings ---------------------------------------------------------------------


def test_empty_continuation_frames_are_capped_per_message_and_hold_no_per_frame_memory() -> None:
    f = framer()
    f.buffer += upgrade_request() + frame(INVITE[:30], fin=False, mask=b"abcd")
    f.frame(MAX)
    f.buffer += frame(b"", Opcode.CONTINUATION, fin=False, mask=b"abcd") * (MAX_MESSAGE_FRAMES + 10)
    assert f.frame(MAX) == []
    # an empty frame adds no byte the size limit sees: the frame count bounds the message
    assert f.ws.too_large == 1 and f._parts is None and len(f) == 0
    f.buffer += frame(b"", Opcode.CONTINUATION, fin=True) + client_frame(BYE)
    assert f.frame(MAX) == [BYE]  # the dropped message's continuations end; framing goes on
    g = framer()  # under the cap a message in many short frames is still joined, in one bytearray
    g.buffer += upgrade_request() + frame(INVITE[:1], fin=False) + b"".join(
        frame(INVITE[i:i + 1], Opcode.CONTINUATION, fin=i == len(INVITE) - 1) for i in range(1, len(INVITE)))
    assert len(INVITE) < MAX_MESSAGE_FRAMES and g.frame(MAX) == [INVITE] and g.ws.continued == 1


def test_a_deflated_message_that_ends_its_deflate_stream_does_not_silence_the_next() -> None:
    def final_block(message: bytes) -> bytes:  # BFINAL set: a whole raw deflate stream (RFC 7692 §7.2.3.3)
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return c.compress(message) + c.flush(zlib.Z_FINISH)
    f = framer()
    f.buffer += upgrade_request(deflate=True)
    for message in (INVITE, OK_200, BYE):
        f.buffer += frame(final_block(message), mask=b"abcd", rsv=0x40)
    assert f.frame(MAX) == [INVITE, OK_200, BYE]
    assert (f.ws.compressed, f.ws.keepalives, f.ws.inflate_errors) == (3, 0, 0)


def test_a_deflated_direction_joined_or_past_a_gap_finds_its_frames_again() -> None:
    no_takeover = deflated([INVITE, OK_200, BYE], takeover=False)
    cut = frame(no_takeover[0], rsv=0x40, mask=b"abcd")[9:]  # joined inside the first message
    f = framer(resync=True)
    rest = b"".join(frame(m, rsv=0x40, mask=b"efgh") for m in no_takeover[1:])
    assert feed_all(f, cut + rest, 7) == [OK_200, BYE]  # a fresh inflater confirms the start
    assert (f.ws.resyncs, f.ws.inflate_errors) == (1, 0)
    # Context takeover: each message refers back into ones never seen. Framing is found all
    # the same, and each message that cannot inflate is counted, until the peer resets.
    takeover = deflated([INVITE, INVITE, INVITE, INVITE])
    f = framer(resync=True)
    data = frame(takeover[0], rsv=0x40)[5:] + b"".join(frame(m, rsv=0x40) for m in takeover[1:])
    assert feed_all(f, data) == []
    assert f.ws.resyncs == 1 and f.ws.inflate_errors == 3


def test_resync_does_not_lock_onto_a_frame_header_inside_a_message_body() -> None:
    huge = b"\x81\x7f" + (1 << 46).to_bytes(8, "big") + b"INVITE sip:x SIP/2.0\r\n"
    small = frame(INVITE)
    for fake in (huge, small):
        body = b"hello " + fake + b" bye"
        message = (b"MESSAGE sip:victim@x SIP/2.0\r\nCall-ID: real\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)
        f = framer(resync=True)
        assert feed_all(f, frame(message)[20:] + frame(OK_200) * 3, 1400) == [OK_200] * 3
        assert f.ws.resyncs == 1 and f.ws.too_large == 0


SIP_PORT_CLIENT = (bytes([10, 0, 0, 1]), 40000, bytes([10, 0, 0, 2]), 5060, b"")


def feed_segments(streams: TcpStreams, key: StreamKey, seq: int,
                  segments: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for data in segments:
        out += streams.feed(key, seq, 0, data, 1)
        seq += len(data)
    return out


def test_http_with_no_upgrade_on_a_sip_port_falls_back_to_sip_over_tcp() -> None:
    t = TcpStreams(TcpLimits())
    t.feed(SIP_PORT_CLIENT, 1, SYN, b"", 0)
    out = feed_segments(t, SIP_PORT_CLIENT, 2, [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", INVITE, BYE])
    assert out == [INVITE, BYE] and t.framed_transport == IPProto.TCP and t.websocket.not_websocket == 1


def test_a_forged_syn_with_an_http_payload_does_not_turn_a_sip_stream_into_websocket() -> None:
    t = TcpStreams(TcpLimits())
    t.feed(SIP_PORT_CLIENT, 1, SYN, b"", 0)
    seq = 2
    assert feed_segments(t, SIP_PORT_CLIENT, seq, [INVITE]) == [INVITE]
    seq += len(INVITE)
    t.feed(SIP_PORT_CLIENT, 0x70000000, SYN, b"GET / HTTP/1.1\r\n", 2)
    out = feed_segments(t, SIP_PORT_CLIENT, seq, [INVITE] * 10)
    # the far-behind segments put the stream back where it is, framed as its port says
    assert t.stats.restarts == 1 and len(out) >= 8 and t.framed_transport == IPProto.TCP


def test_an_upgrade_answered_401_then_101_is_followed_both_ways() -> None:
    unauthorized = (b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=x\r\n"
                    b"Content-Length: 4\r\n\r\nnope")
    f = framer()
    assert feed_all(f, unauthorized + upgrade_response() + frame(OK_200) + frame(BYE), 5) == [OK_200, BYE]
    assert f.role == Role.SERVER and f.ws.not_websocket == 0
    c = framer()
    assert feed_all(c, upgrade_request() + upgrade_request() + client_frame(INVITE), 3) == [INVITE]
    assert c.ws.handshakes == 2 and c.ws.bad_opcodes == 0


def test_a_websocket_stream_found_by_its_handshake_stays_websocket_past_idle_expiry() -> None:
    server = (SIP_PORT_CLIENT[2], 5060, SIP_PORT_CLIENT[0], 40000, b"")
    t = TcpStreams(TcpLimits(idle_timeout_s=10.0))
    t.feed(SIP_PORT_CLIENT, 1, SYN, b"", 0)
    t.feed(server, 1, SYN, b"", 0)
    c_seq = 2 + len(upgrade_request())
    s_seq = 2 + len(upgrade_response())
    t.feed(SIP_PORT_CLIENT, 2, 0, upgrade_request(), 1)
    t.feed(server, 2, 0, upgrade_response(), 1)
    late = 60 * 1_000_000_000  # both streams expired by now
    assert t.feed(SIP_PORT_CLIENT, c_seq, 0, frame(INVITE, mask=b"abcd"), late) == [INVITE]
    assert t.framed_transport == WS and t.stats.expired_streams == 2
    assert t.feed(server, s_seq, 0, frame(OK_200), late) == [OK_200] and t.framed_transport == WS


def test_a_port_cannot_be_both_a_sip_port_and_a_websocket_port() -> None:
    from otus_ebpf.cli import main as cli  # noqa: PLC0415
    from otus_ebpf.errors import SetupError  # noqa: PLC0415

    options = cli._attach_options(cli.build_parser().parse_args(["attach", "eth0", "--ws-port", "5060"]))
    try:
        options.kernel.validate()
    except SetupError as error:
        assert "5060" in str(error)
    else:
        raise AssertionError("a WebSocket port that is a SIP port was accepted")


def test_runs_of_control_frames_take_the_fast_path_counted_as_the_slow_one_counts() -> None:
    pings = frame(b"", Opcode.PING) * 50 + frame(b"hi", Opcode.PONG, mask=b"abcd") * 50
    run = framer()
    run.buffer += pings + frame(b"x", Opcode.PING)[:1]
    assert run._control_run(0) == len(pings)  # whole frames only: the split one waits
    f = framer()
    assert feed_all(f, upgrade_request() + pings + frame(b"x", Opcode.PING)[:1]) == []
    assert feed_all(f, frame(b"x", Opcode.PING)[1:] + client_frame(INVITE)) == [INVITE]
    assert (f.ws.frames, f.ws.control_frames, f.ws.unmasked_from_client) == (102, 101, 51)
    slow = framer()  # one byte at a time: each frame completes alone, counted the same
    data = upgrade_request() + pings + frame(b"x", Opcode.PING) + client_frame(INVITE)
    assert feed_all(slow, data, 1) == [INVITE]
    assert (slow.ws.frames, slow.ws.control_frames, slow.ws.unmasked_from_client) == (102, 101, 51)


def test_an_inflater_does_not_count_against_the_reorder_window() -> None:
    t = TcpStreams(TcpLimits(window=4096), frozenset({WS_PORT}))
    t.feed(CLIENT, 1, SYN, b"", 0)
    seq = 2
    first, second, third = deflated([INVITE, OK_200, BYE])
    segments = [upgrade_request(deflate=True), frame(first, rsv=0x40, mask=b"abcd"),
                frame(second, rsv=0x40, mask=b"efgh"), frame(third, rsv=0x40, mask=b"ijkl")]
    starts = []
    for data in segments:
        starts.append(seq)
        seq += len(data)
    out = t.feed(CLIENT, starts[0], 0, segments[0], 1) + t.feed(CLIENT, starts[1], 0, segments[1], 1)
    assert out == [INVITE] and t.buffered_bytes >= INFLATER_CHARGE  # an inflater lives
    out = t.feed(CLIENT, starts[3], 0, segments[3], 1) + t.feed(CLIENT, starts[2], 0, segments[2], 1)
    assert out == [OK_200, BYE] and t.stats.window_overflows == 0 and t.stats.gaps == 0
