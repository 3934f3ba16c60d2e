"""The fleet's messages on Kafka, signed: commands, their answers, heartbeats.

Every message is one JSON object with a ``sig``: the hex HMAC-SHA256, under
the fleet's shared key, of the object without ``sig`` in canonical form
(keys sorted, no whitespace, UTF-8, no NaN; docs/FLEET.md). A command names
who it is for (``target``: a node, a group, or all), the verb and its
arguments, a request id, and the time it was sent; a node takes it only if
it is addressed to it, signed with the key, younger than ``max_age``, and
not seen before. Sans-IO: the caller gives the bytes and the time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any

FORMAT = 1
MAX_COMMAND_BYTES = 1 << 20      # a task definition is a few KiB; far past it is not a command
MAX_ID_LENGTH = 128              # a UUID is 32-36; room for an operator's own scheme
MIN_KEY_BYTES = 16               # HMAC-SHA256 keys shorter than this are guessable
MAX_SEEN = 65_536                # request ids remembered (commands are rare: minutes of a flood)
_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_ID_LENGTH}}}")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,256}")  # a node or group: printable, bounded


class Verdict(Enum):
    """What a node does with a command; each is counted (otus_fleet_commands_total)."""

    ACCEPTED = "accepted"
    OTHERS = "for_others"          # addressed to other nodes: not ours to judge
    MALFORMED = "malformed"        # not a command (answered if its target could be read and matches)
    UNSIGNED = "unsigned"
    FORGED = "bad_signature"
    STALE = "stale"                # older (or further in the future) than max_age
    REPLAYED = "replayed"          # a request id already taken: ignored, not answered again
    READ_ONLY = "read_only"        # a verb that changes something, on a read-only node


@dataclass(frozen=True, slots=True)
class Target:
    node: str | None = None
    group: str | None = None
    everyone: bool = False

    def matches(self, node: str, groups: tuple[str, ...]) -> bool:
        return self.everyone or self.node == node or (self.group is not None and self.group in groups)

    def to_json(self) -> dict[str, Any]:
        if self.everyone:
            return {"all": True}
        return {"node": self.node} if self.node is not None else {"group": self.group}


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    ts_ms: int
    target: Target
    cmd: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Judged:
    verdict: Verdict
    command: Command | None = None   # when it could be read: the one to run or to answer
    why: str = ""                    # one line, for the answer and the debug log


def canonical(message: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the message without ``sig``, keys sorted, compact."""
    body = {k: v for k, v in message.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def sign(message: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The message with its ``sig``."""
    return {**message, "sig": hmac.new(key, canonical(message), hashlib.sha256).hexdigest()}


def signed_by(message: dict[str, Any], key: bytes) -> bool:
    sig = message.get("sig")
    if not isinstance(sig, str):
        return False
    try:
        expected = hmac.new(key, canonical(message), hashlib.sha256).hexdigest()
    except ValueError:  # NaN or infinity: nothing we sign
        return False
    return hmac.compare_digest(sig.encode(), expected.encode())


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def command(request_id: str, ts_ms: int, target: Target, cmd: str, args: dict[str, Any],
            key: bytes) -> dict[str, Any]:
    return sign({"v": FORMAT, "id": request_id, "ts_ms": ts_ms, "target": target.to_json(), "cmd": cmd,
                 "args": args}, key)


def decode(raw: bytes | None) -> dict[str, Any] | str:
    """A JSON object from the wire, or why it is not one."""
    if raw is None:
        return "no value"
    if len(raw) > MAX_COMMAND_BYTES:
        return f"larger than {MAX_COMMAND_BYTES} bytes"
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        return "not JSON"
    return message if isinstance(message, dict) else "not a JSON object"


def target_of(value: Any) -> Target | None:
    if not isinstance(value, dict) or len(value) != 1:
        return None
    (kind, name), = value.items()
    if kind == "all" and name is True:
        return Target(everyone=True)
    if kind in ("node", "group") and isinstance(name, str) and _NAME.fullmatch(name):
        return Target(node=name) if kind == "node" else Target(group=name)
    return None


def _shape(message: dict[str, Any], target: Target) -> Command | str:
    request_id, ts_ms, cmd, args = (message.get(k) for k in ("id", "ts_ms", "cmd", "args"))
    if message.get("v") != FORMAT:
        return f"format {message.get('v')!r}, this node reads {FORMAT}"
    if not isinstance(request_id, str) or not _ID.fullmatch(request_id):
        return f"id: 1 to {MAX_ID_LENGTH} of letters, digits and . _ : -"
    if not isinstance(ts_ms, int) or isinstance(ts_ms, bool) or not 0 <= ts_ms < 1 << 53:
        return "ts_ms: milliseconds since the epoch"
    if not isinstance(cmd, str) or not cmd:
        return "cmd: a verb"
    if not isinstance(args, dict):
        return "args: an object"
    return Command(request_id, ts_ms, target, cmd, args)


class Judge:
    """Decides for one node what each command on the topic is, remembering the
    request ids it took (bounded: MAX_SEEN, and only as long as max_age makes a
    replay possible)."""

    def __init__(self, node: str, groups: tuple[str, ...], key: bytes, max_age_ms: int,
                 read_only: bool, read_only_verbs: frozenset[str]) -> None:
        self._node, self._groups, self._key = node, groups, key
        self._max_age_ms = max_age_ms
        self._read_only = read_only
        self._read_only_verbs = read_only_verbs
        self._seen: OrderedDict[str, int] = OrderedDict()  # request id -> when taken (ms)

    def judge(self, raw: bytes | None, now_ms: int) -> Judged:
        message = decode(raw)
        if isinstance(message, str):
            return Judged(Verdict.MALFORMED, why=message)
        target = target_of(message.get("target"))
        if target is None:
            return Judged(Verdict.MALFORMED, why='target: {"node": N}, {"group": G} or {"all": true}')
        if not target.matches(self._node, self._groups):
            return Judged(Verdict.OTHERS)
        shaped = _shape(message, target)
        if isinstance(shaped, str):
            return Judged(Verdict.MALFORMED, _answerable(message, target), shaped)
        if "sig" not in message:
            return Judged(Verdict.UNSIGNED, shaped, "unsigned command refused")
        if not signed_by(message, self._key):
            return Judged(Verdict.FORGED, shaped, "signature does not match this fleet's key")
        if abs(now_ms - shaped.ts_ms) > self._max_age_ms:
            return Judged(Verdict.STALE, shaped, f"sent {(now_ms - shaped.ts_ms) / 1000:.0f} s from now, "
                                                 f"past the {self._max_age_ms / 1000:.0f} s bound")
        self._forget_old(now_ms)
        if shaped.id in self._seen:
            return Judged(Verdict.REPLAYED, shaped)
        self._seen[shaped.id] = now_ms
        if self._read_only and shaped.cmd not in self._read_only_verbs:
            allowed = ", ".join(sorted(self._read_only_verbs))
            return Judged(Verdict.READ_ONLY, shaped,
                          f"read-only node: {shaped.cmd!r} refused (allowed: {allowed})")
        return Judged(Verdict.ACCEPTED, shaped)

    def _forget_old(self, now_ms: int) -> None:
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if now_ms - oldest <= 2 * self._max_age_ms and len(self._seen) < MAX_SEEN:
                return
            self._seen.popitem(last=False)


def _answerable(message: dict[str, Any], target: Target) -> Command | None:
    """A malformed command is answered when its id can carry the answer."""
    request_id = message.get("id")
    if isinstance(request_id, str) and _ID.fullmatch(request_id):
        return Command(request_id, 0, target, str(message.get("cmd", ""))[:64], {})
    return None


def answer(command: Command, node: str, ts_ms: int, body: dict[str, Any], key: bytes) -> dict[str, Any]:
    """A node's signed answer to a command: the control socket's answer, with who and what."""
    fixed = {"v": FORMAT, "id": command.id, "node": node, "ts_ms": ts_ms, "cmd": command.cmd}
    return sign({**body, **fixed}, key)
