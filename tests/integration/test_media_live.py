"""Issue 13, live: media on endpoints two overlapping calls share, attributed
to the right call in its summary and its per-call pcap, with every flow gauge
back to 0 when both calls are over — as `attach` and as a `daemon` task.
Then a capture the agent wrote live, media included, replays to the records
of the live run at the default speed and paced."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest

from tests.support import calls, netns
from tests.support.agent import read_records, start_agent
from tests.support.broker import free_port
from tests.support.calls import OFFERED, PCMA, PCMU, Datagram, Dialog, Party, Stream
from tests.support.frames import ethernet, ipv4, udp
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.procs import Background
from tests.support.send import send_udp
from tests.unit.test_metrics import scrape
from userspace.classify import Rules, classify_frame
from userspace.sharding import fnv1a

START_TIMEOUT_S = 60.0
LEARN_TIMEOUT_S = 10.0
MS = 1_000_000
FIRST_UP, SECOND_UP, FIRST_DOWN, LATE_FIRST = 0x1111, 0x2222, 0x3333, 0x1111


def scenario(lab: Lab, second_caller: str | None = None) -> tuple[Dialog, Dialog,
                                                                  list[tuple[str, list[Datagram]]]]:
    """Two calls from the UAC side to one media port of the UAS side (a media
    server answering both), overlapping; each step is what to send, or "learn".
    The second call's media goes on after the first call's BYE."""
    callee = Party(lab.uas_v4, 50000, "ivr")
    first = Dialog("live-shared-1", Party(lab.uac_v4, 40000, "alice"), callee, OFFERED, {PCMU: "PCMU/8000"})
    second = Dialog("live-shared-2", Party(second_caller or lab.uac_v4, 42000, "carol"), callee, OFFERED,
                    {PCMA: "PCMA/8000"})
    return first, second, [
        ("sip", calls.signalling(first, [(0, "invite"), (0, "ok"), (0, "ack")])),
        ("learn", []),
        ("media", calls.media(Stream(FIRST_UP, PCMU, 50, 0), first.caller, callee)),
        ("sip", calls.signalling(second, [(0, "invite"), (0, "ok"), (0, "ack")])),
        ("settle", []),
        ("media", calls.media(Stream(SECOND_UP, PCMA, 60, 0), second.caller, callee)
         + calls.media(Stream(FIRST_DOWN, PCMU, 40, 0), callee, first.caller)
         + calls.media(Stream(LATE_FIRST, PCMU, 10, 0, first_seq=1050, first_timestamp=50 * 160),
                       first.caller, callee)),
        ("settle", []),
        ("sip", calls.signalling(first, [(0, "bye"), (0, "bye_ok")])),
        ("settle", []),
        ("media", calls.media(Stream(SECOND_UP, PCMA, 20, 0, first_seq=1060, first_timestamp=60 * 160),
                              second.caller, callee)),
        ("settle", []),
        ("sip", calls.signalling(second, [(0, "bye"), (0, "bye_ok")])),
    ]


EXPECTED_PACKETS = {"live-shared-1": {FIRST_UP: 60, FIRST_DOWN: 40}, "live-shared-2": {SECOND_UP: 80}}


def send(lab: Lab, datagrams: list[Datagram]) -> None:
    """Each datagram from the namespace that owns its source address, in order."""
    for d in datagrams:
        namespace = lab.uas_ns if d.src == lab.uas_v4 else lab.uac_ns
        send_udp(namespace, d.src, d.sport, d.dst, d.dport, [d.payload])


def play(lab: Lab, steps: list[tuple[str, list[Datagram]]], learned: Callable[[], set[tuple[str, str, int]]],
         endpoint: tuple[str, str, int]) -> None:
    for what, datagrams in steps:
        if what == "learn":
            deadline = time.monotonic() + LEARN_TIMEOUT_S
            while endpoint not in learned():
                assert time.monotonic() < deadline, f"{endpoint} was never learned"
                time.sleep(0.1)
        elif what == "settle":
            time.sleep(0.5)  # the SDP or BYE is through the worker before the next step
        else:
            send(lab, datagrams)
    time.sleep(1.0)


def flows(lab: Lab, *args: str) -> set[tuple[str, str, int]]:
    out = subprocess.run(["ip", "netns", "exec", lab.uas_ns, str(AGENT), "flows", *args], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    return {(kind, address, int(port)) for kind, address, port, *_rest in (line.split() for line in
                                                                          out.splitlines())}


def gauges(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    names = ("otus_flows_active", "otus_dialogs_active", "otus_rtp_streams_active")
    return {name: sum(v for (n, _labels), v in metrics.items() if n == name) for name in names}


def ssrcs_in(path: Path) -> collections.Counter[int]:
    """RTP packets per SSRC in a capture file (pcap or pcapng)."""
    counts: collections.Counter[int] = collections.Counter()
    with path.open("rb") as f:
        reader = dpkt.pcapng.Reader(f) if path.suffix == ".pcapng" else dpkt.pcap.Reader(f)
        for _ts, frame in reader:
            udp = dpkt.ethernet.Ethernet(frame).data.data
            if isinstance(udp, dpkt.udp.UDP) and 5060 not in (udp.sport, udp.dport) and len(udp.data) >= 12:
                counts[int.from_bytes(udp.data[8:12], "big")] += 1
    return counts


def check_calls(records: list[dict[str, Any]], per_call: Path) -> None:
    summaries = {r["call_id"]: r for r in records if r["kind"] == "call"}
    packets = {cid: {s["ssrc"]: s["packets"] for s in call["streams"]} for cid, call in summaries.items()}
    assert packets == EXPECTED_PACKETS
    for call_id, expected in EXPECTED_PACKETS.items():
        (path,) = [p for p in per_call.iterdir() if p.name.startswith(call_id)]
        assert dict(ssrcs_in(path)) == expected, call_id


@pytest.fixture
def metrics_port(lab: Lab) -> Iterator[int]:
    yield free_port(lab.uas_ns)


def play_and_read(lab: Lab, steps: list[tuple[str, list[Datagram]]], first: Dialog,
                  metrics_port: int) -> tuple[dict[str, float], set[tuple[str, str, int]]]:
    """Play the scenario, then read the agent's gauges and what the kernel's flow map holds."""
    play(lab, steps, lambda: flows(lab, lab.uas_if), ("rtp", lab.uas_v4, first.callee.media_port))
    with netns.inside(lab.uas_ns):
        after = gauges(scrape(f"127.0.0.1:{metrics_port}"))
    return after, flows(lab, lab.uas_if)


def test_overlapping_calls_on_one_endpoint_live_with_attach(lab: Lab, tmp_path: Path,
                                                            metrics_port: int) -> None:
    out, per_call, pcap = tmp_path / "records.jsonl", tmp_path / "calls", tmp_path / "live.pcapng"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--pcap-per-call", str(per_call), "--pcap", str(pcap), "--pcap-format", "pcapng",
                         "--metrics", f"127.0.0.1:{metrics_port}"])
    first, _second, steps = scenario(lab)
    try:
        after, left = play_and_read(lab, steps, first, metrics_port)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    assert after == {"otus_flows_active": 0, "otus_dialogs_active": 0, "otus_rtp_streams_active": 0}
    assert left == set(), "the kernel's flow map is empty again"
    live = read_records(out)
    check_calls(live, per_call)
    for speed in ("max", "20"):
        replayed = tmp_path / f"replayed-{speed}.jsonl"
        result = subprocess.run([str(AGENT), "replay", str(pcap), "--speed", speed, "--out", str(replayed)],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        again = read_records(replayed)
        assert sorted(map(canonical, again)) == sorted(map(canonical, live)), f"replayed at {speed}"


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)


def test_overlapping_calls_on_one_endpoint_live_in_a_daemon_task(lab: Lab, tmp_path: Path,
                                                                 metrics_port: int) -> None:
    per_call, sock = tmp_path / "calls", tmp_path / "control.sock"
    config = tmp_path / "otus.yaml"
    config.write_text(f"""
metrics: {{listen: "127.0.0.1:{metrics_port}"}}
control: {{socket: {sock}}}
tasks:
  - name: media
    interfaces: [{lab.uas_if}]
    workers: 2
    outputs:
      jsonl: {{path: {tmp_path}/media.jsonl}}
      pcap: {{path: {tmp_path}/media.pcapng, format: pcapng, per_call_dir: {per_call}}}
""")
    daemon = Background([str(AGENT), "daemon", "-c", str(config)], tmp_path / "daemon.log", netns=lab.uas_ns)
    first, _second, steps = scenario(lab)
    try:
        daemon.wait_for_output("1 task(s) running", START_TIMEOUT_S)
        after, _left = play_and_read(lab, steps, first, metrics_port)
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.output()
    assert after == {"otus_flows_active": 0, "otus_dialogs_active": 0, "otus_rtp_streams_active": 0}
    check_calls(read_records(tmp_path / "media.jsonl"), per_call)


def call_id_owner(call_id: str) -> int:
    return fnv1a(call_id.encode()) % 2


def on_another_shard(lab: Lab, shards: int) -> str:
    """A UAC-side address whose SIP with the UAS the kernel puts on another shard
    (so another worker) than the UAC's own address."""
    def shard(address: str) -> int:
        frame = ethernet(ipv4(udp(b"x"), src=address, dst=lab.uas_v4))
        classified = classify_frame(frame, Rules(frozenset({5060}), shards=shards))
        assert classified is not None
        return classified.shard

    return next(a for a in (f"10.77.0.{n}" for n in range(20, 60)) if shard(a) != shard(lab.uac_v4))


def test_an_endpoint_shared_by_calls_in_two_workers(lab: Lab, tmp_path: Path, metrics_port: int) -> None:
    """The calls' SIP lands on different worker processes; the server's port is held
    by both. The first call's end must not take it from the second (its media after
    the BYE is still captured), and each flow goes to the worker of its call."""
    second_caller = on_another_shard(lab, 2)
    lab.add_uac_addresses([second_caller])
    out, per_call = tmp_path / "records.jsonl", tmp_path / "calls"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--workers", "2", "--pcap-per-call", str(per_call),
                         "--metrics", f"127.0.0.1:{metrics_port}"])
    first, second, steps = scenario(lab, second_caller)
    # SIP goes to the worker its Call-ID hashes to: these two must differ, or this proves nothing.
    assert call_id_owner(first.call_id) != call_id_owner(second.call_id)
    try:
        after, left = play_and_read(lab, steps, first, metrics_port)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    assert after == {"otus_flows_active": 0, "otus_dialogs_active": 0, "otus_rtp_streams_active": 0}
    assert left == set()
    check_calls(read_records(out), per_call)
