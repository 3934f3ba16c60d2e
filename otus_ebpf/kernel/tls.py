"""Attach the TLS plaintext probes (bpf/otus_tls.c) and read their counters.

Uprobes at the entry and return of OpenSSL 3's SSL_write, SSL_write_ex,
SSL_read and SSL_read_ex (and SSL_free's entry) in one library file, for every
process that maps it or for given processes; a raw tracepoint on system call
entry (attached by bcc as it loads the text) pairs a TLS session with the TCP
socket its records move on. Every probe is an fd bcc holds: closed here on the capture's stop
path, and by the kernel when the process ends whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import Any

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.bpfsys import map_lookup, possible_cpus
from otus_ebpf.kernel.loader import LoadedPrograms, import_bcc
from otus_ebpf.kernel.maps import table
from otus_ebpf.kernel.settings import TlsSettings
from userspace.event import struct_format
from userspace.tls import TLS_COUNTERS_FIELDS, TlsCounter

# (library function, the program its entry runs); every one's return runs RETURN_PROGRAM
DATA_CALLS = (("SSL_write", "otus_tls_write"), ("SSL_write_ex", "otus_tls_write_ex"),
              ("SSL_read", "otus_tls_read"), ("SSL_read_ex", "otus_tls_read_ex"))
RETURN_PROGRAM = "otus_tls_return"
FREE_CALL = ("SSL_free", "otus_tls_free")
DEFAULT_LIBRARY = "ssl"  # found as the system's libssl.so.3 by the dynamic linker's cache
COUNTERS_MAP = "tls_counters"
TLS_COUNTERS_VALUE = struct.Struct(struct_format(TLS_COUNTERS_FIELDS))
TLS_COUNTERS = tuple(c for c in TlsCounter if c is not TlsCounter.MAX)
_U32 = struct.Struct("=I")


def find_library(given: str | None) -> str:
    """The library file to probe: the one given, which must exist, or the system's libssl."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise SetupError(f"TLS library {given}: no such file (--tls-library)")
        return str(path.resolve())
    found = import_bcc().BPF.find_library(DEFAULT_LIBRARY.encode())
    if not found:
        raise SetupError("no libssl found by the dynamic linker (install libssl3, or give --tls-library)")
    return str(Path(found.decode()).resolve())


def attach_tls(stack: contextlib.ExitStack, programs: LoadedPrograms, settings: TlsSettings) -> str:
    """Attach every probe; their detach goes on ``stack`` first, so that a failure half
    way leaves none behind. Returns what was attached, for the capture's description."""
    bpf = programs.bpf
    library = find_library(settings.library)
    stack.callback(detach_tls, bpf)
    for pid in settings.pids or (-1,):
        if pid != -1 and not Path(f"/proc/{pid}").is_dir():
            raise SetupError(f"--tls-pid {pid}: no such process")
        for symbol, program in DATA_CALLS:
            _uprobe(bpf, library, symbol, program, pid, returning=False)
            _uprobe(bpf, library, symbol, RETURN_PROGRAM, pid, returning=True)
        _uprobe(bpf, library, *FREE_CALL, pid, returning=False)
    who = ", ".join(f"pid {pid}" for pid in settings.pids) or "every process"
    return f"TLS plaintext from {library} ({who}; ports {', '.join(map(str, settings.ports))})"


def _uprobe(bpf: Any, library: str, symbol: str, program: str, pid: int, returning: bool) -> None:
    attach = bpf.attach_uretprobe if returning else bpf.attach_uprobe
    try:
        attach(name=library.encode(), sym=symbol.encode(), fn_name=program.encode(), pid=pid)
    except Exception as exc:  # bcc raises bare Exception for a missing symbol or process
        target = "" if pid == -1 else f" in process {pid}"
        raise SetupError(f"cannot probe {symbol} in {library}{target}: {_first_line(exc)} "
                         "(OpenSSL 3 is what --tls reads)") from None


def detach_tls(bpf: Any) -> None:
    """Every uprobe and raw tracepoint link of this object (its others are XDP and TC),
    by closing the fds that hold them. bcc's own detach would also look for a tracefs
    event, which a uprobe made through the perf PMU (as here) does not have."""
    for fds in (bpf.uprobe_fds, bpf.raw_tracepoint_fds):
        while fds:
            _name, fd = fds.popitem()
            with contextlib.suppress(OSError):  # closed already: the link is gone either way
                os.close(fd)


def read_tls_counters(bpf: Any) -> dict[str, int]:
    """The TLS counters, summed over CPUs, by name (tls_calls, tls_submitted, ...)."""
    cpus = possible_cpus()
    raw = map_lookup(table(bpf, COUNTERS_MAP).map_fd, _U32.pack(0), TLS_COUNTERS_VALUE.size * cpus)
    copies = (TLS_COUNTERS_VALUE.unpack_from(raw or bytes(TLS_COUNTERS_VALUE.size * cpus),
                                             cpu * TLS_COUNTERS_VALUE.size) for cpu in range(cpus))
    totals = [sum(field) for field in zip(*copies, strict=True)]
    return {f"tls_{counter.name.lower()}": totals[counter] for counter in TLS_COUNTERS}


def format_tls_counts(counts: dict[str, int]) -> str:
    """The stats line's TLS section."""
    return "tls " + " ".join(f"{name.removeprefix('tls_')}={value}" for name, value in counts.items())


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

