"""The kernel half on a live interface: directions, sender-made fragments,
run-time filter changes, several interfaces, foreign programs."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from otus_ebpf.kernel.bpfsys import AttachType, query_program_ids
from tests.integration.test_detach import tc_egress_programs, wait_detached, xdp_attached
from tests.support import netns
from tests.support.agent import final_stats, read_records, start_agent
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.send import send_udp
from tests.support.sip_samples import INVITE, SDP, sip_message

SETTLE_S = 0.5


def big_invite(size: int) -> bytes:
    """An INVITE padded with SDP attribute lines to ``size`` bytes."""
    headers = ["Via: SIP/2.0/UDP 10.77.0.1;branch=z9hG4bKbig", "From: <sip:a@x>;tag=1",
               "To: <sip:b@y>", "Call-ID: big@x", "CSeq: 1 INVITE", "Content-Type: application/sdp"]
    body = SDP
    while len(sip_message("INVITE sip:b@y SIP/2.0", headers, body)) < size:
        body += b"a=x-padding:" + b"p" * 60 + b"\r\n"
    return sip_message("INVITE sip:b@y SIP/2.0", headers, body)


def xdp_program_id(lab: Lab) -> str:
    shown = lab.run(lab.uas_ns, "ip", "-d", "link", "show", lab.uas_if).stdout
    return shown.split("prog/xdp id ")[1].split()[0]


def test_sip_sent_from_the_agents_host_is_captured_once_as_egress(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log")
    send_udp(lab.uas_ns, lab.uas_v4, 5060, lab.uac_v4, 5060, [INVITE])
    time.sleep(SETTLE_S)
    assert agent.stop() == 0
    (record,) = [r for r in read_records(out) if r["kind"] == "sip"]
    assert (record["direction"], record["src"], record["method"]) == ("egress", lab.uas_v4, "INVITE")


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_a_4000_byte_invite_fragmented_by_the_sender_is_reassembled_and_parsed(
    lab: Lab, tmp_path: Path, family: str, direction: str
) -> None:
    payload = big_invite(4000)
    uac, uas = (lab.uac_v4, lab.uas_v4) if family == "ipv4" else (lab.uac_v6, lab.uas_v6)
    sender, src, dst = (lab.uac_ns, uac, uas) if direction == "ingress" else (lab.uas_ns, uas, uac)
    # MTU 1500: 4000 bytes of UDP payload leave as 3 fragments (v4 and v6).
    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log")
    send_udp(sender, src, 5060, dst, 5060, [payload])
    time.sleep(SETTLE_S)
    assert agent.stop() == 0
    stats = final_stats(agent)
    assert stats[f"{direction}_matched"] == 3, stats
    assert stats[f"{direction}_submitted"] == 3, stats
    assert (stats["fragments"], stats["reassembled"], stats["fragment_drops"]) == (3, 1, 0), stats
    (record,) = [r for r in read_records(out) if r["kind"] == "sip"]
    body_start = payload.index(b"\r\n\r\n") + 4
    assert (record["method"], record["call_id"], record["direction"]) == ("INVITE", "big@x", direction)
    assert record["fragments"] == 3
    assert record["size"] == len(payload) >= 4000
    assert record["content_length"] == len(payload) - body_start, "the whole SDP arrived"


def test_a_filter_change_takes_effect_without_detaching(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log")
    program_before = xdp_program_id(lab)
    send_udp(lab.uac_ns, lab.uac_v4, 5080, lab.uas_v4, 5080, [INVITE])
    time.sleep(SETTLE_S)
    before = lab.run(lab.uas_ns, str(AGENT), "stats", lab.uas_if).stdout

    shown = lab.run(lab.uas_ns, str(AGENT), "filter", lab.uas_if)  # no change asked: what is in force
    assert shown.stdout.splitlines()[:4] == ["sip ports  5060 5061", "signature  off", "include    -",
                                             "exclude    -"], shown.stdout
    assert "updated" not in shown.stderr
    changed = lab.run(lab.uas_ns, str(AGENT), "filter", lab.uas_if, "--add-sip-port", "5080",
                      "--add-exclude", "192.0.2.0/24", "--add-exclude", "2001:db8::/32")
    assert "updated" in changed.stderr
    assert changed.stdout.splitlines()[:4] == ["sip ports  5060 5061 5080", "signature  off", "include    -",
                                               "exclude    192.0.2.0/24 2001:db8::/32"], changed.stdout
    send_udp(lab.uac_ns, lab.uac_v4, 5080, lab.uas_v4, 5080, [INVITE])
    time.sleep(SETTLE_S)
    after = lab.run(lab.uas_ns, str(AGENT), "stats", lab.uas_if).stdout
    assert xdp_program_id(lab) == program_before, "the program must not be replaced"
    assert agent.stop() == 0

    def ingress(table: str, counter: str) -> int:
        (row,) = [line for line in table.splitlines() if line.split()[0] == counter]
        return int(row.split()[1])

    assert ingress(before, "no_match") >= 1 and ingress(before, "matched_sip_port") == 0
    assert ingress(after, "matched_sip_port") == 1
    assert [r["sport"] for r in read_records(out) if r["kind"] == "sip"] == [5080]


def test_several_interfaces_and_sigkill_leaves_none_attached(lab: Lab, tmp_path: Path) -> None:
    lab.run(lab.uas_ns, "ip", "link", "add", "extra0", "type", "veth", "peer", "name", "extra1")
    lab.run(lab.uas_ns, "ip", "link", "set", "extra0", "up")
    lab.run(lab.uas_ns, "ip", "link", "set", "extra1", "up")
    agent = start_agent(lab.uas_ns, lab.uas_if, tmp_path / "o.jsonl", tmp_path / "agent.log",
                        ["--attach-method", "link"], more_interfaces=["extra0"])
    assert "extra0 ingress XDP" in agent.output()
    shown = lab.run(lab.uas_ns, "ip", "-d", "link", "show", "extra0").stdout
    assert "prog/xdp" in shown
    agent.stop(signal.SIGKILL)
    wait_detached(lab)
    deadline = time.monotonic() + 5
    while "prog/xdp" in lab.run(lab.uas_ns, "ip", "link", "show", "extra0").stdout:
        assert time.monotonic() < deadline, "XDP still on extra0"
        time.sleep(0.05)
    with netns.inside(lab.uas_ns):
        assert query_program_ids(socket.if_nametoindex("extra0"), AttachType.TCX_EGRESS) == []


def test_a_foreign_xdp_program_is_refused_unless_forced(lab: Lab, tmp_path: Path) -> None:
    from bcc import BPF
    from pyroute2 import IPRoute

    foreign = BPF(text=b"int someone_else(struct xdp_md *ctx) { return XDP_PASS; }")
    fd = foreign.load_func(b"someone_else", BPF.XDP).fd
    with netns.inside(lab.uas_ns), IPRoute() as ipr:
        ipr.link("set", index=socket.if_nametoindex(lab.uas_if),
                 xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", 2)]})
    try:
        refused = lab.run(lab.uas_ns, str(AGENT), "attach", lab.uas_if, "--out", str(tmp_path / "o.jsonl"),
                          check=False)
        assert refused.returncode == 1
        errors = [line for line in refused.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and "someone_else" in errors[0] and "--force" in errors[0], refused.stderr
        assert "someone_else" in lab.run(lab.uas_ns, "ip", "-d", "link", "show", lab.uas_if).stdout

        forced = start_agent(lab.uas_ns, lab.uas_if, tmp_path / "o.jsonl", tmp_path / "agent.log",
                             ["--force"])
        shown = lab.run(lab.uas_ns, "ip", "-d", "link", "show", lab.uas_if).stdout
        assert "xdp_ingress" in shown and "someone_else" not in shown
        assert forced.stop() == 0
        assert not xdp_attached(lab) and tc_egress_programs(lab) == 0
    finally:
        foreign.cleanup()


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_direction_limits_what_is_attached_and_captured(lab: Lab, tmp_path: Path, direction: str) -> None:
    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log", ["--direction", direction])
    assert xdp_attached(lab) == (direction == "ingress")
    assert tc_egress_programs(lab) == (1 if direction == "egress" else 0)
    send_udp(lab.uac_ns, lab.uac_v4, 5060, lab.uas_v4, 5060, [INVITE])
    send_udp(lab.uas_ns, lab.uas_v4, 5060, lab.uac_v4, 5060, [INVITE])
    time.sleep(SETTLE_S)
    assert agent.stop() == 0
    records = read_records(out)
    assert [r["direction"] for r in records if r["kind"] == "sip"] == [direction]
    assert [r["end_cause"] for r in records if r["kind"] == "call"] == ["capture-stopped"], \
        "the INVITE's call, still going when capture stopped, is summarised"


def test_the_json_lines_file_rotates_by_size_while_capturing(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "out" / "sip.jsonl"
    max_mb = 0.002
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--out-max-mb", str(max_mb), "--out-fsync", "rotate"])  # ~2 KB files
    for n in range(30):
        invite = INVITE.replace(b"a84b4c76e66710", b"c%03d" % n)
        send_udp(lab.uac_ns, lab.uac_v4, 5060, lab.uas_v4, 5060, [invite])
        time.sleep(0.05)  # separate batches, so rotation happens between them
    time.sleep(SETTLE_S)
    assert agent.stop() == 0
    files = sorted(out.parent.iterdir())
    assert len(files) > 3
    records = [r for f in files for r in read_records(f) if r["kind"] == "sip"]
    assert sorted(r["call_id"] for r in records) == sorted(
        f"c{n:03d}@pc33.atlanta.example.com" for n in range(30)), "nothing lost across rotations"
    # A batch is one all-or-nothing write, never split: only the summaries written at
    # stop (the 30 calls still going, one batch) may pass the limit, in a file of their own.
    over = [f for f in files if f.stat().st_size > int(max_mb * 2**20)]
    assert all({r["kind"] for r in read_records(f)} == {"call"} for f in over), "no SIP file past the limit"
