"""Media endpoints the live calls announced, shared and reference-counted.

Two calls may announce one endpoint (a media server's port reused, a
transfer, a re-INVITE to the same SBC address). Each endpoint is held by
every call that announced it; the newest holder owns it — its media is
attributed to that call, with that call's SDP formats, unless the other end
of the flow is an older holder's own — and it is forgotten only when its
last holder ends. ``take`` and ``release`` return the change
the kernel's flow map must make, if any (``FlowEvent``), and cost O(1).

The kernel's flow key holds the tunnel kind the endpoint was announced in
(``Hold.tunnel``): one address:port announced plain by one call and inside a
VXLAN by another is two kernel entries. So the registry keeps the holds twice:
by endpoint, for which call a media packet belongs to, and by kernel key
(``Holders`` keyed by ``FlowKey``), for the entries' learns and forgets — each
kernel entry is forgotten when the last call that announced the endpoint in
that kind of tunnel ends, whatever the other kinds' holders do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from userspace.event import Kind
from userspace.kernel_streams import Clocks
from userspace.rtp import Formats

Endpoint = tuple[bytes, int]  # raw address (4 or 16 bytes), port: the one endpoint type
FlowKey = tuple[bytes, int, int]  # an endpoint and the TunnelCode it was announced in: a kernel entry
Key = Endpoint | FlowKey


class FlowAction(Enum):
    LEARN = "learn"
    FORGET = "forget"


@dataclass(frozen=True, slots=True)
class FlowEvent:
    action: FlowAction
    address: bytes  # raw, as the kernel's flow key holds it
    port: int
    kind: Kind
    call_id: str
    shard: int
    owner: int = 0        # the call's tag: the kernel keys the endpoint's streams by it
    clocks: Clocks = ()   # payload types whose clock the kernel must know (kernel_streams.clock_table)
    tunnel: int = 0       # the TunnelCode of the tunnel it was announced in: matched inside that kind only


@dataclass(frozen=True, slots=True)
class Hold:
    """One call's claim on an endpoint."""

    call_id: str
    kind: Kind
    shard: int
    formats: Formats          # what its SDP said this endpoint receives
    caller_side: bool = True  # announced by the caller's side of the call, or the callee's
    owner: int = 0            # what the kernel's entry carries for it (FlowEvent)
    clocks: Clocks = ()
    tunnel: int = 0           # the TunnelCode its SDP came in (FlowEvent)

    @property
    def entry(self) -> tuple[Kind, int, int, Clocks]:
        """What the kernel's flow entry holds for this hold: a change of any is a write."""
        return self.kind, self.shard, self.owner, self.clocks

    def event(self, action: FlowAction, endpoint: Key) -> FlowEvent:
        return FlowEvent(action, endpoint[0], endpoint[1], self.kind, self.call_id, self.shard, self.owner,
                         self.clocks, self.tunnel)


class _Shared:
    """The holds of an endpoint more than one call announced, and the order the
    calls took it in. The order is a list with stale entries skipped lazily, so
    that finding the owner after any release costs O(1) amortised — the dict's
    own order could not give that (it walks the slots of popped entries)."""

    __slots__ = ("holds", "order", "takes")

    def __init__(self) -> None:
        self.holds: dict[str, tuple[Hold, int]] = {}  # call -> (its hold, its take number)
        self.order: list[tuple[int, str]] = []         # (take number, call), oldest first
        self.takes = 0

    def add(self, hold: Hold) -> None:
        self.takes += 1
        self.holds[hold.call_id] = (hold, self.takes)
        self.order.append((self.takes, hold.call_id))
        self._trim()

    def remove(self, call_id: str) -> None:
        del self.holds[call_id]
        self._trim()

    def _trim(self) -> None:
        """Drop stale entries once they are as many as the live ones: O(1) amortised."""
        if len(self.order) > 2 * len(self.holds) + _SLACK:
            self.order = [(n, call) for n, call in self.order if self._current(n, call)]

    def owner(self) -> Hold:
        order = self.order
        while True:
            n, call = order[-1]
            entry = self.holds.get(call)
            if entry is not None and entry[1] == n:
                return entry[0]
            order.pop()  # released, or taken again later: each entry is passed over once

    def get(self, call_id: str) -> Hold | None:
        entry = self.holds.get(call_id)
        return None if entry is None else entry[0]

    def _current(self, n: int, call: str) -> bool:
        entry = self.holds.get(call)
        return entry is not None and entry[1] == n


_SLACK = 16
_Held = Hold | _Shared  # one call's hold (nearly always), or several


def _owner(held: _Held) -> Hold:
    return held if isinstance(held, Hold) else held.owner()


class Holders:
    """The holds of each key: an endpoint (who owns it), or a kernel entry (FlowKey)."""

    def __init__(self) -> None:
        self._holders: dict[Key, _Held] = {}

    def __len__(self) -> int:
        """Keys held by at least one holder."""
        return len(self._holders)

    def get(self, endpoint: Key, call_id: str) -> Hold | None:
        """``call_id``'s hold on ``endpoint``, if any."""
        held = self._holders.get(endpoint)
        if held is None:
            return None
        if isinstance(held, Hold):
            return held if held.call_id == call_id else None
        return held.get(call_id)

    def owner(self, endpoint: Key) -> Hold | None:
        held = self._holders.get(endpoint)
        return None if held is None else _owner(held)

    def holders(self, endpoint: Key) -> int:
        held = self._holders.get(endpoint)
        return 0 if held is None else 1 if isinstance(held, Hold) else len(held.holds)

    def flow_owner(self, destination: Endpoint, source: Endpoint) -> tuple[Hold | None, bool]:
        """The hold a media packet from ``source`` to ``destination`` belongs to, and
        whether it is the destination's: the destination's owner, unless the source's
        owner holds the destination too (both ends of the flow are that call's, as
        when a newer call took a shared port), else the source's owner. O(1)."""
        to = self._holders.get(destination)
        from_ = self._holders.get(source)
        if to is None:
            return (None if from_ is None else _owner(from_)), False
        owner = _owner(to)
        if from_ is not None and isinstance(to, _Shared):
            source_owner = _owner(from_).call_id
            if source_owner != owner.call_id:
                return (to.get(source_owner) or owner), True
        return owner, True

    def take(self, endpoint: Key, hold: Hold) -> FlowEvent | None:
        """``hold.call_id`` announces ``endpoint``; it owns it from now on."""
        held = self._holders.get(endpoint)
        if held is None:
            self._holders[endpoint] = hold
            return hold.event(FlowAction.LEARN, endpoint)
        before = _owner(held)
        if isinstance(held, _Shared):
            held.add(hold)
        elif held.call_id == hold.call_id:
            self._holders[endpoint] = hold  # announced again by its only holder
        else:
            shared = self._holders[endpoint] = _Shared()
            shared.add(held)
            shared.add(hold)
        if before.entry == hold.entry:
            return None  # the kernel's entry stays as it is
        return hold.event(FlowAction.LEARN, endpoint)

    def release(self, endpoint: Key, call_id: str) -> FlowEvent | None:
        """``call_id`` ended: the endpoint goes to the newest remaining holder, or is forgotten."""
        held = self._holders.get(endpoint)
        if held is None:
            return None
        if isinstance(held, Hold):
            if held.call_id != call_id:
                return None
            del self._holders[endpoint]
            return held.event(FlowAction.FORGET, endpoint)
        gone = held.get(call_id)
        if gone is None:
            return None
        was_owner = held.owner().call_id == call_id
        held.remove(call_id)
        owner = held.owner()
        if len(held.holds) == 1:
            self._holders[endpoint] = owner  # one holder left: back to the plain form
        if was_owner and owner.entry != gone.entry:
            return owner.event(FlowAction.LEARN, endpoint)
        return None


class EndpointRegistry:
    """The calls' holds by endpoint (media attribution) and by kernel entry (FlowKey:
    the endpoint and its tunnel kind), taken and released together."""

    def __init__(self) -> None:
        self._endpoints = Holders()
        self._entries = Holders()

    def __len__(self) -> int:
        """Kernel entries held by at least one call: what the flow map should hold."""
        return len(self._entries)

    def owner(self, endpoint: Endpoint) -> Hold | None:
        return self._endpoints.owner(endpoint)

    def holders(self, endpoint: Endpoint) -> int:
        return self._endpoints.holders(endpoint)

    def flow_owner(self, destination: Endpoint, source: Endpoint) -> tuple[Hold | None, bool]:
        return self._endpoints.flow_owner(destination, source)

    def take(self, endpoint: Endpoint, hold: Hold) -> FlowEvent | None:
        """``hold.call_id`` announces ``endpoint`` (in ``hold.tunnel``); it owns it from now on.
        A call's holds keep the tunnel it first announced the endpoint in (a call's SDP comes
        in one place: CallTracker takes the kind from the call's origin), so that its release
        finds the entry it took."""
        before = self._endpoints.get(endpoint, hold.call_id)
        if before is not None and before.tunnel != hold.tunnel:
            hold = replace(hold, tunnel=before.tunnel)
        self._endpoints.take(endpoint, hold)
        return self._entries.take((endpoint[0], endpoint[1], hold.tunnel), hold)

    def release(self, endpoint: Endpoint, call_id: str) -> FlowEvent | None:
        """``call_id`` ended: the endpoint's entry goes to the newest remaining holder in its
        tunnel kind, or is forgotten."""
        hold = self._endpoints.get(endpoint, call_id)
        if hold is None:
            return None
        self._endpoints.release(endpoint, call_id)
        return self._entries.release((endpoint[0], endpoint[1], hold.tunnel), call_id)
