"""Each setting is declared once (otus_ebpf.control.settings), and every
surface is built from it or checked against it: the flags of attach, replay
and daemon, the keys the config checker takes, docs/CONFIG.md's tables. A
setting in one surface and not another fails here, as does a value that
arrives differently as a flag than as a key, or a default that differs
between attach, a config file and replay."""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from otus_ebpf.cli import main as cli
from otus_ebpf.cli.flags import given
from otus_ebpf.control.config import Config, ConfigInvalid, load, parse
from otus_ebpf.control.kinds import (
    STRUCTURED,
    Choice,
    Collectors,
    KeyValue,
    Listen,
    Method,
    Networks,
    Number,
    Switch,
    Text,
    Whole,
    Workers,
)
from otus_ebpf.control.reference import generated_part, markdown
from otus_ebpf.control.settings import SETTINGS, Scope, Setting, build_options, defaults
from otus_ebpf.options import AttachOptions
from tests.support.paths import REPO

CONFIG_DOC = REPO / "docs" / "CONFIG.md"
BY = {s.name: s for s in SETTINGS}
# Settings of one value each (a flag's, a key's); ``processors`` and ``outputs.plugins`` are lists of
# structures (test_processor_config, test_reporter_plugins).
SCALAR = tuple(s for s in SETTINGS if not isinstance(s.kind, STRUCTURED))
# Options of the commands themselves, not settings (as the usage line shows them: -c for -c/--config).
COMMAND_OPTIONS = {
    "attach": {"-h", "-c", "--task", "--no-tui"},
    "replay": {"-h", "--speed", "-c", "--task"},
    "daemon": {"-h", "-c"},
}


def usage_options(command: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The options `otus-ebpf COMMAND --help` shows in its usage (what argparse really takes)."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    usage = capsys.readouterr().out.split("\n\n", 1)[0]
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", usage))


@pytest.mark.parametrize("command", sorted(COMMAND_OPTIONS))
def test_every_flag_is_a_declared_setting_and_every_declared_flag_is_there(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    declared = {s.flag for s in SETTINGS if command in s.takes}
    assert usage_options(command, capsys) == declared | COMMAND_OPTIONS[command]


def sections(scope: Scope) -> dict[str, list[str]]:
    """Each mapping of the file (by key path, "" for the top) and the keys it should take, from SETTINGS."""
    found: dict[str, list[str]] = {}
    for setting in SETTINGS:
        if setting.scope is scope:
            parts = setting.key.split(".")
            for depth in range(len(parts)):
                keys = found.setdefault(".".join(parts[:depth]), [])
                if parts[depth] not in keys:
                    keys.append(parts[depth])
    return found


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, key = path.split(".")
        where = tree
        for part in parents:
            where = where.setdefault(part, {})
        where[key] = value
    return tree


def test_the_checker_takes_exactly_the_declared_keys_in_every_section() -> None:
    """An unknown key in every mapping: each refusal lists what that mapping takes."""
    file_sections, task_sections = sections(Scope.FILE), sections(Scope.TASK)
    top = nest({f"{path}.zz" if path else "zz": 1 for path in file_sections})
    task = nest({f"{path}.zz" if path else "zz": 1 for path in task_sections})
    top["tasks"] = [task | {"name": "a", "interfaces": ["eth0"]}]
    listed = {}
    with pytest.raises(ConfigInvalid) as invalid:
        parse(yaml.safe_dump(top, sort_keys=False), "x.yaml", {})
    for problem in invalid.value.problems:
        if problem.message.startswith("unknown key"):
            where = problem.path.removesuffix("zz").removesuffix(".").removeprefix("tasks[0]").lstrip(".")
            scope = "task" if problem.path.startswith("tasks[0]") else "file"
            listed[scope, where] = problem.message.split("expected one of: ", 1)[1].rstrip(")").split(", ")
    expected = {("file", path): keys for path, keys in file_sections.items()}
    expected["file", ""] = [*file_sections[""], "defaults", "tasks"]
    expected |= {("task", path): keys for path, keys in task_sections.items()}
    assert listed == expected


_PORTS_APART = {"ws_ports": "8080", "vxlan_ports": "8472"}


def sample(setting: Setting, secret: Path) -> str:
    """A valid value unlike the default, as an operator types it."""
    kind, default = setting.kind, setting.default_value()
    if setting.secret_file:
        return str(secret)
    if isinstance(kind, Switch):
        return "true"
    if isinstance(kind, Choice):
        return next(w for w in reversed(kind.words) if kind.parse(w) != default)
    if setting.name in _PORTS_APART:  # ports of one kind may not be another kind's
        return _PORTS_APART[setting.name]
    if isinstance(kind, (Whole, Number)):
        low = kind.parse(str(kind.low))
        first = (default[0] if default else None) if setting.repeatable else default  # a list may be empty
        return str(kind.low) if low != first else str(kind.high)
    if isinstance(kind, Workers):
        return "2" if default == 1 else "1"
    special = {Networks: "10.1.0.0/16", Collectors: "tcp:127.0.0.1:9061", Listen: "127.0.0.1:9999",
               KeyValue: "site=fra1", Method: "OPTIONS"}
    assert isinstance(kind, Text) or type(kind) in special, f"no sample for {setting.name}"
    return special.get(type(kind), f"{setting.name}-sample")


def parsed(setting: Setting, text: str) -> Any:
    """The value ``text`` gives ``setting`` (a list of one for a list)."""
    value = setting.kind.parse(text)
    return (value,) if setting.repeatable else value


def file_of(settings: list[Setting] | tuple[Setting, ...], text: dict[str, str]) -> Config:
    """A config file giving ``settings`` as ``text`` says, parsed."""
    chosen = [s for s in settings if s.scope is Scope.FILE]
    flat: dict[str, Any] = {s.key: [text[s.name]] if s.repeatable else text[s.name] for s in chosen}
    flat["tasks"] = [nest({s.key: [text[s.name]] if s.repeatable else text[s.name]
                           for s in settings if s.scope is Scope.TASK})]
    return parse(yaml.dump(nest(flat), default_style='"'), "x.yaml", {})


def test_one_value_given_as_a_flag_or_as_a_key_arrives_as_the_same_thing(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-long-enough-for-a-fleet-key\n")
    secret.chmod(0o600)
    chosen = {s.name: sample(s, secret) for s in SCALAR}
    expected = {s.name: parsed(s, chosen[s.name]) for s in SCALAR}
    for setting in SCALAR:
        assert expected[setting.name] != setting.default_value(), f"{setting.name}: the sample is its default"
    config = file_of(SCALAR, chosen)
    (task,) = config.tasks
    for setting in SCALAR:
        in_file = (task.values if setting.scope is Scope.TASK else config.values)[setting.name]
        assert in_file == expected[setting.name], setting.key
    argv = ["attach", *expected["interfaces"]]
    for setting in (s for s in SCALAR if "attach" in s.takes):
        argv += [setting.flag] if isinstance(setting.kind, Switch) else [setting.flag, chosen[setting.name]]
    args = cli.build_parser().parse_args(argv)
    from_flags = given(args, "attach") | given(args, "attach", Scope.FILE)
    assert from_flags == {name: expected[name] for name in from_flags}
    # The same task from the flags as from a file giving the same settings.
    (task,) = file_of([s for s in SCALAR if s.flag or s.name in ("name", "interfaces")], chosen).tasks
    assert cli._attach_options(args) == task.options


def test_every_task_setting_reaches_the_options(tmp_path: Path) -> None:
    """build_options is shared by both surfaces: a value it drops or puts in the wrong field would
    agree with itself above. Each setting changed alone must change the AttachOptions."""
    # Kafka's settings matter only with a broker, the redaction key only with a hash
    base = defaults() | {"kafka_brokers": "k:9092", "redact": "hash"}

    def options(values: dict[str, Any]) -> AttachOptions:
        return build_options(values, ("eth0",), "a", lambda _setting, path: f"secret in {path}")

    changing = [s for s in SCALAR if s.scope is Scope.TASK and s.name not in ("name", "interfaces")]

    def before(setting: Setting) -> dict[str, Any]:
        return base | {"tls": True} if setting.name.startswith("tls_") else base  # they matter with --tls

    unchanged = [s.key for s in changing
                 if options(before(s) | {s.name: parsed(s, sample(s, tmp_path))}) == options(before(s))]
    assert unchanged == []


def test_defaults_are_the_same_from_attach_a_config_file_and_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    from_flags = cli._attach_options(cli.build_parser().parse_args(["attach", "eth0"]))
    (task,) = parse("tasks: [{name: capture, interfaces: [eth0]}]\n", "x.yaml", {}).tasks
    replayed: list[AttachOptions] = []

    def replay(_file: Path, options: AttachOptions, _speed: float | None) -> int:
        replayed.append(options)
        return 0

    monkeypatch.setattr(cli, "run_replay", replay)
    assert cli.main(["replay", "eth0.pcap"]) == 0
    assert from_flags == task.options == replayed[0]
    config = parse("{}\n", "x.yaml", {})
    assert (config.metrics_listen, config.control_socket, config.log_level) == (
        BY["metrics_listen"].default, BY["control_socket"].default, BY["log_level"].default)


def test_the_config_reference_tables_are_the_settings() -> None:
    """docs/CONFIG.md's tables are written by `python -m otus_ebpf.control.reference --update
    docs/CONFIG.md`; a row edited or missing there, or a setting added without them, fails."""
    block = generated_part(CONFIG_DOC.read_text())
    assert block is not None, "docs/CONFIG.md lost its generated block"
    assert block == markdown()
    for setting in SETTINGS:
        assert f"| `{setting.key}` |" in block, setting.key
        if setting.flag:
            assert f"`{setting.flag}`" in block, setting.flag


def test_the_help_examples_parse() -> None:
    for line in cli.ATTACH_EXAMPLES.splitlines()[1:]:
        command, _, explanation = line.partition("#")
        assert explanation.strip(), f"an example without its explanation: {line}"
        cli.build_parser().parse_args(shlex.split(command)[1:])


def test_the_log_level_comes_from_the_flag_else_the_file(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "run_replay", lambda *_args: 0)
    monkeypatch.setattr(cli, "run_attach", lambda *_args, **_kwargs: 0)
    root = logging.getLogger("otus_ebpf")
    assert cli.main(["replay", "x.pcap", "--log-level", "debug"]) == 0
    assert root.level == logging.DEBUG
    assert cli.main(["replay", "x.pcap"]) == 0
    assert root.level == logging.INFO
    file = tmp_path / "otus.yaml"
    file.write_text("log: {level: warning}\ntasks: [{name: a, interfaces: [eth0]}]\n")
    assert load(file, {}).log_level == "warning"
    assert cli.main(["attach", "eth0", "-c", str(file)]) == 0
    assert root.level == logging.WARNING
    assert cli.main(["attach", "eth0", "-c", str(file), "--log-level", "error"]) == 0
    assert root.level == logging.ERROR
    file.write_text("log: {level: loud}\n")
    assert cli.main(["validate", str(file)]) == 2
