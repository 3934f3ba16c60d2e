"""Where the kernel C sources are: inside the installed package, or in a checkout."""

from __future__ import annotations

from pathlib import Path

from otus_ebpf.errors import SetupError

PROGRAM_FILE = "otus.c"
TLS_PROGRAM_FILE = "otus_tls.c"  # with --tls, compiled after PROGRAM_FILE
EVENT_HEADER_FILE = "otus_event.h"


def bpf_source_dir() -> Path:
    """A wheel ships the sources as ``otus_ebpf/bpf``; a checkout has them at
    top level in ``bpf/``."""
    package_dir = Path(__file__).resolve().parent.parent  # otus_ebpf/
    for candidate in (package_dir / "bpf", package_dir.parent / "bpf"):
        if (candidate / PROGRAM_FILE).is_file() and (candidate / EVENT_HEADER_FILE).is_file():
            return candidate
    raise SetupError(f"BPF sources ({PROGRAM_FILE}) not found next to {package_dir}; reinstall otus-ebpf")
