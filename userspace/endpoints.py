"""Media endpoints the live calls announced, shared and reference-counted.

Two calls may announce one endpoint (a media server's port reused, a
transfer, a re-INVITE to the same SBC address). Each endpoint is held by
every call that announced it; the newest holder owns it — its media is
attributed to that call, with that call's SDP formats, unless the other end
of the flow is an older holder's own — and it is forgotten only when its
last holder ends. ``take`` and ``release`` return the change
the kernel's flow map must make, if any (``FlowEvent``), and cost O(1).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from userspace.event import Kind
from userspace.rtp import Formats

Endpoint = tuple[str, int]


class FlowAction(Enum):
    LEARN = "learn"
    FORGET = "forget"


@dataclass(frozen=True, slots=True)
class FlowEvent:
    action: FlowAction
    address: str
    port: int
    kind: Kind
    call_id: str
    shard: int


@dataclass(frozen=True, slots=True)
class Hold:
    """One call's claim on an endpoint."""

    call_id: str
    kind: Kind
    shard: int
    formats: Formats


class EndpointRegistry:
    def __init__(self) -> None:
        # endpoint -> {call_id: hold}, in the order the calls took it: the last owns it
        self._holders: dict[Endpoint, dict[str, Hold]] = {}

    def __len__(self) -> int:
        """Endpoints held by at least one call: what the flow map should hold."""
        return len(self._holders)

    def owner(self, endpoint: Endpoint) -> Hold | None:
        holders = self._holders.get(endpoint)
        return holders[next(reversed(holders))] if holders else None

    def flow_owner(self, destination: Endpoint, source: Endpoint) -> Hold | None:
        """The hold a media packet from ``source`` to ``destination`` belongs to: the
        destination's owner, unless the source's owner holds the destination too
        (both ends of the flow are that call's, as when a newer call took a shared
        port), else the source's owner. O(1)."""
        to = self._holders.get(destination)
        from_ = self._holders.get(source)
        if not to:
            return from_[next(reversed(from_))] if from_ else None
        owner = to[next(reversed(to))]
        if len(to) > 1 and from_:
            source_owner = next(reversed(from_))
            if source_owner != owner.call_id and source_owner in to:
                return to[source_owner]
        return owner

    def take(self, endpoint: Endpoint, hold: Hold) -> FlowEvent | None:
        """``hold.call_id`` announces ``endpoint``; it owns it from now on."""
        holders = self._holders.setdefault(endpoint, {})
        before = holders[next(reversed(holders))] if holders else None
        holders.pop(hold.call_id, None)  # announced again: it moves to the end, the owner
        holders[hold.call_id] = hold
        if before is not None and (before.kind, before.shard) == (hold.kind, hold.shard):
            return None  # the kernel's entry stays as it is
        return FlowEvent(FlowAction.LEARN, endpoint[0], endpoint[1], hold.kind, hold.call_id, hold.shard)

    def release(self, endpoint: Endpoint, call_id: str) -> FlowEvent | None:
        """``call_id`` ended: the endpoint goes to the newest remaining holder, or is forgotten."""
        holders = self._holders.get(endpoint)
        if holders is None or call_id not in holders:
            return None
        was_owner = next(reversed(holders)) == call_id
        gone = holders.pop(call_id)
        if not holders:
            del self._holders[endpoint]
            return FlowEvent(FlowAction.FORGET, endpoint[0], endpoint[1], gone.kind, call_id, gone.shard)
        owner = holders[next(reversed(holders))]
        if was_owner and (owner.kind, owner.shard) != (gone.kind, gone.shard):
            return FlowEvent(FlowAction.LEARN, endpoint[0], endpoint[1], owner.kind, owner.call_id,
                             owner.shard)
        return None
