"""The TLS probes in the kernel (bpf/otus_tls.c): loaded, attached to the system's
libssl, and driven by a TLS exchange on loopback in this process; what reaches the
ring is read back and decoded as the pipeline would."""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.loader import LoadedPrograms, load_programs
from otus_ebpf.kernel.rings import Reader, open_reader
from otus_ebpf.kernel.settings import KernelSettings, TlsSettings
from otus_ebpf.kernel.tls import attach_tls, find_library, read_tls_counters
from userspace.event import Direction, Kind, decode_event
from userspace.tls import TLS_DATA, Chunk, decode_chunk

SIP_PORT, OTHER_PORT = 25061, 28443  # loopback ports of this test's own servers


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=test"],
                   check=True, capture_output=True, timeout=30)
    return str(cert), str(key)


@contextlib.contextmanager
def probed(comms: tuple[str, ...] = ()) -> Iterator[tuple[LoadedPrograms, Reader]]:
    settings = KernelSettings(tls=TlsSettings(ports=(SIP_PORT,), comms=comms))
    with contextlib.ExitStack() as stack:
        programs = load_programs(settings)
        stack.callback(programs.close)
        reader = open_reader(programs)
        attach_tls(stack, programs, settings.tls)  # type: ignore[arg-type]
        yield programs, reader


def exchange(port: int, cert: str, key: str, payload: bytes) -> None:
    """A TLS server on loopback echoes ``payload`` back to a client in this process."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname, client_context.verify_mode = False, ssl.CERT_NONE
    with socket.create_server(("127.0.0.1", port)) as listener:
        def serve() -> None:
            raw, _ = listener.accept()
            with server_context.wrap_socket(raw, server_side=True) as conn:
                got = b""
                while len(got) < len(payload):
                    got += conn.recv(65536)
                conn.sendall(got)

        thread = threading.Thread(target=serve)
        thread.start()
        with client_context.wrap_socket(socket.create_connection(("127.0.0.1", port))) as conn:
            conn.sendall(payload)
            back = b""
            while len(back) < len(payload):
                back += conn.recv(65536)
        thread.join(timeout=10)
    assert back == payload


def chunks(reader: Reader) -> list[tuple[int, Chunk]]:
    """(direction, chunk) of every TLS record in the ring."""
    found = []
    for raw in reader.drain():
        event = decode_event(raw)
        assert event.kind == Kind.TLS
        found.append((event.direction, decode_chunk(event.frame, event.payload_offset, event.orig_len)))
    return found


def test_plaintext_goes_up_paired_with_its_connection_and_other_ports_stay(
        certificate: tuple[str, str]) -> None:
    big = b"OPTIONS sip:a@b SIP/2.0\r\n" + b"x" * (TLS_DATA + 4000)  # one call more than a chunk holds
    with probed() as (programs, reader):
        exchange(SIP_PORT, *certificate, big)
        exchange(OTHER_PORT, *certificate, b"GET / HTTP/1.1\r\n\r\n")
        found = chunks(reader)
        counts = read_tls_counters(programs.bpf)
    written = [c for direction, c in found if direction == Direction.EGRESS]
    read = [c for direction, c in found if direction == Direction.INGRESS]
    # the client's write of the whole message: one call, cut at a chunk's size
    first = next(c for c in written if c.dport == SIP_PORT)
    assert first.offset == 0 and first.moved == len(big) and first.data == big[:TLS_DATA]
    assert (first.src, first.dst) == (bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    assert first.process.comm == Path("/proc/self/comm").read_text().strip()
    # the server's reads of it (record by record): offsets that follow each other
    server_reads = sorted((c for c in read if c.dport == SIP_PORT), key=lambda c: c.offset)
    assert server_reads and server_reads[0].offset == 0
    assert sum(c.moved for c in server_reads) == len(big)
    assert all(a.offset + a.moved == b.offset for a, b in itertools.pairwise(server_reads))
    assert not any(OTHER_PORT in (c.sport, c.dport) for _d, c in found), "HTTPS stays in the kernel"
    assert counts["tls_cut"] >= 1 and counts["tls_other_port"] >= 2 and counts["tls_unpaired"] == 0
    assert counts["tls_submitted"] == len(found) and counts["tls_submit_failed"] == 0


def test_only_named_processes_are_followed_and_a_missing_library_or_symbol_is_one_line(
        certificate: tuple[str, str], tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=r"libssl.so.3: no such file \(--tls-library\)"):
        find_library(str(tmp_path / "libssl.so.3"))
    with probed(comms=("not-this-one",)) as (programs, reader):
        exchange(SIP_PORT, *certificate, b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        assert chunks(reader) == []
        assert read_tls_counters(programs.bpf)["tls_calls"] == 0
        libc = next(line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                    if line.endswith("libc.so.6"))  # this process's own: a library with no SSL_write
        refused = r"cannot probe SSL_write in .*libc"
        with contextlib.ExitStack() as stack, pytest.raises(SetupError, match=refused):
            attach_tls(stack, programs, TlsSettings(library=libc))
        with contextlib.ExitStack() as stack, pytest.raises(SetupError, match="--tls-pid 4194303: no such"):
            attach_tls(stack, programs, TlsSettings(pids=(4_194_303,)))
