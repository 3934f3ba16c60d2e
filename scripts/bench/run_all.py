"""Run every benchmark of the project and print one table: each row a
figure, its in-run baseline and the ratio, and whether its target holds.

    sudo scripts/bench/run            (about 10 minutes on 2 vCPUs; root for the kernel and lab ones)

Each benchmark is its own script (scripts/bench/*.py, documented in
docs/BENCHMARKS.md); this driver runs them one after another, keeps their
full output in otus-out/bench/NAME.txt, and picks each one's headline out of
it. A benchmark that fails shows as FAILED with the reason, and the driver
exits 1.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench"
OUT = REPO / "otus-out" / "bench"
Row = tuple[str, str, str, str, str]  # what, figure, baseline, ratio, target


@dataclass(frozen=True)
class Bench:
    name: str
    argv: list[str]
    rows: Callable[[str], list[Row]]


LIVE_SECONDS = 10


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


_KERNEL_ROW = re.compile(r"(SIP match into the ring|non-matching|RTP stats, in order)\s+(\d+)\s+([\d.]+)\s+"
                         r"([\d.]+)\s+"
                         r"([\d.]+)x\s+(\d+)\s+(\w+)")
_MEDIA_ROW = re.compile(r"--media (\w+)\s*: counted\s+([\d,]+) of ([\d,]+) \(([\d.]+%)\).*?agent CPU .*?= +"
                        r"([\d.]+)% of a core \(sent at ([\d,]+)/s\)")


def kernel_rows(out: str) -> list[Row]:
    rows = []
    for line in out.splitlines():
        m = _KERNEL_ROW.match(line)
        if m:
            rows.append((f"kernel: {m[1]}, {m[2]} B frame", f"{m[3]} ns", f"{m[4]} ns (bare program)",
                         f"{m[5]}x", f"<= {m[6]} ns: {m[7].lower()}"))
    return rows


def media_rows(out: str) -> list[Row]:
    runs = {m[1]: m for m in _MEDIA_ROW.finditer(out)}
    ratio = re.search(r"packets / stats = ([\d.]+)x", out)
    assert "stats" in runs and "packets" in runs and ratio, out[-500:]
    stats, packets = runs["stats"], runs["packets"]
    cpu = float(stats[5])
    return [("live RTP, 2,000 streams: agent CPU", f"{cpu}% of a core, {stats[4]} counted",
             f"{packets[5]}% (--media packets, {packets[4]} counted)", f"{ratio[1]}x a packet",
             f"< 10% at {stats[6]}/s sent: {'met' if cpu < 10 and stats[2] == stats[3] else 'MISSED'}")]


def reassembly_rows(out: str) -> list[Row]:
    m = re.search(r"Reassembler.feed\s+:\s+([\d,]+) fragments/s.*?\(([\d.]+)x the baseline's rate; "
                  r"target ([\d,]+)", out)
    base = re.search(r"naive dict accumulation :\s+([\d,]+) fragments/s", out)
    assert m and base, out[-500:]
    return [("reassembly: fragments/s", m[1], f"{base[1]} (naive dict)", f"{m[2]}x",
             f">= {m[3]}: {'met' if _num(m[1]) >= _num(m[3]) else 'MISSED'}")]


def sip_rows(out: str) -> list[Row]:
    record = re.search(r"parse\+record\s+([\d,]+)", out)
    pipeline = re.search(r"pipeline\s+([\d,]+)", out)
    tshark = re.search(r"tshark\s+([\d,]+) messages/s\s+pipeline/tshark = ([\d.]+)x", out)
    assert record and pipeline and tshark, out[-500:]
    return [("SIP parse+record, msgs/s/core", record[1], "-", "-",
             f">= 150,000: {'met' if _num(record[1]) >= 150_000 else 'MISSED'}"),
            ("SIP pipeline vs tshark, msgs/s", pipeline[1], f"{tshark[1]} (tshark)", f"{tshark[2]}x", "-")]


def fuzz_rows(out: str) -> list[Row]:
    m = re.search(r"([\d,]+) inputs in ([\d.]+) s.*?nothing else raised", out, re.S)
    slow = re.search(r"slowest input ([\d.]+) ms \(limit ([\d.]+) ms\)", out)
    assert m and slow, out[-500:]
    return [("fuzz: SIP parser + TCP framer", f"{m[1]} inputs, none raised", "-", "-",
             f"slowest {slow[1]} ms <= {slow[2]} ms: {_verdict(_num(slow[1]) <= _num(slow[2]))}")]


def tcp_rows(out: str) -> list[Row]:
    rows = []
    for line in out.splitlines():
        m = re.match(r"(1-byte segments, [\w ]+?|one 70 KB header, 1-byte segments)\s+([\d,]+) segments\s+"
                     r"([\d.]+) s\s+([\d.]+)x baseline", line)
        if m:
            rows.append((f"TCP: {m[1]}", f"{m[3]} s", "1,400-byte segments", f"{m[4]}x",
                         f"a few seconds: {_verdict(float(m[3]) <= 5)}"))
    assert rows, out[-500:]
    return rows


def websocket_rows(out: str) -> list[Row]:
    rate = r"\s+[\d,]+ messages\s+[\d.]+ s\s+([\d,]+) msgs/s"
    base = re.search(r"SIP over TCP, 1400-byte segments \(baseline\)" + rate, out)
    client = re.search(r"WebSocket client frames \(masked\)" + rate + r"\s+([\d.]+)x baseline", out)
    fuzz = re.search(r"fuzz: ([\d,]+) directions in [\d.]+ s, [\d,]+/s; (\d+) raised", out)
    assert base and client and fuzz, out[-500:]
    return [("WebSocket framing (masked), msgs/s", client[1], f"{base[1]} (SIP over TCP)",
             f"{client[2]}x cost", "-"),
            ("fuzz: WebSocket frame parser", f"{fuzz[1]} directions", "-", "-",
             f"raised {fuzz[2]}: {_verdict(fuzz[2] == '0')}")]


def tls_rows(out: str) -> list[Row]:
    echo = re.search(r"port 5061 \(plaintext up the ring\): ([\d,]+) -> ([\d,]+) requests/s, ratio ([\d.]+); "
                     r"CPU a request (\d+) -> (\d+) us, [\d.]+ TLS calls a request \(both ends\), "
                     r"\+(-?[\d.]+) us CPU a call", out)
    floor = re.search(r"floor: a uprobe \+ uretprobe doing nothing add ([\d.]+) us", out)
    assert echo and floor, out[-500:]
    return [("TLS echo with the --tls probes, CPU a request", f"{echo[5]} us", f"{echo[4]} us (no probes)",
             f"{int(echo[5]) / max(int(echo[4]), 1):.2f}x", "-"),
            ("  added a TLS call (CPU)", f"{echo[6]} us", f"{floor[1]} us (an empty uprobe pair)", "-", "-")]


def view_rows(out: str) -> list[Row]:
    without = re.search(r"without the view\s+([\d,]+) messages/s", out)
    viewed = re.search(r"with the view\s+([\d,]+) messages/s", out)
    ratio = re.search(r"wall clock ([\d.]+) .*?CPU ([\d.]+)", out)
    assert without and viewed and ratio, out[-500:]
    met = "met" if float(ratio[2]) >= 0.95 else "MISSED"
    return [("capture path with the live view open", f"{viewed[1]} msgs/s", f"{without[1]} msgs/s (no view)",
             f"{ratio[1]}x wall, {ratio[2]}x CPU", f">= 0.95x: {met}")]


def fuzz_pipeline_rows(out: str) -> list[Row]:
    m = re.search(r"([\d,]+) events \(([\d,]+) calls\) in ([\d.]+) s: ([\d,]+) events/s", out)
    bad = re.search(r"internal errors (\d+), flow events refused (\d+)", out)
    assert m and bad, out[-500:]
    clean = bad[1] == "0" and bad[2] == "0"
    return [("fuzz: whole pipeline + flow learning", f"{m[1]} events, {m[4]}/s", "-", "-",
             f"internal errors {bad[1]}: {_verdict(clean)}")]


def kafka_rows(out: str) -> list[Row]:
    bare = re.search(r"bare produce\(\) loop, pre-encoded\s+:\s+([\d,]+)", out)
    ours = re.search(r"KafkaReporter, default \(produce_batch\)\s+:\s+([\d,]+) records/s\s+\(([\d.]+)x", out)
    assert bare and ours, out[-500:]
    met = _num(ours[1]) >= 300_000 and float(ours[2]) >= 0.6
    return [("Kafka reporter, records/s", ours[1], f"{bare[1]} (bare produce loop)", f"{ours[2]}x",
             f">= 300,000 and >= 0.6x: {'met' if met else 'MISSED'}")]


def live_rows(out: str) -> list[Row]:
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(-?\d+)\s+([\d.]+)x", line)
        if m:
            loss = f"unaccounted {m[7]}: {'ok' if m[7] == '0' else 'LOST'}"
            rows.append((f"live blast, {m[1]} worker(s): received/s", f"{_num(m[5]) / LIVE_SECONDS:,.0f}",
                         f"{_num(m[3]):,.0f} sent/s", f"{m[8]}x", loss))
    return rows


def rates_rows(out: str) -> list[Row]:
    m = re.search(r"highest rate with nothing lost: agent ([\d,]+)/s, tcpdump ([\d,]+)/s \(([\d.]+)x\)", out)
    assert m, out[-500:]
    return [("live steps: highest lossless rate, pkts/s", m[1], f"{m[2]} (tcpdump to a file)", f"{m[3]}x",
             "-")]


def workers_rows(out: str) -> list[Row]:
    one = re.search(r"1 worker:\s+([\d,]+)", out)
    two = re.search(r"2 workers, one file:\s+([\d,]+)", out)
    ratio = re.search(r"2 workers \(one file\) / 1 worker = ([\d.]+)x", out)
    assert one and two and ratio, out[-500:]
    return [("workers: end-to-end msgs/s, 2 vs 1", two[1], f"{one[1]} (1 worker)", f"{ratio[1]}x", "-")]


def replay_rows(out: str) -> list[Row]:
    ours = re.findall(r"otus-ebpf replay :\s+([\d,]+)", out)
    tshark = re.findall(r"tshark -Y sip\s+:\s+([\d,]+)", out)
    fair = re.search(r"\n  replay / tshark = ([\d.]+)x  \(target >= ([\d.]+)x", out)
    trunk = re.search(r"same media: replay / tshark = ([\d.]+)x", out)
    assert len(ours) == len(tshark) == 2 and fair and trunk, out[-500:]
    return [("replay vs tshark, varied hosts, msgs/s", ours[0], f"{tshark[0]} (tshark)", f"{fair[1]}x",
             f">= {fair[2]}x: {'met' if float(fair[1]) >= float(fair[2]) else 'MISSED'}"),
            ("replay vs tshark, same SDP media, msgs/s", ours[1], f"{tshark[1]} (tshark: its pathology)",
             f"{trunk[1]}x", "-")]


def pcap_io_rows(out: str) -> list[Row]:
    rows = []
    for m in re.finditer(r"replay: (read|write) (pcapng|pcap)\s+([\d.]+)s\s+([\d.]+)s\s+([\d.]+)x", out):
        ratio = float(m[5])
        rows.append((f"replay, {m[1]} {m[2]}: dpkt, CPU s", m[4], f"{m[3]} (hand-written)", f"{m[5]}x",
                     f"<= 1.10x: {'dpkt' if ratio <= 1.10 else 'hand code kept'}"))
    assert len(rows) == 4, out[-500:]
    return rows


def processors_rows(out: str) -> list[Row]:
    rows = [(f"replay with {m[1].strip()}, CPU s", m[3], f"{m[2]} (no processors)", f"{m[4]}x",
             f"{m[5]} us a message")
            for m in re.finditer(r"^(\S.{33}) +([\d.]+)s +([\d.]+)s +([\d.]+)x +([+-][\d.]+) us", out, re.M)]
    assert len(rows) == 7, out[-500:]
    return rows


def memory_rows(out: str) -> list[Row]:
    base = re.search(r"baseline \(empty pipeline\) :\s+([\d.]+) MB", out)
    peak = re.search(r"with the dialogs\s+:\s+([\d.]+) MB", out)
    ratio = re.search(r"ratio to baseline\s+:\s+([\d.]+)x", out)
    assert base and peak and ratio, out[-500:]
    return [("memory: 100,000 live dialogs", f"{peak[1]} MB", f"{base[1]} MB (empty)", f"{ratio[1]}x",
             f"<= 256 MB: {'met' if float(peak[1]) <= 256 else 'MISSED'}")]


def benches() -> list[Bench]:
    python = sys.executable
    return [
        Bench("kernel_path", [python, str(BENCH / "kernel_path.py")], kernel_rows),
        Bench("live_loss", [python, str(BENCH / "live_loss.py"), "--seconds", str(LIVE_SECONDS)], live_rows),
        Bench("live_rates", [python, str(BENCH / "live_rates.py"), "--seconds", "20", "--workers", "2",
                             "--rates", "15000", "30000", "45000", "60000"], rates_rows),
        Bench("live_media", [python, str(BENCH / "live_media.py")], media_rows),
        Bench("reassembly", [python, str(BENCH / "reassembly.py")], reassembly_rows),
        Bench("sip", [python, str(BENCH / "sip.py")], sip_rows),
        Bench("fuzz_sip", [python, str(BENCH / "fuzz_sip.py"), "--inputs", "1000000"], fuzz_rows),
        Bench("fuzz_pipeline", [python, str(BENCH / "fuzz_pipeline.py"), "--events", "1000000"],
              fuzz_pipeline_rows),
        Bench("tcp", [python, str(BENCH / "tcp.py")], tcp_rows),
        Bench("websocket", [python, str(BENCH / "websocket.py")], websocket_rows),
        Bench("tls", [python, str(BENCH / "tls.py")], tls_rows),
        Bench("view", [python, str(BENCH / "view.py"), "--calls", "10000", "--rounds", "10"], view_rows),
        Bench("kafka", [python, str(BENCH / "kafka.py")], kafka_rows),
        Bench("workers", [python, str(BENCH / "workers.py")], workers_rows),
        Bench("replay", [python, str(BENCH / "replay.py")], replay_rows),
        Bench("pcap_io", [python, str(BENCH / "pcap_io.py"), "--rounds", "5"], pcap_io_rows),
        Bench("processors", [python, str(BENCH / "processors.py")], processors_rows),
        Bench("memory", [python, str(BENCH / "memory.py")], memory_rows),
    ]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    failed = False
    started = time.monotonic()
    for bench in benches():
        began = time.monotonic()
        result = subprocess.run(bench.argv, capture_output=True, text=True, cwd=REPO, check=False)
        (OUT / f"{bench.name}.txt").write_text(result.stdout + result.stderr)
        try:
            if result.returncode not in (0, 1):  # live_loss exits 1 when something went unaccounted
                raise AssertionError(f"exit {result.returncode}: {result.stderr.strip()[-200:]}")
            rows += bench.rows(result.stdout)
        except AssertionError as exc:
            failed = True
            rows.append((bench.name, "FAILED", "-", "-", str(exc).splitlines()[-1][:60] if str(exc) else ""))
        print(f"  {bench.name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    widths = [max(len(r[i]) for r in [*rows, ("what", "figure", "baseline (same run)", "ratio", "target")])
              for i in range(5)]
    header = ("what", "figure", "baseline (same run)", "ratio", "target")
    print(f"otus-ebpf benchmarks, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{len(__import__('os').sched_getaffinity(0))} CPUs, kernel {platform.release()}, "
          f"{time.monotonic() - started:.0f} s in all")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
