"""An independent count of SIP messages: tcpdump captures on the peer's
interface (-U: every packet is on disk before it stops, which tshark's
dumpcap did not guarantee on SIGTERM), tshark dissects the file."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support.procs import Background

CAPTURE_START_TIMEOUT_S = 15.0


def start_capture(netns: str, interface: str, pcap: Path, log: Path,
                  expression: str = "port 5060") -> Background:
    argv = ["tcpdump", "-i", interface, "-U", "--immediate-mode", "-n", "-s", "0", "-w", str(pcap),
            expression]
    capture = Background(argv, log, netns=netns)
    capture.wait_for_output("listening on", CAPTURE_START_TIMEOUT_S)
    return capture


def sip_messages(pcap: Path, decode_as: Sequence[str] = ()) -> list[tuple[str, str, int, str]]:
    """(Call-ID, method or status code, CSeq number, CSeq method) per SIP message;
    ``decode_as``: tshark's -d rules (``tcp.port==8080,http``)."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), *(arg for rule in decode_as for arg in ("-d", rule)),
         "-Y", "sip", "-T", "fields", "-E", "separator=|",
         "-E", "occurrence=a", "-E", "aggregator=;",
         "-e", "sip.Call-ID", "-e", "sip.Method", "-e", "sip.Status-Code",
         "-e", "sip.CSeq.seq", "-e", "sip.CSeq.method"],
        check=True, capture_output=True, text=True,
    ).stdout
    messages = []
    for line in out.splitlines():
        # One frame may carry several SIP messages (TCP): fields aggregate with ";".
        call_ids, methods, statuses, seqs, cseq_methods = (f.split(";") for f in line.split("|"))
        for i, call_id in enumerate(call_ids):
            kind = statuses[i] if i < len(statuses) and statuses[i] else methods[i]
            messages.append((call_id, kind, int(seqs[i]), cseq_methods[i]))
    return messages


HEP3_LUA = Path(__file__).with_name("hep3.lua")
HEP_FIELDS = ("hep3.src_ip", "hep3.src_port", "hep3.dst_ip", "hep3.dst_port", "hep3.capture_id",
              "hep3.node_name", "sip.Call-ID", "sip.CSeq.method")


def hep_packets_as_pcap(datagrams: list[bytes], pcap: Path, port: int) -> None:
    """Received HEP datagrams as a pcap of UDP frames to ``port``, for tshark."""
    import dpkt  # noqa: PLC0415 - only this helper needs it

    with pcap.open("wb") as f:
        writer = dpkt.pcap.Writer(f)
        for n, datagram in enumerate(datagrams):
            udp = dpkt.udp.UDP(sport=40000, dport=port, data=datagram)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=bytes([127, 0, 0, 1]), dst=bytes([127, 0, 0, 1]), p=17, data=udp)
            ip.len = len(ip)
            writer.writepkt(dpkt.ethernet.Ethernet(type=0x0800, data=ip), ts=n / 1000)


def hep_fields(pcap: Path, port: int) -> list[dict[str, str]]:
    """What tshark's HEP dissector (ours in Lua where tshark has none) reads in each packet."""
    out = subprocess.run(
        ["tshark", "-X", f"lua_script:{HEP3_LUA}", "-r", str(pcap), "-d", f"udp.port=={port},hep3",
         "-T", "fields", "-E", "separator=|", *(arg for name in HEP_FIELDS for arg in ("-e", name))],
        check=True, capture_output=True, text=True,
    ).stdout
    return [dict(zip(HEP_FIELDS, line.split("|"), strict=True)) for line in out.splitlines()]


def frame_fields(pcap: Path, fields: list[str]) -> list[list[str]]:
    """The named fields of every frame, as tshark prints them."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|",
         *(arg for name in fields for arg in ("-e", name))],
        check=True, capture_output=True, text=True,
    ).stdout
    return [line.split("|") for line in out.splitlines()]
