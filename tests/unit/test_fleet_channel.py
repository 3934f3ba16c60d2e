"""The daemon's end of the fleet, without a broker: what each command on the
topic leads to (the verb run, an answer, a refusal, nothing), counted; and
heartbeats that say what runs. A broker's part is in
tests/integration/test_fleet_live.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from otus_ebpf.fleet import envelope
from otus_ebpf.fleet.channel import FleetChannel
from otus_ebpf.fleet.envelope import Target
from otus_ebpf.fleet.settings import FleetSettings

KEY = b"k" * 32
NOW = 1_800_000_000_000
TO_B = Target(node="b")


class FakeMessage:
    def __init__(self, value: bytes | None) -> None:
        self._value = value

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self._value


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, key, json.loads(value)))

    def poll(self, _timeout: float) -> int:
        return 0


class FakeConsumer:
    def __init__(self) -> None:
        self.committed = 0

    def commit(self, message: FakeMessage, asynchronous: bool) -> None:
        self.committed += 1


def channel(answer: Any, read_only: bool = False) -> tuple[FleetChannel, FakeProducer, FakeConsumer]:
    settings = FleetSettings("unused:9092", "b", KEY, ("eu",), read_only=read_only)
    tasks = {"tasks": [{"name": "t", "state": "running"}]}
    made = FleetChannel(settings, answer, lambda: tasks, clock=lambda: NOW)
    producer, consumer = FakeProducer(), FakeConsumer()
    made._producer, made._consumer = producer, consumer  # type: ignore[assignment]
    return made, producer, consumer


def command(verb: str, request_id: str, target: Target = TO_B, key: bytes = KEY,
            **args: Any) -> FakeMessage:
    return FakeMessage(envelope.encode(envelope.command(request_id, NOW, target, verb, args, key)))


def test_an_accepted_command_runs_its_verb_once_and_is_answered_signed() -> None:
    asked: list[tuple[dict[str, Any], str]] = []

    def answer(request: dict[str, Any], origin: str) -> dict[str, Any]:
        asked.append((request, origin))
        return {"ok": True}

    made, producer, consumer = channel(answer)
    made._take(command("pause", "r1", task="t", cmd="ignored"))  # type: ignore[arg-type]
    made._take(command("pause", "r1", task="t"))  # type: ignore[arg-type]
    assert asked == [({"task": "t", "cmd": "pause"}, "kafka r1")], "args cannot change the verb"
    (topic, key, body), = producer.sent
    assert (topic, key, body["node"], body["id"], body["ok"]) == ("otus-responses", b"r1", "b", "r1", True)
    assert envelope.signed_by(body, KEY)
    assert made.figures()["commands"] == {"accepted": 1, "replayed": 1} and consumer.committed == 2


def test_refusals_are_answered_and_others_commands_are_not() -> None:
    made, producer, _ = channel(lambda request, origin: {"ok": True}, read_only=True)
    made._take(command("create", "forged", key=b"x" * 32))  # type: ignore[arg-type]
    made._take(command("create", "ro"))  # type: ignore[arg-type]
    made._take(command("create", "theirs", Target(node="a")))  # type: ignore[arg-type]
    made._take(FakeMessage(b"\x00garbage"))  # type: ignore[arg-type]
    made._take(FakeMessage(None))  # type: ignore[arg-type]
    answered = {a["id"]: a["error"] for _t, _k, a in producer.sent}
    assert set(answered) == {"forged", "ro"} and "read-only" in answered["ro"]
    assert made.figures()["commands"] == {"bad_signature": 1, "read_only": 1, "for_others": 1, "malformed": 2}


def test_an_answer_json_cannot_carry_becomes_a_signed_refusal() -> None:
    made, producer, _ = channel(lambda request, origin: {"ok": True, "mos": float("nan")})
    made._take(command("stats", "r2"))  # type: ignore[arg-type]
    (_topic, _key, answer), = producer.sent
    assert answer["ok"] is False and envelope.signed_by(answer, KEY)


def test_heartbeats_carry_the_tasks_and_the_last_one_says_stopped() -> None:
    made, producer, _ = channel(lambda request, origin: {"ok": True})
    made._heartbeat("running")
    made._heartbeat("stopped")
    (_t1, key, running), (_t2, _k, stopped) = producer.sent
    assert key == b"b" and running["tasks"] == [{"name": "t", "state": "running"}]
    assert (stopped["state"], "tasks" in stopped) == ("stopped", False)
    assert all(envelope.signed_by(beat, KEY) for beat in (running, stopped))
    assert "k" * 32 not in json.dumps(running), "the key is never sent"


def test_the_request_ids_taken_are_kept_over_a_restart(tmp_path: Path) -> None:
    """Run, then killed before the offset was committed: the command comes again and is not run."""
    taken = str(tmp_path / "fleet-taken.json")
    runs: list[str] = []

    def answer(request: dict[str, Any], origin: str) -> dict[str, Any]:
        runs.append(origin)
        return {"ok": True}

    for _restart in range(2):
        settings = FleetSettings("unused:9092", "b", KEY, taken_file=taken)
        made = FleetChannel(settings, answer, dict, clock=lambda: NOW)
        made._producer, made._consumer = FakeProducer(), FakeConsumer()  # type: ignore[assignment]
        made._take(command("delete", "r7", task="t"))  # type: ignore[arg-type]
    assert runs == ["kafka r7"]
    assert made.figures()["commands"] == {"replayed": 1}
    (tmp_path / "fleet-taken.json").write_text("{damaged")
    fresh = FleetChannel(FleetSettings("unused:9092", "b", KEY, taken_file=taken), answer, dict)
    assert fresh._judge.taken() == {}, "a damaged file is no reason not to start"
