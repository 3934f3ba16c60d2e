"""The fleet's signed commands: what a node takes, refuses, and ignores."""

from __future__ import annotations

import json
from typing import Any

import pytest

from otus_ebpf.fleet import envelope
from otus_ebpf.fleet.channel import READ_ONLY_VERBS
from otus_ebpf.fleet.envelope import MAX_COMMAND_BYTES, MAX_SEEN, Judge, Target, Verdict

KEY = b"k" * 32
NOW = 1_800_000_000_000
MAX_AGE_MS = 120_000
TO_B = Target(node="b")


def judge(node: str = "b", groups: tuple[str, ...] = ("eu",), read_only: bool = False) -> Judge:
    return Judge(node, groups, KEY, MAX_AGE_MS, read_only, READ_ONLY_VERBS)


def raw(message: dict[str, Any]) -> bytes:
    return envelope.encode(message)


def cmd(target: Target = TO_B, verb: str = "create", ts_ms: int = NOW, request_id: str = "r1",
        key: bytes = KEY, args: dict[str, Any] | None = None) -> dict[str, Any]:
    return envelope.command(request_id, ts_ms, target, verb, args if args is not None else {"task": "t"}, key)


def test_a_signed_command_for_this_node_is_accepted_once() -> None:
    j = judge()
    first = j.judge(raw(cmd()), NOW)
    assert first.verdict is Verdict.ACCEPTED and first.command is not None
    assert (first.command.id, first.command.cmd, first.command.args) == ("r1", "create", {"task": "t"})
    assert j.judge(raw(cmd()), NOW + 1).verdict is Verdict.REPLAYED


@pytest.mark.parametrize(("target", "verdict"), [
    (Target(node="b"), Verdict.ACCEPTED), (Target(node="a"), Verdict.OTHERS),
    (Target(group="eu"), Verdict.ACCEPTED), (Target(group="us"), Verdict.OTHERS),
    (Target(everyone=True), Verdict.ACCEPTED)])
def test_the_target_decides_who_takes_it(target: Target, verdict: Verdict) -> None:
    assert judge().judge(raw(cmd(target)), NOW).verdict is verdict


def test_a_forged_command_is_refused_and_answerable() -> None:
    forged = cmd(key=b"x" * 32)
    judged = judge().judge(raw(forged), NOW)
    assert judged.verdict is Verdict.FORGED and judged.command is not None and judged.command.id == "r1"


def test_a_command_changed_after_signing_is_refused() -> None:
    tampered = {**cmd(), "args": {"task": "other"}}
    assert judge().judge(raw(tampered), NOW).verdict is Verdict.FORGED


def test_an_unsigned_command_is_refused() -> None:
    unsigned = {k: v for k, v in cmd().items() if k != "sig"}
    assert judge().judge(raw(unsigned), NOW).verdict is Verdict.UNSIGNED


@pytest.mark.parametrize("skew_ms", [MAX_AGE_MS + 1, -(MAX_AGE_MS + 1), NOW])
def test_old_and_future_commands_are_stale(skew_ms: int) -> None:
    assert judge().judge(raw(cmd(ts_ms=NOW - skew_ms)), NOW).verdict is Verdict.STALE


def test_a_forged_command_does_not_spend_its_request_id() -> None:
    """Else an attacker could send forged commands with the ids of commands to come."""
    j = judge()
    assert j.judge(raw(cmd(key=b"x" * 32)), NOW).verdict is Verdict.FORGED
    assert j.judge(raw(cmd()), NOW).verdict is Verdict.ACCEPTED


def test_a_read_only_node_answers_reads_and_refuses_changes() -> None:
    j = judge(read_only=True)
    assert j.judge(raw(cmd(verb="status", request_id="r1")), NOW).verdict is Verdict.ACCEPTED
    for n, verb in enumerate(("create", "delete", "pause", "resume", "reload")):
        judged = j.judge(raw(cmd(verb=verb, request_id=f"w{n}")), NOW)
        assert judged.verdict is Verdict.READ_ONLY and verb in judged.why


@pytest.mark.parametrize("value", [
    b"", b"not json", b"[1, 2]", b"null", b"{" * 100_000, b"1e999", b'{"target": 1}',
    b'{"target": {"node": "b", "group": "x"}}', b'{"target": {"all": 1}}',
    b'{"target": {"node": "\\u0000"}}', b'{"target": {"node": ""}}', b"\xff\xfe",
    b'{"target": {"node": "b"}}' + b" " * MAX_COMMAND_BYTES])
def test_what_is_not_a_command_is_malformed_never_an_exception(value: bytes) -> None:
    assert judge().judge(value, NOW).verdict is Verdict.MALFORMED


@pytest.mark.parametrize(("field", "value"), [
    ("v", 2), ("id", ""), ("id", "x" * 129), ("id", "a b"), ("id", 5), ("ts_ms", "now"), ("ts_ms", True),
    ("ts_ms", -1), ("ts_ms", 1 << 60), ("cmd", ""), ("cmd", None), ("args", [1])])
def test_a_command_of_the_wrong_shape_is_malformed(field: str, value: Any) -> None:
    message = envelope.sign({**cmd(), field: value}, KEY)
    assert judge().judge(raw(message), NOW).verdict is Verdict.MALFORMED


def test_no_value_is_malformed() -> None:
    assert judge().judge(None, NOW).verdict is Verdict.MALFORMED


def test_a_nan_or_a_key_given_twice_is_malformed() -> None:
    """json.loads takes NaN and keeps the last of two keys: neither may reach the signature check."""
    text = json.dumps({**cmd(), "args": {"x": float("nan")}}).encode()
    assert judge().judge(text, NOW).verdict is Verdict.MALFORMED
    body = raw(cmd())
    twice = body[:-1] + b',"target":{"node":"a"}}'
    assert judge().judge(twice, NOW).verdict is Verdict.MALFORMED


def test_refusals_of_unsigned_commands_to_many_nodes_are_not_answered() -> None:
    """One unsigned message to all must not make every node publish an answer."""
    unsigned = {k: v for k, v in cmd(Target(everyone=True)).items() if k != "sig"}
    judged = judge().judge(raw(unsigned), NOW)
    assert (judged.verdict, judged.command) == (Verdict.UNSIGNED, None)
    forged = judge().judge(raw(cmd(Target(group="eu"), key=b"x" * 32)), NOW)
    assert (forged.verdict, forged.command) == (Verdict.FORGED, None)
    named = judge().judge(raw({k: v for k, v in cmd().items() if k != "sig"}), NOW)
    assert named.command is not None, "to this node by name: answered"


def test_a_verb_is_short_and_plain_so_a_refusal_never_echoes_a_megabyte() -> None:
    for verb in ("x" * 33, "\ud800", "DELETE", "a b"):
        message = {**cmd(), "cmd": verb}
        judged = judge().judge(raw(message), NOW)
        assert judged.verdict is Verdict.MALFORMED and judged.command is not None and judged.command.cmd == ""


def test_an_answer_or_a_heartbeat_is_not_a_command() -> None:
    """Every message is signed with the one key: its kind is signed too."""
    judged = judge().judge(raw(cmd()), NOW)
    assert judged.command is not None
    answer = envelope.answer(judged.command, "b", NOW, {"ok": True, "target": {"node": "b"}, "args": {}}, KEY)
    assert judge().judge(raw(answer), NOW).verdict is Verdict.MALFORMED


def test_the_seen_ids_are_bounded() -> None:
    j = judge()
    for n in range(MAX_SEEN + 10):
        assert j.judge(raw(cmd(request_id=f"r{n}")), NOW).verdict is Verdict.ACCEPTED
    assert len(j._seen) <= MAX_SEEN


def test_ids_are_forgotten_once_a_replay_would_be_stale_anyway() -> None:
    j = judge()
    j.judge(raw(cmd(request_id="old")), NOW)
    later = NOW + 3 * MAX_AGE_MS
    j.judge(raw(cmd(request_id="new", ts_ms=later)), later)
    assert list(j._seen) == ["new"]
    assert j.judge(raw(cmd(request_id="old")), later).verdict is Verdict.STALE


def test_the_signature_covers_a_canonical_form_any_language_can_make() -> None:
    """Keys sorted, no spaces, UTF-8 as is: a signer in another language gets the same bytes."""
    message = {"b": 1, "a": {"y": "é", "x": [1, 2]}, "sig": "ignored"}
    assert envelope.canonical(message) == '{"a":{"x":[1,2],"y":"é"},"b":1}'.encode()
    reordered = json.loads(json.dumps(dict(reversed(list(cmd().items())))))
    assert envelope.signed_by(reordered, KEY)


def test_answers_are_signed_and_keep_their_identity() -> None:
    judged = judge().judge(raw(cmd()), NOW)
    assert judged.command is not None
    answer = envelope.answer(judged.command, "b", NOW, {"ok": True, "id": "spoofed", "node": "z"}, KEY)
    assert (answer["id"], answer["node"], answer["cmd"]) == ("r1", "b", "create")
    assert envelope.signed_by(answer, KEY) and not envelope.signed_by(answer, b"y" * 32)
