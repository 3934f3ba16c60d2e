"""docs/PROCESSORS.md holds true: its example builds, its condition table is
the code's, its flags exist and make what it says."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from otus_ebpf.control.settings import SETTINGS
from userspace.processors.build import build, parse_specs
from userspace.processors.filter import MAX_CALLS as FILTER_CALLS
from userspace.processors.label import MAX_CALLS as LABEL_CALLS
from userspace.processors.label import MAX_VALUE
from userspace.processors.match import CONDITIONS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROCESSORS.md").read_text()


def test_the_example_list_builds() -> None:
    block = DOC.split("```yaml\n", 1)[1].split("```", 1)[0]
    (task,) = yaml.safe_load(block)["tasks"]
    made = build(parse_specs(task["processors"]), lambda _path: "a-key-for-the-doc", {})
    assert [p.name for p in made] == ["filter", "filter#2", "filter#3", "label", "redact", "sample"]


def test_the_condition_table_is_the_codes() -> None:
    table = DOC.split("| condition | of a SIP message |", 1)[1].split("\n\n", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", table, re.M)
    named = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    assert named == set(CONDITIONS)


def test_the_flags_it_names_exist_and_the_numbers_are_the_codes() -> None:
    flags = {s.flag for s in SETTINGS if s.flag}
    for flag in re.findall(r"`(--[a-z-]+)", DOC):
        assert flag in flags, flag
    assert FILTER_CALLS == LABEL_CALLS == 200_000 and "200,000 calls" in DOC
    assert f"first {MAX_VALUE} characters" in DOC
