"""An independent count of SIP messages: tcpdump captures on the peer's
interface (-U: every packet is on disk before it stops, which tshark's
dumpcap did not guarantee on SIGTERM), tshark dissects the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.procs import Background

CAPTURE_START_TIMEOUT_S = 15.0


def start_capture(netns: str, interface: str, pcap: Path, log: Path) -> Background:
    argv = ["tcpdump", "-i", interface, "-U", "--immediate-mode", "-n", "-s", "0", "-w", str(pcap),
            "port 5060"]
    capture = Background(argv, log, netns=netns)
    capture.wait_for_output("listening on", CAPTURE_START_TIMEOUT_S)
    return capture


def sip_messages(pcap: Path) -> list[tuple[str, str, int, str]]:
    """(Call-ID, method or status code, CSeq number, CSeq method) per SIP message."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "sip", "-T", "fields", "-E", "separator=|",
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
