"""Media endpoints learned into a capture's flow table, one event at a time.

The dialogs announce endpoints (``userspace.calls.FlowEvent``); a capture
turns each into a kernel map update or a socket-filter rule. A full table is
a counted condition, never an error: the agent goes on capturing SIP. Any
other failure of one event is a bug, counted at the failure boundary, and
the next event goes on.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from otus_ebpf.kernel_abi import Address
from userspace.boundary import Boundary
from userspace.endpoints import FlowAction, FlowEvent


class FlowTableFull(Exception):
    """The table holds as many endpoints as it was sized for."""


@dataclass(slots=True)
class FlowStats:
    learned: int = 0
    forgotten: int = 0
    flows_map_full: int = 0    # learn refused: the table is full (sized by calls.max_calls)
    failed: int = 0      # an event that hit a bug (counted by the boundary too)


def endpoint_address(text: str) -> Address:
    """The dialogs hand over canonical IP literals only (userspace.sdp)."""
    return ipaddress.ip_address(text)


def packed_address(text: str) -> bytes:
    """The raw address of a canonical IP literal, at inet_pton's cost (a sixth of ipaddress's)."""
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def apply_each(events: list[FlowEvent], learn: Callable[[FlowEvent], None],
               forget: Callable[[FlowEvent], None], stats: FlowStats, boundary: Boundary) -> None:
    for event in events:
        try:
            if event.action is FlowAction.LEARN:
                learn(event)
                stats.learned += 1
            else:
                forget(event)
                stats.forgotten += 1
        except FlowTableFull:
            stats.flows_map_full += 1
        except Exception as exc:  # one bad event, not the capture
            stats.failed += 1
            boundary.failed("flow_learning", exc)
