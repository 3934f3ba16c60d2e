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
_VERB = re.compile(r"[a-z_]{1,32}")  # echoed in answers: nothing a sender could make large or odd
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,256}")  # a node or group: printable, bounded


class Verdict(Enum):
    """What a node does with a command; each is counted (otus_fleet_commands_total)."""

    ACCEPTED = "accepted"
    OTHERS = "for_others"          # addressed to other nodes: not ours to judge
    MALFORMED = "malformed"        # not a command (answered when addressed to this node by name)
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
    """The wire form: ASCII (``\\u`` escapes), so that any text encodes; the signature
    covers the canonical form, which the reader makes again from what it decodes."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def command(request_id: str, ts_ms: int, target: Target, cmd: str, args: dict[str, Any],
            key: bytes) -> dict[str, Any]:
    return sign({"v": FORMAT, "kind": "command", "id": request_id, "ts_ms": ts_ms,
                 "target": target.to_json(), "cmd": cmd, "args": args}, key)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """One value per key: with two, a reader could act on one while another checked the other."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key given twice")
    return found


def decode(raw: bytes | None) -> dict[str, Any] | str:
    """A JSON object from the wire, or why it is not one."""
    if raw is None:
        return "no value"
    if len(raw) > MAX_COMMAND_BYTES:
        return f"larger than {MAX_COMMAND_BYTES} bytes"
    try:
        message = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        return "not JSON (or a key given twice, or NaN)"
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
    if message.get("v") != FORMAT or message.get("kind") != "command":
        return f"not a command of format {FORMAT}"
    if not isinstance(request_id, str) or not _ID.fullmatch(request_id):
        return f"id: 1 to {MAX_ID_LENGTH} of letters, digits and . _ : -"
    if not isinstance(ts_ms, int) or isinstance(ts_ms, bool) or not 0 <= ts_ms < 1 << 53:
        return "ts_ms: milliseconds since the epoch"
    if not isinstance(cmd, str) or not _VERB.fullmatch(cmd):
        return "cmd: a verb (1 to 32 of a-z and _)"
    if not isinstance(args, dict):
        return "args: an object"
    return Command(request_id, ts_ms, target, cmd, args)


class Judge:
    """Decides for one node what each command on the topic is, remembering the
    request ids it took (bounded: MAX_SEEN, and only as long as max_age makes a
    replay possible)."""

    def __init__(self, node: str, groups: tuple[str, ...], key: bytes, max_age_ms: int,
                 read_only: bool, read_only_verbs: frozenset[str],
                 taken: dict[str, int] | None = None) -> None:
        self._node, self._groups, self._key = node, groups, key
        self._max_age_ms = max_age_ms
        self._read_only = read_only
        self._read_only_verbs = read_only_verbs
        # request id -> when taken (ms); ``taken`` carries them over a restart
        self._seen: OrderedDict[str, int] = OrderedDict(sorted((taken or {}).items(), key=lambda kv: kv[1]))

    def taken(self) -> dict[str, int]:
        """The request ids remembered now, to be kept over a restart."""
        return dict(self._seen)

    def judge(self, raw: bytes | None, now_ms: int) -> Judged:
        message = decode(raw)
        if isinstance(message, str):
            return Judged(Verdict.MALFORMED, why=message)
        target = target_of(message.get("target"))
        if target is None:
            return Judged(Verdict.MALFORMED, why='target: {"node": N}, {"group": G} or {"all": true}')
        if not target.matches(self._node, self._groups):
            return Judged(Verdict.OTHERS)
        # Refusals of what is not signed are answered only to commands naming this node:
        # one unsigned message to all must not make every node publish an answer.
        named = target.node == self._node
        shaped = _shape(message, target)
        if isinstance(shaped, str):
            return Judged(Verdict.MALFORMED, _answerable(message, target) if named else None, shaped)
        if "sig" not in message:
            return Judged(Verdict.UNSIGNED, shaped if named else None, "unsigned command refused")
        if not signed_by(message, self._key):
            return Judged(Verdict.FORGED, shaped if named else None,
                          "signature does not match this fleet's key")
        age_s = (now_ms - shaped.ts_ms) / 1000
        if abs(age_s) * 1000 > self._max_age_ms:
            when = f"{age_s:.0f} s ago" if age_s > 0 else f"{-age_s:.0f} s ahead of this node's clock"
            bound = f"{self._max_age_ms / 1000:.0f} s"
            return Judged(Verdict.STALE, shaped, f"sent {when}, past the {bound} bound")
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
    request_id, cmd = message.get("id"), message.get("cmd")
    if isinstance(request_id, str) and _ID.fullmatch(request_id):
        verb = cmd if isinstance(cmd, str) and _VERB.fullmatch(cmd) else ""
        return Command(request_id, 0, target, verb, {})
    return None


def answer(command: Command, node: str, ts_ms: int, body: dict[str, Any], key: bytes) -> dict[str, Any]:
    """A node's signed answer to a command: the control socket's answer, with who and what."""
    fixed = {"v": FORMAT, "kind": "answer", "id": command.id, "node": node, "ts_ms": ts_ms,
             "cmd": command.cmd}
    return sign({**body, **fixed}, key)
