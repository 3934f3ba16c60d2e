"""How much of the verifier's budget each program uses, in each build the
agent loads, against an earlier revision's.

    sudo .venv/bin/python scripts/bench/verifier_budget.py [--against main]

The verifier walks a program once for every state it can reach an
instruction in, and gives up at a million instructions processed; a build
close to it has no room for one more feature on its path. The builds: one
ring or eight worker shards, with or without Call-ID routing (workers use
it). REV's programs are compiled from git beside this tree's.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf.kernel.bpfsys import verifier_statistics
from otus_ebpf.kernel.loader import cflags_for, import_bcc
from otus_ebpf.kernel.settings import KernelSettings
from otus_ebpf.kernel.sources import bpf_source_dir

REPO = Path(__file__).resolve().parents[2]
XDP, SCHED_CLS = 6, 3  # BPF_PROG_TYPE_*
PROGRAMS = {"xdp_ingress": XDP, "tc_egress": SCHED_CLS, "xdp_screen": XDP, "tc_screen": SCHED_CLS,
            "xdp_decap": XDP, "tc_decap": SCHED_CLS}
BUILDS = {"1 shard": KernelSettings(shards=1),
          "8 shards, routed": KernelSettings(shards=8, route_by_call_id=True)}


def processed(bcc: Any, directory: Path, settings: KernelSettings) -> dict[str, str]:
    flags = [f"-I{directory}" if flag.startswith("-I") else flag for flag in cflags_for(settings)]
    compiled = bcc.BPF(src_file=str(directory / "otus.c").encode(), cflags=flags)
    found = {}
    try:
        for name, prog_type in PROGRAMS.items():
            if f"int {name}(".encode() not in (directory / "otus.c").read_bytes():
                continue
            loaded, line = verifier_statistics(prog_type, compiled.dump_func(name.encode()))
            count = re.search(r"processed (\d+) insns", line)
            found[name] = (f"{int(count[1]):,}" if count else "?") + ("" if loaded else " REFUSED")
    finally:
        compiled.cleanup()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", metavar="REV")
    args = parser.parse_args()
    bcc = import_bcc()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp)
        for name in ("otus.c", "otus_event.h"):
            shown = subprocess.run(["git", "-C", str(REPO), "show", f"{args.against}:bpf/{name}"], check=True,
                                   capture_output=True)
            (old / name).write_bytes(shown.stdout)
        print(f"instructions the verifier processed (limit 1,000,000), {args.against} against this tree:")
        for build, settings in BUILDS.items():
            before, after = processed(bcc, old, settings), processed(bcc, bpf_source_dir(), settings)
            for name in PROGRAMS:
                if name in before or name in after:
                    print(f"  {build:18} {name:12} {before.get(name, '-'):>12} {after.get(name, '-'):>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
