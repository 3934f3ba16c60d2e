"""The example plugin package as an operator uses it, through the installed
`otus-ebpf` command: `plugins` lists both of its plugins, and `replay -c`
of a trunk capture with its processor and reporter configured writes a CSV
line per SIP message, labelled by trunk, as the JSON lines are; with the
processor failing on every other batch the replay ends all the same, the
failures counted and every record still written. Live, with two worker
processes, each has its own processor and reporter, and their lines share
the one CSV file whole."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.test_workers_live import PER_HOST, send_from
from tests.support.agent import start_agent
from tests.support.example_plugin import require_example
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.trunk import MAC_A, MAC_B, PcapWriter, Wire, trunk_messages, write_udp_messages

require_example()

SBC, CARRIER = ("10.77.0.1", 5060), ("10.77.0.2", 5080)  # requests go to 5080, responses back to 5060
CALLS = 4
MESSAGES = CALLS * 7


def agent(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AGENT), *argv], capture_output=True, text=True, timeout=120, check=False)


def trunk_capture(path: Path) -> None:
    """CALLS calls from an SBC on 5060 to a carrier on 5080, a frame every 5 ms."""
    with path.open("wb") as f:
        write_udp_messages(PcapWriter(f, gap_us=5000), Wire(SBC, CARRIER, MAC_A, MAC_B),
                           trunk_messages(CALLS, seed=7, a=SBC, b=CARRIER))


def config(tmp_path: Path, fail_every: int = 0) -> Path:
    path = tmp_path / "replay.yaml"
    path.write_text(f"""tasks:
  - name: trunks
    interfaces: [eth0]
    filter: {{sip_ports: [5060, 5080]}}
    processors:
      - plugin:
          name: example.trunk_tag
          options: {{ports: {{5060: public, 5080: carrier}}, fail_every: {fail_every}}}
    outputs:
      jsonl: {{path: {tmp_path / "records.jsonl"}}}
      plugins:
        - name: example.csv
          options: {{path: {tmp_path / "sip.csv"}}}
""")
    return path


def replayed(tmp_path: Path, fail_every: int = 0) -> tuple[str, list[dict[str, Any]], list[list[str]]]:
    capture = tmp_path / "trunk.pcap"
    trunk_capture(capture)
    done = agent("replay", str(capture), "-c", str(config(tmp_path, fail_every)), "--speed", "1")
    assert done.returncode == 0, done.stderr
    sip = [r for r in map(json.loads, (tmp_path / "records.jsonl").read_text().splitlines())
           if r["kind"] == "sip"]
    rows = list(csv.reader((tmp_path / "sip.csv").read_text().splitlines()))
    assert rows[0] == ["ts", "call_id", "method_or_status", "labels"]
    return done.stderr, sip, rows[1:]


def test_the_plugins_command_lists_both_example_plugins() -> None:
    done = agent("plugins")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines()[1:]}
    assert re.fullmatch(r"processor +example\.trunk_tag +otus-example-plugin 0\.1\.0 +"
                        r"otus_example_plugin\.trunk:trunk_tag +1 +ok", lines["example.trunk_tag"])
    assert re.fullmatch(r"reporter +example\.csv +otus-example-plugin 0\.1\.0 +"
                        r"otus_example_plugin\.csv_reporter:csv_reporter +1 +ok", lines["example.csv"])
    listed = json.loads(agent("plugins", "--json").stdout)["plugins"]
    example = {(p["group"], p["name"]): p for p in listed if p["distribution"] == "otus-example-plugin"}
    assert set(example) == {("processor", "example.trunk_tag"), ("reporter", "example.csv")}
    assert all(p["usable"] and p["api_version"] == "1" for p in example.values())


def test_a_replay_labels_each_sip_record_by_trunk_in_the_csv_and_the_json_lines(tmp_path: Path) -> None:
    said, sip, rows = replayed(tmp_path)
    assert len(sip) == len(rows) == MESSAGES
    for record, row in zip(sip, rows, strict=True):
        trunk = "carrier" if record["dport"] == 5080 else "public"
        assert record["labels"] == {"trunk": trunk}
        assert row[1:] == [record["call_id"], record["method"] or str(record["status"]), f"trunk={trunk}"]
    assert {r["dport"] for r in sip} == {5060, 5080}
    requests = sum(1 for r in sip if r["method"])
    assert (f"processors: plugin:example.trunk_tag carrier={requests} public={MESSAGES - requests}"
            in said.splitlines())
    assert re.search(rf"plugin:example\.csv written={MESSAGES + CALLS} to_fallback=0 lost=0$", said)


def test_a_processor_failing_on_every_other_batch_neither_stops_the_replay_nor_loses_records(
        tmp_path: Path) -> None:
    said, sip, rows = replayed(tmp_path, fail_every=2)
    assert len(sip) == len(rows) == MESSAGES, "every record written, by both outputs"
    found = re.search(r"^processors: plugin:example\.trunk_tag (.*)$", said, re.MULTILINE)
    assert found is not None, said
    counts = dict(pair.split("=") for pair in found.group(1).split())
    failed, labelled = int(counts["failed"]), int(counts["carrier"]) + int(counts["public"])
    unlabelled = [r for r in sip if "labels" not in r]
    assert failed > 5 and len(unlabelled) == MESSAGES - labelled > 0, said
    assert sum(1 for row in rows if not row[3]) == len(unlabelled), "those batches passed on as they came"
    assert "lost=0" in said.splitlines()[-1]
    assert said.count("plugin:example.trunk_tag: RuntimeError: batch 2: fails as configured") == 1, said


def test_live_with_two_workers_each_has_its_plugins_and_the_csv_stays_whole(lab: Lab, tmp_path: Path) -> None:
    hosts = [f"10.77.0.{n}" for n in range(20, 28)]
    lab.add_uac_addresses(hosts)
    path = tmp_path / "live.yaml"
    path.write_text(f"""tasks:
  - name: live
    interfaces: [{lab.uas_if}]
    processors:
      - plugin: {{name: example.trunk_tag, options: {{ports: {{5060: public}}}}}}
    outputs:
      plugins:
        - {{name: example.csv, options: {{path: {tmp_path / "live.csv"}}}}}
""")
    out = tmp_path / "live.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--workers", "2", "-c", str(path)])
    assert "2 worker process(es)" in agent.output()
    try:
        send_from(lab, hosts)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    rows = list(csv.reader((tmp_path / "live.csv").read_text().splitlines()))
    assert rows[0] == ["ts", "call_id", "method_or_status", "labels"]
    assert sorted(r[1] for r in rows[1:]) == sorted(f"{h}-{n}" for h in hosts for n in range(PER_HOST)), \
        "every message once, one header, no line cut or mixed"
    assert {tuple(r[2:]) for r in rows[1:]} == {("OPTIONS", "trunk=public")}
    assert all('"labels":{"trunk":"public"}' in line for line in out.read_text().splitlines())
    said = agent.output()
    assert said.count("handing records to the reporter plugin example.csv") == 2, said
    last = [line for line in said.splitlines() if line.startswith("otus-ebpf: ")][-1]
    written = re.findall(r"w\d-plugin:example\.csv written=(\d+) queued=0 overflow=0 failed=0 to_fallback=0 "
                         r"lost=0", last)
    assert len(written) == 2 and sum(map(int, written)) == len(hosts) * PER_HOST, last
