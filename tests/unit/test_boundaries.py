"""userspace/ is sans-IO: it imports neither the application, bcc, pyroute2,
nor a clock (time arrives with the packet)."""

from __future__ import annotations

import ast

from tests.support.paths import REPO

FORBIDDEN = {"otus_ebpf", "bcc", "pyroute2", "time"}


def imported_modules(source: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def test_userspace_imports_nothing_forbidden() -> None:
    offenders = {}
    for path in sorted((REPO / "userspace").rglob("*.py")):
        bad = imported_modules(path.read_text()) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}


def test_the_check_sees_an_offending_import() -> None:
    assert imported_modules("from otus_ebpf.cli.agent import x\nimport time\n") == {"otus_ebpf", "time"}
