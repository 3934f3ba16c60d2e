"""Plugins found through entry points (otus_ebpf.plugins), from packages faked
on disk: a broken one, one built for another API version and a name two
packages install are each said once, by name, and left out, never fatal to
the rest; a config that names one gets a problem saying why, and
`otus-ebpf plugins` lists each with its state."""

from __future__ import annotations

import json
import logging
from importlib.metadata import EntryPoints

import pytest

from otus_ebpf import plugins
from otus_ebpf.cli.main import main
from otus_ebpf.control.config import ConfigInvalid, parse
from tests.support.plugin_dists import PROCESSORS, REPORTERS, FakeSite

PROCESSOR = """
from userspace.processors.api import Verdicts

OTUS_API_VERSION = {version!r}


class Passing:
    fail_closed = False

    def __init__(self, options):
        self.name = "passing"
        self.options = dict(options)
        self.verdicts = Verdicts()

    def process(self, records):
        self.verdicts.add("seen", len(records))
        return records

    def counts(self):
        return self.verdicts.snapshot()


def make(options):
    if "bad" in options:
        raise ValueError("bad: not an option of this plugin")
    return Passing(options)
"""
TASK = "tasks:\n  - name: t\n    interfaces: [lo]\n    processors:\n      - plugin: {name: %s}\n"


def install(site: FakeSite, dist: str, name: str, version: object = 1, group: str = PROCESSORS,
            module: str | None = None) -> None:
    module = module or dist.replace("-", "_")
    site.install(dist, "1.0", {group: {name: f"{module}:make"}}, {module: PROCESSOR.format(version=version)})


def by_name(name: str) -> plugins.Plugin:
    (found,) = [p for p in plugins.installed() if p.name == name]
    return found


def test_an_installed_plugin_is_found_with_its_package_and_api_version(fake_site: FakeSite) -> None:
    install(fake_site, "otus-passing", "passing")
    install(fake_site, "otus-passing-csv", "passing.csv", group=REPORTERS)
    found = [(p.kind, p.name, p.target, p.distribution, p.version, p.api_version, p.problem)
             for p in plugins.installed()]
    assert found == [
        ("processor", "passing", "otus_passing:make", "otus-passing", "1.0", "1", ""),
        ("reporter", "passing.csv", "otus_passing_csv:make", "otus-passing-csv", "1.0", "1", "")]
    assert list(plugins.processor_factories()) == ["passing"]
    assert list(plugins.reporter_factories()) == ["passing.csv"]
    (task,) = parse(TASK % "passing", "f.yaml", {}).tasks
    assert task.options.processors[0].options == {"name": "passing"}


def test_a_broken_plugin_is_said_once_by_name_and_the_others_still_load(
        fake_site: FakeSite, logged: pytest.LogCaptureFixture) -> None:
    install(fake_site, "otus-passing", "passing")
    fake_site.install("otus-broken", "0.3", {PROCESSORS: {"broken": "otus_broken:make"}},
                      {"otus_broken": "import not_a_module_anywhere\n"})
    fake_site.install("otus-nothing", "0.1", {PROCESSORS: {"nothing": "otus_nothing:missing"}},
                      {"otus_nothing": "make = 1\n"})
    fake_site.install("otus-number", "0.1", {PROCESSORS: {"number": "otus_number:make"}},
                      {"otus_number": "make = 1\n"})
    assert by_name("broken").problem == ("cannot load: ModuleNotFoundError: No module named "
                                         "'not_a_module_anywhere'")
    assert by_name("nothing").problem.startswith("cannot load: AttributeError")
    assert by_name("number").problem == "cannot load: otus_number:make is not callable"
    assert by_name("passing").usable
    plugins.processor_factories()
    plugins.processor_factories()  # read once per process: said once
    warnings = [r.getMessage() for r in logged.records if r.levelno == logging.WARNING]
    assert warnings == [
        "processor plugin 'broken' (otus_broken:make, otus-broken 0.3) cannot load: ModuleNotFoundError: "
        "No module named 'not_a_module_anywhere'",
        *[w for w in warnings if "'nothing'" in w],
        "processor plugin 'number' (otus_number:make, otus-number 0.1) cannot load: otus_number:make is not "
        "callable"]
    assert len(warnings) == 3


@pytest.mark.parametrize(("declared", "usable"), [(1, True), ("1", True), ("1.7", True), (None, True),
                                                  (2, False), ("2.0", False), (0, False)])
def test_a_plugin_for_another_major_api_version_is_refused(fake_site: FakeSite, declared: object,
                                                           usable: bool) -> None:
    install(fake_site, "otus-versioned", "versioned", version=declared)
    plugin = by_name("versioned")
    assert plugin.usable is usable
    if not usable:
        assert plugin.problem == f"refused: built for plugin API {declared}, this otus-ebpf has 1"
        with pytest.raises(ConfigInvalid) as caught:
            parse(TASK % "versioned", "f.yaml", {})
        assert [str(p) for p in caught.value.problems] == [
            f"f.yaml:5: tasks[0].processors: processors[0].plugin: plugin 'versioned': refused: built for "
            f"plugin API {declared}, this otus-ebpf has 1"]


def test_a_version_on_the_factory_is_read_before_its_modules(fake_site: FakeSite) -> None:
    install(fake_site, "otus-versioned", "versioned", version=2)
    module = PROCESSOR.format(version=2) + "make.OTUS_API_VERSION = 1\n"
    (fake_site.root / "otus_versioned.py").write_text(module)
    assert by_name("versioned").api_version == "1" and by_name("versioned").usable


@pytest.mark.parametrize("declared", ["one", "v1", True, 1.0, "", [1]])
def test_a_version_that_is_not_one_is_refused(fake_site: FakeSite, declared: object) -> None:
    install(fake_site, "otus-versioned", "versioned", version=declared)
    assert by_name("versioned").problem.startswith("refused: OTUS_API_VERSION = ")


def test_one_name_from_two_packages_is_neither(fake_site: FakeSite) -> None:
    install(fake_site, "otus-one", "twin")
    install(fake_site, "otus-two", "twin")
    install(fake_site, "otus-three", "twin", group=REPORTERS)  # another group: another name
    twins = [p for p in plugins.installed() if p.name == "twin"]
    assert [(p.kind, p.distribution, p.problem) for p in twins] == [
        ("processor", "otus-one", "refused: the name is installed twice (also otus_two:make of otus-two)"),
        ("processor", "otus-two", "refused: the name is installed twice (also otus_one:make of otus-one)"),
        ("reporter", "otus-three", "")]
    with pytest.raises(ConfigInvalid) as caught:
        parse(TASK % "twin", "f.yaml", {})
    assert "plugin 'twin': refused: the name is installed twice" in str(caught.value)


def test_a_plugins_options_are_judged_by_its_factory_at_its_line(fake_site: FakeSite) -> None:
    install(fake_site, "otus-passing", "passing")
    with pytest.raises(ConfigInvalid) as caught:
        parse(TASK % "passing, options: {bad: 1}", "f.yaml", {})
    assert [str(p) for p in caught.value.problems] == [
        "f.yaml:5: tasks[0].processors: processors[0].plugin: plugin 'passing': bad: not an option of this "
        "plugin"]


def test_a_factory_that_raises_anything_else_is_a_problem_not_a_traceback(fake_site: FakeSite) -> None:
    fake_site.install("otus-buggy", "1.0", {PROCESSORS: {"buggy": "otus_buggy:make"}, REPORTERS: {
        "buggy": "otus_buggy:make"}}, {"otus_buggy": "def make(options):\n    return options['missing']\n"})
    with pytest.raises(ConfigInvalid) as caught:
        parse(TASK % "buggy", "f.yaml", {})
    assert "processors[0].plugin: plugin 'buggy' failed: KeyError: 'missing'" in str(caught.value)


def test_a_factory_that_makes_no_processor_is_refused(fake_site: FakeSite) -> None:
    fake_site.install("otus-odd", "1.0", {PROCESSORS: {"odd": "otus_odd:make"}},
                      {"otus_odd": "def make(options):\n    return object()\n"})
    with pytest.raises(ConfigInvalid) as caught:
        parse(TASK % "odd", "f.yaml", {})
    assert "plugin 'odd' made no processor (it has no process, counts, fail_closed)" in str(caught.value)


def test_the_entry_points_are_read_once_per_process(fake_site: FakeSite,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def entry_points(group: str) -> EntryPoints:
        reads.append(group)
        return fake_site.entry_points(group)

    monkeypatch.setattr(plugins, "entry_points", entry_points)
    plugins.processor_factories()
    plugins.reporter_factories()
    plugins.installed()
    assert reads == [PROCESSORS, REPORTERS]


def test_the_plugins_command_lists_each_with_its_package_target_api_and_state(
        fake_site: FakeSite, capsys: pytest.CaptureFixture[str]) -> None:
    install(fake_site, "otus-passing", "passing")
    install(fake_site, "otus-passing-csv", "passing.csv", version="1.2", group=REPORTERS)
    install(fake_site, "otus-old", "old", version=2)
    fake_site.install("otus-broken", "0.3", {REPORTERS: {"broken": "otus_broken:make"}},
                      {"otus_broken": "raise RuntimeError('no config for me')\n"})
    assert main(["plugins"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "GROUP      NAME         PACKAGE               TARGET                 API  STATE",
        "processor  old          otus-old 1.0          otus_old:make          2    "
        "refused: built for plugin API 2, this otus-ebpf has 1",
        "processor  passing      otus-passing 1.0      otus_passing:make      1    ok",
        "reporter   broken       otus-broken 0.3       otus_broken:make       -    "
        "cannot load: RuntimeError: no config for me",
        "reporter   passing.csv  otus-passing-csv 1.0  otus_passing_csv:make  1.2  ok"]
    assert main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["api_version"] == 1
    assert listed["plugins"][2] == {
        "group": "reporter", "entry_point_group": "otus_ebpf.reporters", "name": "broken",
        "distribution": "otus-broken", "version": "0.3", "target": "otus_broken:make", "api_version": None,
        "usable": False, "problem": "cannot load: RuntimeError: no config for me"}
    assert [p["usable"] for p in listed["plugins"]] == [False, True, False, True]


def test_the_plugins_command_says_when_there_are_none(fake_site: FakeSite,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    assert capsys.readouterr().out == ("no plugins installed (entry point groups otus_ebpf.processors, "
                                       "otus_ebpf.reporters)\n")
