"""The README and the help text say what the program does: every command the
README shows parses, its lists name what exists, and the unit file names the
paths `install-service` installs to."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from otus_ebpf.cli import install
from otus_ebpf.cli.main import build_parser
from tests.support.paths import REPO
from userspace.records import RECORD_KINDS

README = (REPO / "README.md").read_text()
UNIT = (REPO / "packaging" / install.UNIT_FILE).read_text()


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.DOTALL)


def readme_commands() -> list[list[str]]:
    """Every `otus-ebpf ...` in the README's shell blocks, as argv after the program."""
    found = []
    for block in shell_blocks(README):
        for raw in block.splitlines():
            line = raw.split(" #", 1)[0].strip()
            words = shlex.split(line.replace("&", " ").replace("2>lab.log", ""))
            for n, word in enumerate(words):
                if word.endswith("otus-ebpf") and "$(" not in line:
                    command, rest = words[n + 1], " ".join(words[n + 2:])
                    # A synopsis such as `task list|status NAME|...`: each alternative.
                    found += [[command, *alternative.split()] for alternative in rest.split("|")]
                    break
    return found


@pytest.mark.parametrize("argv", readme_commands(), ids=" ".join)
def test_every_command_the_readme_shows_parses(argv: list[str]) -> None:
    build_parser().parse_args(argv)


def test_the_readme_shows_the_commands_an_operator_needs() -> None:
    shown = {argv[0] for argv in readme_commands()}
    assert {"attach", "daemon", "task", "stats", "top", "reload", "filter", "flows"} <= shown
    assert ["filter", "eth0"] in readme_commands(), "the filters in force, shown without changing them"


def test_the_layout_names_every_doc() -> None:
    layout = README.split("## Layout", 1)[1].split("##", 1)[0]
    for doc in sorted(p.name for p in (REPO / "docs").iterdir()):
        assert doc in layout, f"docs/{doc} missing from the README's layout"


def test_the_per_kind_topics_are_every_record_kind() -> None:
    listed = re.search(r"--kafka-topic-per-kind`: (TOPIC\.\w+(?:,\s+TOPIC\.\w+)*)", README)
    assert listed is not None
    assert re.findall(r"TOPIC\.(\w+)", listed.group(1)) == list(RECORD_KINDS)


def help_of(*argv: str) -> str:
    """What ``otus-ebpf ARGV --help`` prints (argparse's own path: it prints and exits)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue()


def test_task_help_names_every_action() -> None:
    text = " ".join(help_of("task").split())
    for action in ("list", "status", "create", "delete", "pause", "resume"):
        assert action in text
    assert "pause or resume" in text


def test_replay_help_names_its_own_default_output() -> None:
    text = " ".join(help_of("replay").split())
    assert "otus-out/sip-NAME.jsonl for a file NAME.pcap" in text and "sip-IFACE" not in text


def test_the_unit_runs_what_install_service_installs() -> None:
    exec_start = re.search(r"^ExecStart=(\S+) daemon -c (\S+)$", UNIT, re.MULTILINE)
    assert exec_start is not None and exec_start.group(1) == str(install.COMMAND)
    assert exec_start.group(2) == str(install.CONFIG)
    documentation = re.search(r"^Documentation=file://(\S+)$", UNIT, re.MULTILINE)
    assert documentation is not None
    doc = Path(documentation.group(1))
    assert doc.parent == install.DOCS and doc.name in install.DOC_FILES
    for name in install.DOC_FILES:
        assert (REPO / "docs" / name).is_file(), f"install-service installs docs/{name}"
