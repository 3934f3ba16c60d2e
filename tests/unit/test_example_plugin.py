"""The example plugin package (examples/otus-example-plugin): its processor
labels SIP records by the trunk of their destination port and counts them,
its reporter appends CSV lines; both judge their options the way otus-ebpf
expects (ValueError), it uses only the plugin API, and set-up installs it
where otus-ebpf finds it."""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import os
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from otus_ebpf import plugins
from tests.support.example_plugin import EXAMPLE_DIR, EXAMPLE_PLUGINS, require_example
from tests.support.paths import REPO
from tests.unit.test_processors import message
from userspace.processors.api import API_VERSION
from userspace.records import Record, SipRecord, StreamReport, encode_json

require_example()

from otus_example_plugin.csv_reporter import HEADER, csv_reporter  # noqa: E402
from otus_example_plugin.trunk import trunk_tag  # noqa: E402

PORTS = {"5060": "public", "5080": "carrier"}  # as otus-ebpf hands them over: JSON, keys as text


def to_port(port: int, method: str = "INVITE", status: int | None = None, call_id: str = "c1") -> SipRecord:
    return dataclasses.replace(message(method, call_id, status=status), dport=port)


def test_each_sip_record_is_labelled_with_its_destination_ports_trunk_and_counted() -> None:
    tag = trunk_tag({"ports": PORTS})
    report = StreamReport(3, "c1", {"ssrc": 1})
    invite = to_port(5080)
    given: list[Record] = [invite, to_port(5060, status=200), to_port(5999), report]
    out = tag.process(given)
    assert [r.labels for r in out] == [{"trunk": "carrier"}, {"trunk": "public"}, None, None]
    assert out[3] is report and out[2] is given[2], "what it does not label passes as it came"
    assert invite.labels is None, "a changed copy: the record given is left alone"
    assert json.loads(encode_json(out[0]))["labels"] == {"trunk": "carrier"}
    assert tag.counts() == {"carrier": 1, "public": 1, "untagged": 1}
    assert tag.fail_closed is False


def test_its_own_label_name_joins_labels_already_there() -> None:
    tag = trunk_tag({"ports": {5080: "carrier"}, "label": "route"})  # an int key, as a Python caller gives it
    labelled = dataclasses.replace(to_port(5080), labels={"site": "fra1"})
    assert tag.process([labelled])[0].labels == {"site": "fra1", "route": "carrier"}


def test_fail_every_raises_on_every_nth_batch_only() -> None:
    tag = trunk_tag({"ports": PORTS, "fail_every": 3})
    outcomes = []
    for _ in range(7):
        try:
            tag.process([to_port(5060)])
            outcomes.append("ok")
        except RuntimeError:
            outcomes.append("raised")
    assert outcomes == ["ok", "ok", "raised", "ok", "ok", "raised", "ok"]
    assert tag.counts() == {"public": 5}


@pytest.mark.parametrize(("options", "said"), [
    ({}, "ports: a mapping of port to trunk name"),
    ({"ports": {}}, "ports: a mapping"),
    ({"ports": {"70000": "x"}}, "ports: '70000' is not a port"),
    ({"ports": {"http": "x"}}, "ports: 'http' is not a port"),
    ({"ports": {"5060": "untagged"}}, "ports.5060: a trunk name"),
    ({"ports": {"5060": "has space"}}, "ports.5060: a trunk name"),
    ({"ports": PORTS, "label": "1abc"}, "label: letters"),
    ({"ports": PORTS, "fail_every": -1}, "fail_every: a whole number"),
    ({"ports": PORTS, "fail_every": True}, "fail_every: a whole number"),
    ({"ports": PORTS, "colour": "red"}, "unknown option colour (expected: ports, label, fail_every)"),
])
def test_the_processors_options_are_judged(options: dict[str, Any], said: str) -> None:
    with pytest.raises(ValueError, match="^" + said.replace("(", r"\(").replace(")", r"\)")):
        trunk_tag(options)


def rows(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text().splitlines()))


def test_the_reporter_appends_a_line_per_sip_record_with_a_header_once(tmp_path: Path) -> None:
    path = tmp_path / "sip.csv"
    reporter = csv_reporter({"path": str(path)})
    assert not path.exists(), "made at config time too: it opens nothing"
    reporter.write([])
    reporter.write([StreamReport(3, "c1", {})])
    assert not path.exists(), "no SIP record yet, no file"
    tagged = trunk_tag({"ports": PORTS}).process([to_port(5080, call_id="a,b"), to_port(5060, status=180)])
    reporter.write([*tagged, StreamReport(3, "c1", {})])
    assert reporter.flush(1.0) == 0
    reporter.close()
    reporter.close()
    again = csv_reporter({"path": str(path)})
    again.write([dataclasses.replace(to_port(5060, "BYE"), ts_ns=1_700_000_000_123_456_789,
                                     labels={"trunk": "public", "site": "fra1"})])
    again.close()
    assert rows(path) == [list(HEADER),
                          ["1970-01-01T00:00:00.000000Z", "a,b", "INVITE", "trunk=carrier"],
                          ["1970-01-01T00:00:00.000000Z", "c1", "180", "trunk=public"],
                          ["2023-11-14T22:13:20.123456Z", "c1", "BYE", "site=fra1;trunk=public"]]
    assert path.stat().st_mode & 0o777 == 0o640


def test_reporters_of_several_processes_make_the_file_with_one_header(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers' reporters opening the file at once: the second to link its new file finds
    the first's there, header and all, and appends to it."""
    path = tmp_path / "sip.csv"
    first, second = csv_reporter({"path": str(path)}), csv_reporter({"path": str(path)})
    link = os.link

    def second_first(src: str, dst: str) -> None:
        monkeypatch.setattr(os, "link", link)
        second.write([to_port(5060, call_id="second")])  # it makes the file while the first is linking
        link(src, dst)

    monkeypatch.setattr(os, "link", second_first)
    first.write([to_port(5060, call_id="first")])
    first.close()
    second.close()
    assert [r[1] for r in rows(path)] == ["call_id", "second", "first"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sip.csv"], "nothing left aside"


@pytest.mark.parametrize(("options", "said"), [
    ({}, "path: the CSV file to append to"),
    ({"path": " "}, "path: the CSV file"),
    ({"path": "/nonexistent/dir/sip.csv"}, "path: /nonexistent/dir is not a directory"),
    ({"path": "x.csv", "fsync": True}, "unknown option fsync (expected: path)"),
])
def test_the_reporters_options_are_judged(options: dict[str, Any], said: str) -> None:
    with pytest.raises(ValueError, match="^" + said.replace("(", r"\(").replace(")", r"\)")):
        csv_reporter(options)


def test_the_example_uses_the_plugin_api_only() -> None:
    """userspace.records, userspace.processors.api and userspace.reporters: what docs/PLUGINS.md
    calls the API; never otus_ebpf, whose modules a plugin has no promise about."""
    imported = set()
    for source in (EXAMPLE_DIR / "otus_example_plugin").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {name for name in imported if name.split(".")[0] in ("userspace", "otus_ebpf")}
    assert ours == {"userspace.records", "userspace.processors.api", "userspace.reporters"}


def test_set_up_installed_both_where_otus_ebpf_finds_them() -> None:
    for group, name in EXAMPLE_PLUGINS.items():
        assert name in entry_points(group=group).names, (group, name)
    plugins.clear_cache()
    listed = {(p.kind, p.name): p for p in plugins.installed()}
    for name in EXAMPLE_PLUGINS.values():
        plugin = listed["processor" if name == "example.trunk_tag" else "reporter", name]
        assert (plugin.distribution, plugin.api_version, plugin.problem) == ("otus-example-plugin", "1", "")


def test_the_plugins_doc_shows_the_examples_own_entry_points_and_api_version() -> None:
    doc = (REPO / "docs" / "PLUGINS.md").read_text()
    pyproject = (EXAMPLE_DIR / "pyproject.toml").read_text()
    declared = re.findall(r'^"(example\.\w+)" = "([\w.:]+)"$', pyproject, re.MULTILINE)
    assert len(declared) == 2
    for name, target in declared:
        assert f'"{name}" = "{target}"' in doc and target in doc
    assert f"now `{API_VERSION}`" in doc
    for module in ("trunk", "csv_reporter"):
        source = (EXAMPLE_DIR / "otus_example_plugin" / f"{module}.py").read_text()
        assert f"OTUS_API_VERSION = {API_VERSION}" in source
