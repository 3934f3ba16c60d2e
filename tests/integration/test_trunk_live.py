"""A trunk between two hosts (SBC and core) over two workers, paced by
tcpreplay at 10,000 SIP messages a second: the kernel routes each datagram by
its Call-ID, and what it cannot route (fragmented INVITEs, SIP over one TCP
connection) is framed by its conversation's worker and handed to the owner.
Each worker must take 40-60 % of the messages, nothing may be lost, and every
call must be summarised whole by one worker."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import final_stats, start_agent
from tests.support.lab import Lab
from tests.support.trunk import write_tcp_pcap, write_udp_pcap

CALLS = 1_500        # 10,500 messages: about a second at the paced rate
RATE = 10_000        # packets a second, from tcpreplay (C speed; a Python sender cannot pace this)
REPLAY_TIMEOUT_S = 60.0
SETTLE_S = 2.0


def _mac(lab: Lab, netns: str, interface: str) -> bytes:
    out = lab.run(netns, "cat", f"/sys/class/net/{interface}/address").stdout.strip()
    return bytes.fromhex(out.replace(":", ""))


def _replay(lab: Lab, pcap: Path) -> None:
    subprocess.run(["ip", "netns", "exec", lab.uac_ns, "tcpreplay", "-q", "-i", lab.uac_if, f"--pps={RATE}",
                    str(pcap)], check=True, capture_output=True, timeout=REPLAY_TIMEOUT_S)


def _worker_records(out: Path) -> list[list[dict[str, Any]]]:
    files = sorted(out.parent.glob(f"{out.stem}.w*{out.suffix}"))
    assert [f.name for f in files] == [f"{out.stem}.w0{out.suffix}", f"{out.stem}.w1{out.suffix}"]
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]


@pytest.mark.parametrize("form", ["udp", "fragmented", "tcp"])
def test_a_trunk_spreads_over_two_workers_by_call_id(lab: Lab, tmp_path: Path, form: str) -> None:
    pcap = tmp_path / f"trunk-{form}.pcap"
    src_mac, dst_mac = _mac(lab, lab.uac_ns, lab.uac_if), _mac(lab, lab.uas_ns, lab.uas_if)
    if form == "tcp":
        messages = write_tcp_pcap(pcap, CALLS, src_mac=src_mac, dst_mac=dst_mac)
    else:
        messages = write_udp_pcap(pcap, CALLS, pad_invite=1600 if form == "fragmented" else 0,
                                  src_mac=src_mac, dst_mac=dst_mac)
    out = tmp_path / "trunk.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",  # a file each: who took what
                        ["--workers", "2", "--direction", "ingress", "--per-worker-files"])
    try:
        _replay(lab, pcap)
        time.sleep(SETTLE_S)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    stats = final_stats(agent)
    assert stats.get("ingress_submit_failed", 0) == 0, agent.output()
    per_worker = _worker_records(out)
    sip = [[r for r in records if r["kind"] == "sip"] for records in per_worker]
    assert sum(len(s) for s in sip) == messages, (messages, [len(s) for s in sip], agent.output())
    shares = [len(s) / messages for s in sip]
    assert all(0.40 <= share <= 0.60 for share in shares), shares
    owners: dict[str, set[int]] = collections.defaultdict(set)
    for worker, records in enumerate(sip):
        for record in records:
            owners[record["call_id"]].add(worker)
    assert len(owners) == CALLS and all(len(w) == 1 for w in owners.values()), "a dialog in two workers"
    summaries = [r for records in per_worker for r in records if r["kind"] == "call"]
    assert len(summaries) == CALLS, len(summaries)
    incomplete = [s for s in summaries if s["end_cause"] != "bye" or s["setup_ms"] is None
                  or s["answer_ms"] is None]
    assert not incomplete, incomplete[:3]


def test_two_workers_write_one_file_holding_every_record_once(lab: Lab, tmp_path: Path) -> None:
    """The default: the records of both workers in the one file the operator named,
    written by the parent; at the trunk's rate, every line valid, every record once."""
    pcap = tmp_path / "trunk.pcap"
    messages = write_udp_pcap(pcap, CALLS, src_mac=_mac(lab, lab.uac_ns, lab.uac_if),
                              dst_mac=_mac(lab, lab.uas_ns, lab.uas_if))
    out = tmp_path / "trunk.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--workers", "2", "--direction", "ingress"])
    try:
        _replay(lab, pcap)
        time.sleep(SETTLE_S)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    assert not list(tmp_path.glob("trunk.w*.jsonl"))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    sip = [r for r in records if r["kind"] == "sip"]
    keys = collections.Counter((r["call_id"], r["cseq"], r["cseq_method"], r["method"], r["status"])
                               for r in sip)
    assert len(sip) == messages and max(keys.values()) == 1, (len(sip), messages, keys.most_common(2))
    summaries = collections.Counter(r["call_id"] for r in records if r["kind"] == "call")
    assert len(summaries) == CALLS and set(summaries.values()) == {1}
    stats = final_stats(agent)
    assert stats["records"] == len(records), (stats, len(records))
    assert f"records: {len(records)} produced; jsonl written={len(records)} to_fallback=0 lost=0" \
        in agent.output()
