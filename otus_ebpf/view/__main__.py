"""`python -m otus_ebpf.view SOCKET`: the live view of `otus-ebpf attach`, a process
of its own reading the agent over its private socket (otus_ebpf.cli.agent). It
ends when the agent stops or goes away, or on q (which stops the agent)."""

from __future__ import annotations

import argparse
import sys

from otus_ebpf.view.app import LiveApp, yield_to_capture
from otus_ebpf.view.sources import RemoteSource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m otus_ebpf.view", description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="the agent's private socket")
    parser.add_argument("--headless", action="store_true", help="draw nowhere (benchmarks)")
    args = parser.parse_args(argv)
    yield_to_capture()
    LiveApp(RemoteSource(args.socket, agent=True)).run(headless=args.headless, size=(200, 50) if args.headless
                                                       else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
