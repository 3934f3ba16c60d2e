"""The import graph of otus_ebpf/ and userspace/: no cycles, and each concern
imports only the layers under it (docs/ARCHITECTURE.md draws the same
picture). Every import counts, those inside functions and under
TYPE_CHECKING too: a cycle hidden in a function is still a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.paths import REPO

Graph = Mapping[str, Iterable[str]]

# Modules every layer may use: errors, logging, reading files and secrets, a signal flag.
BASE = {"otus_ebpf", "otus_ebpf.errors", "otus_ebpf.files", "otus_ebpf.logs", "otus_ebpf.secret",
        "otus_ebpf.signals"}
# The layer of each module prefix, and the layers it may import. ``options``
# is the task's settings: the shared type the capture and the outputs are
# built from, so it may name their types but not the control plane's.
_DATA = {"userspace", "userspace.reporters"}
_BELOW_CAPTURE = _DATA | {"otus_ebpf.kernel", "otus_ebpf.outputs", "otus_ebpf.options", "otus_ebpf.plugins"}
MAY_IMPORT = {
    "userspace": {"userspace"},
    "userspace.reporters": _DATA,
    "otus_ebpf.kernel": {"userspace", "otus_ebpf.kernel"},
    "otus_ebpf.plugins": _DATA | {"otus_ebpf.plugins"},
    "otus_ebpf.outputs": _DATA | {"otus_ebpf.plugins", "otus_ebpf.options", "otus_ebpf.outputs"},
    "otus_ebpf.options": _BELOW_CAPTURE | {"otus_ebpf.capture"},
    "otus_ebpf.capture": _BELOW_CAPTURE | {"otus_ebpf.capture"},
    "otus_ebpf.fleet": {"otus_ebpf.fleet"},
    "otus_ebpf.control": _BELOW_CAPTURE | {"otus_ebpf.capture", "otus_ebpf.fleet", "otus_ebpf.control"},
    "otus_ebpf.view": _BELOW_CAPTURE | {"otus_ebpf.capture", "otus_ebpf.control", "otus_ebpf.view"},
    "otus_ebpf.cli": _BELOW_CAPTURE | {"otus_ebpf.capture", "otus_ebpf.fleet", "otus_ebpf.control",
                                       "otus_ebpf.view", "otus_ebpf.cli"},
    "otus_ebpf.__main__": {"otus_ebpf.cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for top in ("otus_ebpf", "userspace") for p in (REPO / top).rglob("*.py")}


def imports_of(source: str, name: str, is_package: bool, known: Iterable[str]) -> set[str]:
    """The modules of ours that ``source`` (module ``name``) imports, wherever the import is."""
    known = set(known)
    package = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    found.add(f"{base}.{alias.name}")
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: imports_of(path.read_text(), name, path.name == "__init__.py", modules)
            for name, path in modules.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> str | None:
    matches = [layer for layer in MAY_IMPORT if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def layer_violations(graph: Graph) -> list[str]:
    bad = []
    for module, targets in graph.items():
        layer = layer_of(module)
        if layer is None:
            continue
        for target in targets:
            if target in BASE or layer_of(target) in MAY_IMPORT[layer]:
                continue
            bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(import_graph()) == []


def test_each_concern_imports_only_the_layers_under_it() -> None:
    assert layer_violations(import_graph()) == []


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in our_modules() if layer_of(m) is None and m not in BASE)
    assert unplaced == []


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert layer_violations({"otus_ebpf.kernel.maps": ["otus_ebpf.capture.runner"],
                             "userspace.pipeline": ["userspace.reporters.pcap"]}) == [
        "otus_ebpf.kernel.maps -> otus_ebpf.capture.runner",
        "userspace.pipeline -> userspace.reporters.pcap"]
    graph = {"otus_ebpf.kernel.x": imports_of("def f():\n    from . import y\n", "otus_ebpf.kernel.x",
                                              False, ["otus_ebpf.kernel.y"])}
    assert graph == {"otus_ebpf.kernel.x": {"otus_ebpf.kernel.y"}}
