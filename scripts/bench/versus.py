"""This tree against an earlier revision, in the same run: what a change cost.

    .venv/bin/python scripts/bench/versus.py REV [--rounds 3]

REV is checked out in a temporary git worktree (removed at the end) and this
tree's tracked files are copied beside it: both run as pure Python (compiling
REV with mypyc here would replace this tree's shared mypyc runtime in the venv,
which both trees' modules are named alike for). The
inputs are built once, here, and both trees take the same bytes: SIP calls
(the mix of scripts/bench/sip.py) as ring events, RTP on learned flows, and
a pcap for replay. Each figure is the best of --rounds, the two trees
alternating in fresh processes so that drift on a shared machine hits both:

  parse+record   userspace.sip.parse_message, SipRecord, its dict form (us/msg)
  sip pipeline   Pipeline.process of the SIP ring events (us/msg)
  rtp pipeline   Pipeline.process of RTP events on 200 learned calls (us/pkt)
  replay         `otus-ebpf replay` of the pcap, whole process (msgs/s)
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.bench.replay import VARIED_CALL, varied_calls, write_pcap
from scripts.bench.sip import call_messages
from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.sip_samples import sip_message
from userspace.event import Kind

REPO = Path(__file__).resolve().parents[2]
SIP_CALLS, RTP_CALLS, RTP_PACKETS, REPLAY_CALLS = 2_000, 200, 100, 5_000

# Runs inside the tree under test (sys.path[0]); reads the inputs, prints JSON.
CHILD = r"""
import json, pickle, subprocess, sys, time
tree, inputs, pcap = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, tree)
try:
    from userspace.frame import IPProto
    SRC, DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])  # records carry raw addresses
except ImportError:  # a tree before userspace.frame: printed addresses
    from userspace.decode import IPProto
    SRC, DST = "10.0.0.1", "10.0.0.2"
from userspace.event import Direction
from userspace.pipeline import Pipeline
from userspace.records import SipRecord
from userspace.sip import parse_message
data = pickle.load(open(inputs, "rb"))

def best(work, n, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); work(); times.append(time.perf_counter() - t)
    return min(times) / n * 1e6

def parse_and_build():
    for m in data["messages"]:
        SipRecord(0, "eth0", Direction.INGRESS, IPProto.UDP, SRC, 5060, DST, 5060, parse_message(m)).to_dict()

rtp = Pipeline({2: "eth0"}, 0)
rtp.process(data["rtp_setup"])
out = {"parse+record": best(parse_and_build, len(data["messages"])),
       "sip pipeline": best(lambda: Pipeline({}, 0).process(data["sip_ring"]), len(data["sip_ring"])),
       "rtp pipeline": best(lambda: rtp.process(data["rtp_ring"]), len(data["rtp_ring"]))}
agent = f"import sys; sys.path.insert(0, {tree!r}); from otus_ebpf.cli.main import main; sys.exit(main())"
t = time.perf_counter()
done = subprocess.run([sys.executable, "-c", agent, "replay", pcap, "--out", pcap + ".jsonl"],
                      capture_output=True, text=True)
if done.returncode:
    sys.exit("replay: " + done.stderr[-2000:])
out["replay"] = data["replay_messages"] / (time.perf_counter() - t)
print(json.dumps(out))
"""

UNITS = {"parse+record": "us/msg", "sip pipeline": "us/msg", "rtp pipeline": "us/pkt", "replay": "msgs/s"}


def sdp(address: str, port: int) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n").encode()


def frame(payload: bytes, src: str, dst: str, sport: int = 5060, dport: int = 5060) -> bytes:
    return ethernet(ipv4(udp(payload, sport, dport), src=src, dst=dst))


def rtp_inputs() -> tuple[list[bytes], list[bytes]]:
    """SIP that learns RTP_CALLS calls' media, then RTP_PACKETS packets on each."""
    caller, callee = "10.0.1.1", "10.0.2.1"
    setup, media = [], []
    for n in range(RTP_CALLS):
        headers = [f"Via: SIP/2.0/UDP {caller};branch=z9hG4bK{n}", "From: <sip:a@x>;tag=a", "To: <sip:b@y>",
                   f"Call-ID: rtp-{n}", "CSeq: 1 INVITE", "Content-Type: application/sdp"]
        answer = [h + ";tag=b" if h.startswith("To:") else h for h in headers]
        setup.append(ring_record(frame(sip_message("INVITE sip:b@y SIP/2.0", headers,
                                                   sdp(caller, 20000 + 2 * n)), caller, callee)))
        setup.append(ring_record(frame(sip_message("SIP/2.0 200 OK", answer, sdp(callee, 30000 + 2 * n)),
                                       callee, caller)))
    for i in range(RTP_PACKETS):
        for n in range(RTP_CALLS):
            packet = struct.pack("!BBHII", 0x80, 8, i, i * 160, 1000 + n) + b"\xd5" * 160
            media.append(ring_record(frame(packet, callee, caller, 30000 + 2 * n, 20000 + 2 * n),
                                     kind=Kind.RTP, ts_ns=1000 + i * 20_000_000))
    return setup, media


def build_inputs(path: Path, pcap: Path) -> None:
    pairs = [(m, up) for n in range(SIP_CALLS) for m, up in call_messages(n)]
    hosts = ("10.0.0.1", "10.0.0.2")
    sip_ring = [ring_record(frame(m, hosts[not up], hosts[up]), ts_ns=i * 1000)
                for i, (m, up) in enumerate(pairs)]
    setup, media = rtp_inputs()
    replay_messages = write_pcap(pcap, varied_calls(REPLAY_CALLS * VARIED_CALL))
    with path.open("wb") as f:
        pickle.dump({"messages": [m for m, _ in pairs], "sip_ring": sip_ring, "rtp_setup": setup,
                     "rtp_ring": media, "replay_messages": replay_messages}, f)


def copy_tracked(repo: Path, into: Path) -> None:
    """The files git tracks in ``repo``, as they are in the work tree."""
    names = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = repo / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="otus-versus-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(old), args.rev],
                       check=True)
        try:
            new = Path(tmp) / "new"  # this tree's files as they are, without its compiled modules
            copy_tracked(REPO, new)
            pcap, inputs = Path(tmp) / "calls.pcap", Path(tmp) / "inputs.pickle"
            build_inputs(inputs, pcap)
            results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
            for _ in range(args.rounds):
                for name, tree in (("old", old), ("new", new)):
                    child = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(inputs), str(pcap)],
                                           check=False, capture_output=True, text=True, cwd=tree)
                    if child.returncode:
                        raise SystemExit(f"versus: the {name} tree failed:\n{child.stderr}")
                    results[name].append(json.loads(child.stdout))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
    print(f"this tree against {args.rev}, best of {args.rounds} rounds, alternating:")
    print(f"  {'what':14} {'unit':7} {args.rev[:12]:>12} {'this tree':>12}  new/old")
    for what, unit in UNITS.items():
        pick = max if unit == "msgs/s" else min
        before = pick(r[what] for r in results["old"])
        after = pick(r[what] for r in results["new"])
        print(f"  {what:14} {unit:7} {before:12,.2f} {after:12,.2f}  {after / before:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
