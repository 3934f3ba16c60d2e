"""The daemon's verbs, one implementation for every way they arrive: the
control socket (otus_ebpf.control.server) and the fleet's Kafka channel
(otus_ebpf.fleet.channel). A request is a JSON object with a ``cmd``; the
answer is {"ok": true, ...} or {"ok": false, "error": "one line"}, whatever
goes wrong in the handler. ``origin`` says where the request came from
("socket", or "kafka REQUEST-ID"): stored tasks keep it, and a few verbs
take some arguments only from the socket."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from otus_ebpf import logs
from otus_ebpf.errors import SetupError

SOCKET = "socket"
Handler = Callable[[dict[str, Any], str], dict[str, Any]]
_log = logs.get(__name__)


# What a live view asks every second or faster: not logged, even at debug (the agent's view
# shows the agent's log lines, so each poll would log the next one's answer).
_POLLED = frozenset({"samples", "calls", "call", "log"})


def error(text: str) -> dict[str, Any]:
    return {"ok": False, "error": text.splitlines()[0] if text.strip() else "error"}


class Commands:
    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)

    @property
    def verbs(self) -> tuple[str, ...]:
        return tuple(sorted(self._handlers))

    def answer(self, request: dict[str, Any], origin: str = SOCKET) -> dict[str, Any]:
        cmd = request.get("cmd")
        if not isinstance(cmd, str):
            return error('a request is a JSON object with a "cmd"')
        handler = self._handlers.get(cmd)
        if handler is None:
            return error(f"unknown command {cmd!r} (known: {', '.join(self.verbs)})")
        if cmd not in _POLLED:
            _log.debug(f"{origin}: {cmd!r}")
        try:
            return {"ok": True, **handler(request, origin)}
        except (ValueError, SetupError, KeyError) as exc:
            return error(str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug in a handler: answered and logged, the daemon goes on
            _log.error(f"{origin}: {cmd!r} failed: {type(exc).__name__}: {exc}",
                       exc_info=_log.isEnabledFor(logging.DEBUG))
            return error(f"internal error: {type(exc).__name__}: {exc}")
