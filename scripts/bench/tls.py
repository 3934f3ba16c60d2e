"""What the TLS plaintext probes (--tls) cost the processes they watch.

    sudo .venv/bin/python scripts/bench/tls.py [--seconds 3] [--rounds 3]

A TLS echo on loopback (tests/support/tls_peer.py's style: Python ``ssl`` on the
system's libssl.so.3, server and client in processes of their own) exchanges
SIP-sized requests and answers, one at a time, for ``--seconds``: requests per
second with no probes (the baseline), then with the agent's programs loaded
and the TLS probes attached (every SSL_read/SSL_write pays two uprobes, every
socket system call the raw tracepoint), its ring drained by this process as
the agent would. Twice: on port 5061, whose plaintext goes up the ring, and on
port 8443, which the kernel counts and keeps (an HTTPS server beside the SIP
server). Rounds alternate without and with, so a noisy machine moves both.
Then the raw tracepoint's cost to a system call that is not socket I/O
(getppid), to a write() outside any TLS call (to /dev/null), and to a read()
by a process that makes TLS calls (followed to its file: the memory-BIO
pairing), in ns a call.
Last, the floor: what a uprobe and uretprobe that do nothing, on libc's
getppid, add to a call on this machine (the mechanism's own cost, which the
TLS probes pay twice a call before doing anything).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf.kernel.loader import LoadedPrograms, load_programs
from otus_ebpf.kernel.rings import open_reader
from otus_ebpf.kernel.settings import KernelSettings, TlsSettings
from otus_ebpf.kernel.tls import attach_tls, detach_tls, read_tls_counters
from tests.support.sip_samples import INVITE

SIP_PORT, OTHER_PORT = 5061, 8443


def certificate(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=bench"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def echo_server(port: int, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", port))
    print("listening", flush=True)
    while True:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def echo_client(port: int, seconds: float) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port))) as conn:
        done, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(INVITE)
            got = 0
            while got < len(INVITE):
                got += len(conn.recv(65536))
            done += 1
    print(f"{done / seconds:.0f}", flush=True)


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (its threads' too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tls_process_reads(port: int) -> None:
    """As a process that makes TLS calls (the agent follows such a process's reads to
    their sockets): ns a read() of /dev/zero, outside any TLS call."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port))) as conn:
        conn.sendall(INVITE)
        conn.recv(65536)
        zero = os.open("/dev/zero", os.O_RDONLY)
        try:
            print(f"{min(ns_per_call(lambda: os.read(zero, 1), 100_000) for _ in range(3)):.0f}", flush=True)
        finally:
            os.close(zero)


def read_ns(port: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--reader", str(port)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


def requests_per_second(port: int, seconds: float, server: int) -> tuple[float, float]:
    """Requests/s of one client run, and the CPU (client and server) each request took, in µs:
    on a shared host, the CPU a request costs moves less with the neighbours than the rate."""
    served = cpu_seconds(server)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, __file__, "--client", str(port), str(seconds)],
                         capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = float(out.stdout.strip())
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) + cpu_seconds(server) - served
    return rate, cpu / (rate * seconds) * 1e6


def ns_per_call(call: Callable[[], object], count: int = 300_000) -> float:
    start = time.perf_counter_ns()
    for _ in range(count):
        call()
    return (time.perf_counter_ns() - start) / count


@contextlib.contextmanager
def probes() -> Iterator[tuple[LoadedPrograms, list[int]]]:
    """The agent's programs with --tls, probes attached, the ring drained by a thread."""
    settings = KernelSettings(tls=TlsSettings(ports=(SIP_PORT,)), ring_mb=64)
    with contextlib.ExitStack() as stack:
        programs = load_programs(settings)
        stack.callback(programs.close)
        reader = open_reader(programs)
        stop = threading.Event()
        drained = [0]

        def drain() -> None:
            while not stop.is_set():
                drained[0] += len(reader.poll(50))

        attach_tls(stack, programs, settings.tls)  # type: ignore[arg-type]
        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        stack.callback(thread.join)
        stack.callback(stop.set)
        yield programs, drained


def empty_uprobe_pair_ns() -> float:
    """What an empty uprobe and uretprobe add to a call of libc's getppid, in ns."""
    bcc = importlib.import_module("bcc")
    base = min(ns_per_call(os.getppid, 100_000) for _ in range(3))
    probe = bcc.BPF(text=b"int probe_nothing(struct pt_regs *ctx) { return 0; }")
    try:
        probe.attach_uprobe(name=b"c", sym=b"getppid", fn_name=b"probe_nothing")
        probe.attach_uretprobe(name=b"c", sym=b"getppid", fn_name=b"probe_nothing")
        return min(ns_per_call(os.getppid, 20_000) for _ in range(3)) - base
    finally:
        detach_tls(probe)  # closes every uprobe fd the object holds
        probe.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--server", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--reader", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        tls_process_reads(args.reader)
        return
    if args.client:
        echo_client(int(args.client[0]), float(args.client[1]))
        return
    if args.server:
        echo_server(int(args.server[0]), args.server[1], args.server[2])
        return
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = certificate(Path(tmp))
        servers = [subprocess.Popen([sys.executable, __file__, "--server", str(port), cert, key],
                                    stdout=subprocess.PIPE, text=True) for port in (SIP_PORT, OTHER_PORT)]
        try:
            for server in servers:
                assert server.stdout is not None and server.stdout.readline().strip() == "listening"
            measure(args.seconds, args.rounds, {SIP_PORT: servers[0].pid, OTHER_PORT: servers[1].pid})
        finally:
            for server in servers:
                server.terminate()
                server.wait(timeout=10)


def measure(seconds: float, rounds: int, servers: dict[int, int]) -> None:
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    calls: dict[int, list[float]] = {}  # TLS calls a request, probed
    figures: dict[str, list[float]] = {}
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for _ in range(rounds):
            for with_probes in (False, True):
                with probes() if with_probes else contextlib.nullcontext((None, [0])) as (programs, drained):
                    for port in (SIP_PORT, OTHER_PORT):
                        before = read_tls_counters(programs.bpf)["tls_calls"] if programs else 0
                        rate, used = requests_per_second(port, seconds, servers[port])
                        rates.setdefault(f"{port} {with_probes}", []).append(rate)
                        cpu.setdefault(f"{port} {with_probes}", []).append(used)
                        if programs is not None:
                            moved = read_tls_counters(programs.bpf)["tls_calls"] - before
                            calls.setdefault(port, []).append(moved / (rate * seconds))
                    figures.setdefault(f"getppid {with_probes}", []).append(ns_per_call(os.getppid))
                    figures.setdefault(f"write {with_probes}", []).append(
                        ns_per_call(lambda: os.write(devnull, b"x")))
                    figures.setdefault(f"read {with_probes}", []).append(read_ns(SIP_PORT))
                    if programs is not None:
                        counts = read_tls_counters(programs.bpf)
        print(f"TLS echo, {seconds:.0f} s a round, {rounds} rounds alternating (median):")
        for port, what in ((SIP_PORT, "plaintext up the ring"), (OTHER_PORT, "counted, kept in the kernel")):
            base, probed = (statistics.median(rates[f"{port} {p}"]) for p in (False, True))
            base_cpu, probed_cpu = (statistics.median(cpu[f"{port} {p}"]) for p in (False, True))
            per_call = (probed_cpu - base_cpu) / statistics.median(calls[port])
            print(f"  port {port} ({what}): {base:,.0f} -> {probed:,.0f} requests/s, "
                  f"ratio {probed / base:.2f}; CPU a request {base_cpu:.0f} -> {probed_cpu:.0f} us, "
                  f"{statistics.median(calls[port]):.1f} TLS calls a request (both ends), "
                  f"+{per_call:.1f} us CPU a call")
        for call, who in (("getppid", "any process"), ("write", "any process, outside a TLS call"),
                          ("read", "a process that makes TLS calls, of /dev/zero")):
            base, probed = (statistics.median(figures[f"{call} {p}"]) for p in (False, True))
            print(f"  {call}() from Python ({who}): {base:.0f} -> {probed:.0f} ns a call "
                  f"(+{probed - base:.0f} ns)")
        print(f"  last probed round's TLS counters: {counts}; chunks drained: {drained[0]}")
        floor = empty_uprobe_pair_ns()
        print(f"  floor: a uprobe + uretprobe doing nothing add {floor / 1000:.1f} us to a call here")
    finally:
        os.close(devnull)


if __name__ == "__main__":
    main()
