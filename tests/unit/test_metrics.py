"""Metrics: per-capturer deltas that never go negative (the Go agent shared
one last value across capturers), and a /metrics page whose numbers are the
task's own."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from otus_ebpf.control.metrics import HELP, MetricsServer, MonotonicCounters
from otus_ebpf.control.task import Task
from tests.support.paths import REPO
from tests.unit.test_task import FakeOpener, as_root, lines, options, sip_frames  # noqa: F401 - as_root: a fixture


def test_per_capturer_deltas_with_three_capturers_and_a_counter_reset() -> None:
    counters = MonotonicCounters()
    steps = [("a", 10), ("b", 5), ("c", 100), ("a", 20), ("b", 7),
             ("c", 3),   # c restarted: its counter began again at zero
             ("c", 8), ("a", 21)]
    previous = 0
    for capturer, value in steps:
        counters.update("t", capturer, {"seen": value})
        total = sum(v for (_t, _c, name), v in counters.totals().items() if name == "seen")
        assert total >= previous, "a total never goes down"
        previous = total
    totals = counters.totals()
    assert (totals["t", "a", "seen"], totals["t", "b", "seen"], totals["t", "c", "seen"]) == (21, 7, 108)
    assert previous == 21 + 7 + 108


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.usefixtures("as_root")
def test_the_metrics_page_shows_the_tasks_own_numbers(tmp_path: Path) -> None:
    task = Task("edge", options(tmp_path), FakeOpener(batches=[sip_frames(12)]))
    task.start()
    server = MetricsServer("127.0.0.1:0", lambda: [task])
    try:
        for _ in range(3):
            task.poll_once()
        assert task.runner is not None
        (jsonl,) = task.runner.reporters
        assert jsonl.drain(5, time.monotonic)
        page = scrape(server.address)
    finally:
        server.close()
        task.stop()
    assert page["otus_task_up", (("state", "running"), ("task", "edge"))] == 1
    assert page["otus_records_total", (("task", "edge"),)] == 12
    assert page["otus_sip_messages_total", (("kind", "OPTIONS"), ("task", "edge"))] == 12
    written = (("outcome", "written"), ("output", "jsonl"), ("task", "edge"))
    assert page["otus_output_records_total", written] == 12
    output = (("output", "jsonl"), ("task", "edge"))
    assert page["otus_output_batches_total", output] >= 1
    assert page["otus_output_latency_seconds_total", output] > 0
    assert page["otus_output_latency_max_seconds", output] > 0
    packets = (("capturer", "fake"), ("counter", "packets"), ("task", "edge"))
    assert page["otus_capture_packets_total", packets] == 0
    assert lines(tmp_path / "out.jsonl") == 12


def test_every_metric_is_documented() -> None:
    documented = set(re.findall(r"^\| `(otus_[a-z_]+)`", (REPO / "docs" / "METRICS.md").read_text(), re.M))
    assert documented == set(HELP)


def test_the_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\b(otus_[a-z_]+)", target["expr"])}
    assert used and used <= set(HELP), used - set(HELP)
