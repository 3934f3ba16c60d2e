"""docs/ARCHITECTURE.md stays true to the tree: its table names every module
of each package, and only modules that exist; its map table names every map
bpf/otus.c declares."""

from __future__ import annotations

import re

from tests.support.paths import REPO

DOC = (REPO / "docs" / "ARCHITECTURE.md").read_text()


def modules_the_doc_lists() -> dict[str, set[str]]:
    listed = {}
    for row in re.finditer(r"^\| `([a-z_/]+)/` \| ([^|]+) \|", DOC, re.M):
        listed[row.group(1)] = set(re.findall(r"`([a-z_/]+)`", row.group(2)))
    return listed


def modules_on_disk(package: str) -> set[str]:
    root = REPO / package
    found = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    found |= {f"{p.name}/" for p in root.iterdir() if (p / "__init__.py").is_file()}
    return found


def test_the_table_lists_every_module_of_every_package() -> None:
    listed = modules_the_doc_lists()
    packages = ["userspace", *(f"otus_ebpf/{p.name}" for p in sorted((REPO / "otus_ebpf").iterdir())
                               if (p / "__init__.py").is_file())]
    assert set(packages) <= set(listed), "a package is missing from the table"
    for package in packages:
        assert listed[package] == modules_on_disk(package), package


def test_the_map_table_names_every_map_the_program_declares() -> None:
    source = (REPO / "bpf" / "otus.c").read_text()
    declared = set(re.findall(r"^BPF_\w+\((\w+),", source, re.M))
    declared |= set(re.findall(r'^BPF_F_TABLE\("\w+", [^,]+, [^,]+, (\w+),', source, re.M))
    section = DOC.split("## Who owns each kernel map", 1)[1]
    named = set(re.findall(r"`(\w+)`", section))
    named |= {f"{m}_{v}" for m in ("include", "exclude") for v in ("v4", "v6")} \
        if "`include_v4/v6`" in section else set()
    assert declared - named == set()
