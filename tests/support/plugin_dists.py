"""Installed plugin packages, faked on disk: a ``NAME-VERSION.dist-info`` with
its entry points and the modules they name, in a directory of their own, and
otus_ebpf.plugins made to read that directory instead of the interpreter's
(which may hold the example plugin set-up installs): tests/conftest.py's
``fake_site`` fixture."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoints, distributions
from pathlib import Path

from otus_ebpf import plugins

PROCESSORS, REPORTERS = plugins.PROCESSOR_GROUP, plugins.REPORTER_GROUP


class FakeSite:
    def __init__(self, root: Path) -> None:
        self.root = root

    def install(self, dist: str, version: str, points: Mapping[str, Mapping[str, str]],
                modules: Mapping[str, str]) -> None:
        """``points``: group -> {name: "module:attr"}; ``modules``: module name -> its source."""
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text("".join(
            f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in named.items())
            for group, named in points.items()))
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(source)

    def entry_points(self, group: str) -> EntryPoints:
        return EntryPoints(point for dist in distributions(path=[str(self.root)])
                           for point in dist.entry_points if point.group == group)
