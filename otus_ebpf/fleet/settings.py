"""What a daemon needs to join a fleet: the broker, the topics, its name and
groups, the shared key, and how strict to be. The keys are declared with every
other setting (otus_ebpf.control.settings, ``control.kafka``)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from otus_ebpf.fleet.envelope import MIN_KEY_BYTES
from otus_ebpf.secret import read_secret

COMMAND_TOPIC = "otus-commands"
RESPONSE_TOPIC = "otus-responses"
STATUS_TOPIC = "otus-status"
TAKEN_FILE = "fleet-taken.json"  # in state.dir: the request ids taken, kept over a restart


@dataclass(frozen=True, slots=True)
class FleetSettings:
    brokers: str
    node: str
    key: bytes = field(repr=False)
    groups: tuple[str, ...] = ()
    command_topic: str = COMMAND_TOPIC
    response_topic: str = RESPONSE_TOPIC
    status_topic: str = STATUS_TOPIC
    read_only: bool = False
    max_age_s: float = 120.0
    heartbeat_s: float = 10.0
    # Where the request ids taken are kept over a restart (state.dir/fleet-taken.json); None: memory only.
    taken_file: str | None = None
    # librdkafka's security settings for this broker (security.protocol, sasl.*, ssl.*).
    security: dict[str, str] = field(default_factory=dict, repr=False)


def read_key(path: str) -> bytes:
    """The shared key from its file: only its owner may read it (as ssh asks of a
    private key), at least MIN_KEY_BYTES. ValueError naming what is wrong."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ValueError(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): "
                         f"chmod 600 {path}")
    key = read_secret(path).encode()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{path} holds {len(key)} bytes: a fleet key needs at least {MIN_KEY_BYTES}")
    return key
