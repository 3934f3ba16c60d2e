"""otus-ebpf's user half: pure-Python, sans-IO data plane.

Bytes and events go in, typed records come out. Nothing here opens a socket
to a NIC, reads a clock, or imports bcc, pyroute2 or ``otus_ebpf``.

Set-up may compile the per-message modules with mypyc (scripts/build_native.py):
the same source as C extensions, which Python imports ahead of the .py beside
them. So that an edited module is never silently shadowed by its old build,
importing the package checks the sources against the hashes the build wrote.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def refuse_stale_native_modules(here: Path) -> None:
    """Raise ImportError when a module compiled in ``here`` no longer has its source."""
    try:
        built = json.loads((here / "_native.json").read_text())["sources"]
    except FileNotFoundError:
        return  # pure Python
    for name, digest in built.items():
        if hashlib.sha256((here / f"{name}.py").read_bytes()).hexdigest() != digest:
            raise ImportError(f"userspace/{name}.py changed since it was compiled: run scripts/setup.sh "
                              f"(or scripts/build_native.py --clean to run as pure Python)")


refuse_stale_native_modules(Path(__file__).parent)
