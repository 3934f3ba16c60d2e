"""Many calls live at once on the lab, as a carrier edge carries them: each
call's offer and answer name RTP and RTCP endpoints of their own (four per
call, so 20,000 calls already need more than 65,536 flow entries), all
calls are set up before any ends, RTP flows on a sample, then every call is
torn down with BYE and 200.

``run_mass_calls`` drives one agent (`otus-ebpf attach`, eBPF, worker
processes by default) through it and reports what it saw: the figures at
the peak (endpoints learned in user space and in the kernel, the agent's
resident memory over all its processes) and after the teardown (the live
gauges, the kernel's flow entries), and the records it wrote. The
integration suite runs it with 20,000 calls; scripts/bench/live_calls.py
with 100,000.
"""

from __future__ import annotations

import ipaddress
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import netns
from tests.support.agent import read_records, start_agent
from tests.support.broker import free_port
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.send import send_udp
from tests.support.sip_samples import sip_message
from tests.unit.test_metrics import scrape

RTP_PORT = 16_384           # every call's RTP; RTCP on the next port (the addresses differ)
OFFER_BASE = ipaddress.ip_address("10.100.0.1")
ANSWER_BASE = ipaddress.ip_address("10.120.0.1")
CHUNK = 5_000               # messages sent at a time, with a pause between (the sender is Python)
CHUNK_PAUSE_S = 0.1
SAMPLED, PACKETS = 8, 50
SETTLE_TIMEOUT_S = 300.0
LIVE_GAUGES = ("otus_dialogs_active", "otus_flows_active", "otus_rtp_streams_active", "otus_output_queued",
               "otus_kafka_in_flight")


def offer_address(n: int) -> str:
    return str(OFFER_BASE + n)


def answer_address(n: int) -> str:
    return str(ANSWER_BASE + n)


def sdp(address: str, session: int) -> bytes:
    return (f"v=0\r\no=- {session} 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
            f"m=audio {RTP_PORT} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()


def message(lab: Lab, n: int, kind: str) -> bytes:
    """INVITE, 200 (to the INVITE), ACK, BYE or 200-BYE of call ``n``."""
    to_tag = "" if kind == "INVITE" else f";tag=b{n}"
    cseq = {"INVITE": "1 INVITE", "200": "1 INVITE", "ACK": "1 ACK", "BYE": "2 BYE", "200-BYE": "2 BYE"}[kind]
    headers = [f"Via: SIP/2.0/UDP {lab.uac_v4};branch=z9hG4bK{n}{kind}", f"From: <sip:u{n}@edge>;tag=a{n}",
               f"To: <sip:v{n}@core>{to_tag}", f"Call-ID: mass-{n}", f"CSeq: {cseq}"]
    if kind == "INVITE":
        return sip_message(f"INVITE sip:v{n}@core SIP/2.0", [*headers, "Content-Type: application/sdp"],
                           sdp(offer_address(n), n))
    if kind == "200":
        return sip_message("SIP/2.0 200 OK", [*headers, "Content-Type: application/sdp"],
                           sdp(answer_address(n), n))
    if kind == "200-BYE":
        return sip_message("SIP/2.0 200 OK", headers)
    return sip_message(f"{kind} sip:v{n}@core SIP/2.0", headers)


@dataclass
class MassCallsResult:
    calls: int
    learned: int = 0                  # endpoints the workers hold, at the peak
    kernel_flows_at_peak: int = 0     # entries in the kernel's flow map, at the peak
    rss_bytes_at_peak: int = 0        # the agent's processes, summed (proportional set sizes)
    processes: int = 0
    pss_by_process: list[int] = field(default_factory=list)  # the agent's first, then its workers
    setup_s: float = 0.0
    teardown_s: float = 0.0
    kernel_drain_s: float = 0.0       # after the gauges: the one writer deleting the kernel's entries
    gauges_after: dict[str, float] = field(default_factory=dict)
    kernel_flows_after: int = -1
    records: list[dict[str, Any]] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)
    exit_status: int | None = None
    output: str = ""


def run_mass_calls(lab: Lab, workdir: Path, calls: int, extra: tuple[str, ...] = (),
                   say: Any = lambda _m: None) -> MassCallsResult:
    """``say``: progress, for a benchmark's reader."""
    result = MassCallsResult(calls)
    metrics = free_port(lab.uas_ns)
    out = workdir / "mass.jsonl"
    result.sampled = sorted({round(i * (calls - 1) / (SAMPLED - 1)) for i in range(SAMPLED)})
    lab.add_uac_addresses([offer_address(n) for n in result.sampled])  # media comes from these
    agent = start_agent(lab.uas_ns, lab.uas_if, out, workdir / "agent.log",
                        ["--metrics", f"127.0.0.1:{metrics}", *extra])
    address = f"127.0.0.1:{metrics}"
    try:
        started = time.monotonic()
        _send(lab, calls, ("INVITE", "200", "ACK"))
        say(f"sent the set-up of {calls:,} calls in {time.monotonic() - started:.1f} s")
        _wait_for(lab, address, lambda page: _total(page, "otus_flows_active") == 4 * calls
                  and _total(page, "otus_output_queued") == 0, agent.output, say)  # all taken in
        result.setup_s = time.monotonic() - started
        with netns.inside(lab.uas_ns):
            page = scrape(address)
        result.learned = int(_total(page, "otus_flows_active"))
        result.kernel_flows_at_peak = _kernel_flows_reach(lab, 4 * calls)
        result.pss_by_process = pss_of(agent.pid)
        result.processes, result.rss_bytes_at_peak = len(result.pss_by_process), sum(result.pss_by_process)
        for n in result.sampled:
            packets = [struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x7000 + n) + b"\xd5" * 160
                       for seq in range(PACKETS)]
            send_udp(lab.uac_ns, offer_address(n), RTP_PORT, lab.uas_v4, RTP_PORT, packets)
        time.sleep(1.0)
        started = time.monotonic()
        _send(lab, calls, ("BYE", "200-BYE"))
        say(f"sent the teardown in {time.monotonic() - started:.1f} s")
        _wait_for(lab, address, lambda page: _total(page, "otus_dialogs_active") == 0
                  and _total(page, "otus_flows_active") == 0, agent.output, say)
        result.teardown_s = time.monotonic() - started
        time.sleep(1.5)  # a worker report: the gauges as they settled
        with netns.inside(lab.uas_ns):
            page = scrape(address)
        result.gauges_after = {name: _total(page, name) for name in LIVE_GAUGES}
        result.kernel_flows_after = _kernel_flows_reach(lab, 0)
        result.kernel_drain_s = time.monotonic() - started - result.teardown_s
    finally:
        result.exit_status = agent.stop(signal.SIGTERM, grace=120.0)
        result.output = agent.output()
    result.records = read_records(out)
    return result


def _send(lab: Lab, calls: int, kinds: tuple[str, ...]) -> None:
    """Each kind for every call, in chunks: the requests from the UAC, the responses from the UAS."""
    for start in range(0, calls, CHUNK):
        numbers = range(start, min(calls, start + CHUNK))
        for kind in kinds:
            payloads = [message(lab, n, kind) for n in numbers]
            if kind.startswith("200"):
                send_udp(lab.uas_ns, lab.uas_v4, 5060, lab.uac_v4, 5060, payloads)
            else:
                send_udp(lab.uac_ns, lab.uac_v4, 5060, lab.uas_v4, 5060, payloads)
        time.sleep(CHUNK_PAUSE_S)


def _total(page: dict[tuple[str, Any], float], name: str) -> float:
    return sum(value for (metric, _labels), value in page.items() if metric == name)


def _wait_for(lab: Lab, address: str, done: Any, output: Any, say: Any) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        with netns.inside(lab.uas_ns):
            page = scrape(address)
        if done(page):
            return
        say(f"  waiting: {({n: _total(page, n) for n in LIVE_GAUGES[:3]})}")
        assert time.monotonic() < deadline, ({n: _total(page, n) for n in LIVE_GAUGES}, output()[-3000:])
        time.sleep(0.5)


def _kernel_flows_reach(lab: Lab, wanted: int) -> int:
    """The kernel's entries once they are ``wanted``, or as they are at the timeout: the
    parent writes what the workers learned and forgot behind them (hundreds of thousands
    of map writes take it seconds)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (found := kernel_flows(lab)) != wanted and time.monotonic() < deadline:
        time.sleep(1.0)
    return found


def kernel_flows(lab: Lab) -> int:
    """Entries in the kernel's flow map, as `otus-ebpf flows` reports them."""
    listing = subprocess.run(["ip", "netns", "exec", lab.uas_ns, str(AGENT), "flows", lab.uas_if],
                             capture_output=True, text=True, timeout=300, check=True)
    last = listing.stderr.strip().splitlines()[-1]
    return int(last.split()[0])


def pss_of(pid: int) -> list[int]:
    """The proportional set size of ``pid`` and of each of its children: pages the
    forked workers share with their parent (the interpreter, bcc, LLVM) count once
    over all of them, not once per process."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    found = []
    for each in pids:
        for line in Path(f"/proc/{each}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                found.append(int(line.split()[1]) * 1024)
    return found
