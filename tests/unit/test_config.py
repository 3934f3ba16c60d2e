"""The YAML config: every problem at once as file:line: key.path: message
(exit 2), defaults merged under tasks, OTUS_ environment overrides, and
command-line flags over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from otus_ebpf.capture.sources import CaptureMode
from otus_ebpf.cli import main as cli
from otus_ebpf.control.config import ConfigInvalid, load, parse
from otus_ebpf.kernel.settings import DEFAULT_SNAPLEN, MediaMode
from otus_ebpf.options import AttachOptions, Dispatch
from tests.support.paths import REPO
from userspace.reporters.kafka import KeyChoice

CORPUS = Path(__file__).with_name("config_corpus")
EXAMPLE = REPO / "docs" / "otus-ebpf.example.yaml"

# What `otus-ebpf validate` prints for each invalid file (after "FILE:").
EXPECTED = {
    "bad_default": ["2: defaults.workers: must be between 1 and 8, not 0"],
    "bad_direction": ["4: tasks[0].direction: must be one of ingress, egress, both, not 'sideways'"],
    "bad_dispatch": ["4: tasks[0].dispatch: must be one of binding, dispatch, not 'random'"],
    "bad_mode": ["4: tasks[0].mode: must be one of xdp, afpacket, auto, not 'fast'"],
    "bad_network": ["5: tasks[0].filter.exclude[1]: not an IPv4/IPv6 network: '300.1.1.1/32'"],
    "bad_port": ["5: tasks[0].filter.sip_ports[1]: must be between 1 and 65535, not 70000"],
    "duplicate_key": ["5: tasks[0].mode: given twice"],
    "duplicate_task": ["4: tasks[1].name: task 'a' is defined twice"],
    "hep_bad_collector": ["5: tasks[0].outputs.hep.collectors[1]: must be [udp:|tcp:]HOST:PORT, not 'homer'"],
    "kafka_bad_compression": [
        "5: tasks[0].outputs.kafka.compression: must be one of lz4, zstd, snappy, gzip, none, not 'brotli'"],
    "kafka_missing_password_file": [
        "7: tasks[0].outputs.kafka.security.sasl_password_file: cannot read /nonexistent/otus-password: "
        "No such file or directory"],
    "kafka_without_brokers": ["5: tasks[0].outputs.kafka: missing key: brokers"],
    "metrics_bad_listen": ["2: metrics.listen: must be HOST:PORT (or off), not '9091'"],
    "reassembly_timeout_zero": ["5: tasks[0].reassembly.timeout_v4_s: must be between 0.001 and 3600, not 0"],
    # Issue 12: what validated had to load and reload; numbers are ASCII, finite and bounded.
    "reassembly_timeout_huge": [
        "5: tasks[0].reassembly.timeout_v4_s: must be between 0.001 and 3600, not 1e300"],
    "tcp_idle_timeout_huge": ["5: tasks[0].tcp.idle_timeout_s: must be between 0.001 and 604800, not 1e300"],
    "rotate_max_mb_infinite": ["5: tasks[0].outputs.jsonl.max_mb: must be a number, not '1e400'"],
    "secret_file_is_a_device": [
        "7: tasks[0].outputs.kafka.security.sasl_password_file: /dev/zero is not a regular file"],
    "not_utf8": ["2: (file): not UTF-8 text (byte 0xe9 at offset 17)"],
    "recursive_alias": ["1: (syntax): an alias refers to a node that contains it (recursive alias)"],
    "port_superscript_digit": ["5: tasks[0].filter.sip_ports[1]: must be a whole number, not '²'"],
    "workers_arabic_digit": ["4: tasks[0].workers: must be a whole number, not '٢'"],
    "stats_interval_nan": ["4: tasks[0].stats_interval_s: must be a number, not '.nan'"],
    "metrics_port_superscript": ["2: metrics.listen: must be HOST:PORT (or off), not '127.0.0.1:909²'"],
    "calls_max_calls_huge": ["5: tasks[0].calls.max_calls: must be between 1 and 4000000, not 100000000"],
    "ring_mb_not_power_of_two": ["4: tasks[0].filter.ring_mb: must be a power of two, not 100"],
    "media_unknown": ["4: tasks[0].filter.media: must be one of stats, packets, off, not 'rtp'"],
    "several_at_once": ["1: node.name: must not be empty",
                        "5: tasks[0].workers: must be between 1 and 8, not 99",
                        "6: tasks[0].mode: must be one of xdp, afpacket, auto, not 'fast'",
                        "8: tasks[0].outputs.queue_records: must be between 1 and 10000000, not 0"],
    "signature_not_bool": ["4: tasks[0].filter.signature: must be true or false, not 'maybe'"],
    "snaplen_too_small": ["4: tasks[0].filter.snaplen: must be between 64 and 9216, not 10"],
    "syntax": ["4: (syntax): not valid YAML: expected ',' or ']', but got '<stream end>'"],
    "task_empty_interfaces": ["3: tasks[0].interfaces: at least one interface is needed"],
    "task_missing_name": ["2: tasks[0]: missing key: name"],
    "task_no_interfaces": ["2: tasks[0].interfaces: at least one interface is needed"],
    "tasks_not_list": ["1: tasks: must be a list"],
    "top_not_mapping": ["1: (top level): must be a mapping of keys to values"],
    "unknown_limit": [
        "4: tasks[0].calls.max_call: unknown key "
        "(expected one of: ttl_s, max_calls, max_streams, rtp_report_interval_s)"],
    # The top level gained log (log.level): the list of expected keys says so.
    "unknown_top_key": [
        "1: taks: unknown key (expected one of: node, metrics, control, state, log, defaults, tasks)"],
    "workers_negative": ["4: tasks[0].workers: must be between 1 and 8, not -3"],
    # A NUL passed validation, then failed with a traceback when the file was opened.
    "name_with_nul": ["2: tasks[0].name: must not contain control characters (found '\\x00')"],
    "path_with_nul": [
        "6: tasks[0].outputs.jsonl.path: must not contain control characters (found '\\x00')"],
    # ~ where a value is needed is not "unset": a task with no name, Kafka with no brokers.
    "task_null_name": ["2: tasks[0].name: must not be empty"],
    "kafka_null_brokers": ["6: tasks[0].outputs.kafka.brokers: must not be empty"],
    # The defaults' value is wrong only with this task's: said at the task, not dropped.
    "defaults_clash_with_task": [
        "5: tasks[0].filter.media_snaplen: must be between 0 and 100 (snaplen), not 200"],

    # The kernel's drop list holds 16 tokens, each an upper-case method or a status code.
    "drop_methods_too_many": [
        "5: tasks[0].filter.drop_methods: 17 methods and status codes: the kernel's drop list holds "
        "at most 16"],
    # A VXLAN port that is SIP's would take SIP for tunnels.
    "vxlan_port_on_sip": [
        "5: tasks[0].filter.vxlan_ports: 5060 is already a SIP, WebSocket or Geneve (6081) port"],
    "drop_method_lower_case": [
        "5: tasks[0].filter.drop_methods[1]: 'notify' is not a SIP method in upper case "
        "(A-Z, 0-9, at most 16) nor a 3-digit status code"],
    "workers_not_number": ["4: tasks[0].workers: must be a whole number, not 'many'"],
    "workers_zero": ["4: tasks[0].workers: must be between 1 and 8, not 0"],
}


def test_the_corpus_and_the_expectations_match() -> None:
    assert {p.stem for p in CORPUS.glob("*.yaml")} == set(EXPECTED)
    assert len(EXPECTED) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_invalid_config_says_where_and_what_and_exits_2(name: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = CORPUS / f"{name}.yaml"
    assert cli.main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"{path}:{line}" for line in EXPECTED[name]]


def test_the_example_is_valid_and_defaults_merge_by_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(EXAMPLE)]) == 0
    assert "valid (access, trunk)" in capsys.readouterr().out
    config = load(EXAMPLE, {})
    access, trunk = config.tasks
    assert (access.options.kernel.shards, trunk.options.kernel.shards) == (2, 1)
    assert access.options.kernel.signature and access.options.kernel.sip_ports == (5060, 5061)
    assert trunk.options.kernel.sip_ports == (5080,) and trunk.options.kernel.snaplen == 2048
    assert access.options.out_rotation.max_bytes == 256 << 20 == trunk.options.out_rotation.max_bytes
    assert access.options.kafka is not None and access.options.kafka.compression == "zstd"
    assert access.options.kafka_routing.per_kind and access.options.kafka_routing.key is KeyChoice.CALL_ID
    assert access.options.kafka_routing.task == "access" and access.dispatch is Dispatch.BINDING
    assert access.options.calls.ttl_s == 3600 and trunk.options.kafka is None
    assert (config.node_name, config.metrics_listen) == ("edge-1", "127.0.0.1:9091")


def test_otus_environment_variables_override_and_are_checked() -> None:
    text = EXAMPLE.read_text()
    config = parse(text, "x.yaml", {"OTUS_METRICS_LISTEN": "off", "OTUS_NODE_NAME": "from-env", "HOME": "/"})
    assert (config.metrics_listen, config.node_name) == (None, "from-env")
    with pytest.raises(ConfigInvalid) as invalid:
        parse(text, "x.yaml", {"OTUS_METRICS_LISTEN": "nowhere"})
    assert [str(p) for p in invalid.value.problems] == [
        "$OTUS_METRICS_LISTEN: metrics.listen: must be HOST:PORT (or off), not 'nowhere'"]


def test_flags_given_override_the_file_and_only_those() -> None:
    argv = ["attach", "eth9", "-c", str(EXAMPLE), "--task", "access", "--snaplen", "512",
            "--mode", "afpacket"]
    args = cli.build_parser().parse_args(argv)
    options = cli._attach_options(args, load(EXAMPLE, {}))
    assert options.interfaces == ("eth9",)
    assert (options.kernel.snaplen, options.mode) == (512, CaptureMode.AFPACKET)  # given
    assert options.kernel.signature and options.kernel.shards == 2  # from the file
    assert options.kafka is not None and options.kafka.compression == "zstd"
    assert DEFAULT_SNAPLEN != 512


def test_a_task_is_found_by_interface_or_named(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["attach", "eth1", "-c", str(EXAMPLE)])
    assert cli._attach_options(args, load(EXAMPLE, {})).kernel.sip_ports == (5080,)
    assert cli.main(["attach", "eth1", "-c", str(EXAMPLE), "--task", "nope"]) == 1
    assert "no task named 'nope' (tasks: access, trunk)" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_zero_or_negative_workers_are_rejected_at_validation(workers: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigInvalid) as invalid:
        parse(f"tasks:\n  - name: a\n    interfaces: [lo]\n    workers: {workers}\n", "w.yaml", {})
    assert [str(p) for p in invalid.value.problems] == [
        f"w.yaml:4: tasks[0].workers: must be between 1 and 8, not {workers}"]
    with pytest.raises(SystemExit) as usage:  # the flag is refused by its own range, as a usage error
        cli.main(["attach", "lo", "--workers", workers])
    assert usage.value.code == 2
    assert f"argument --workers: must be between 1 and 8, not {workers}" in capsys.readouterr().err


def test_the_config_reference_names_every_key_the_checker_knows() -> None:
    from otus_ebpf.control.config import KAFKA_KEYS, SECURITY_KEYS, TASK_KEYS  # noqa: PLC0415 - only this test

    reference = (REPO / "docs" / "CONFIG.md").read_text()
    def mentioned(key: str) -> bool:
        return any(form in reference for form in (f"`{key}", f"{key}`", f", {key}", f".{key}."))

    missing = [key for key in (*TASK_KEYS, *KAFKA_KEYS, *SECURITY_KEYS) if not mentioned(key)]
    assert missing == [], f"docs/CONFIG.md does not mention: {missing}"


def test_media_is_measured_in_the_kernel_unless_a_pcap_wants_the_packets_or_a_flag_says() -> None:
    def options(*flags: str) -> AttachOptions:
        argv = ["attach", "eth9", *flags]
        args = cli.build_parser().parse_args(argv)
        return cli._attach_options(args)

    assert options().media is MediaMode.STATS and options().capture.kernel.media is MediaMode.STATS
    assert options("--pcap", "x.pcap").media is MediaMode.PACKETS
    assert options("--pcap-per-call", "calls").capture.kernel.media is MediaMode.PACKETS
    assert options("--pcap", "x.pcap", "--media", "stats").media is MediaMode.STATS, "as asked"
    assert options("--media", "off").media is MediaMode.OFF
    text = "tasks:\n  - name: a\n    interfaces: [eth0]\n    filter: {media: packets}\n"
    (task,) = parse(text, "x", {}).tasks
    assert task.options.media is MediaMode.PACKETS


def test_the_node_name_names_the_node_in_kafka_headers_and_hep_unless_a_task_says() -> None:
    config = parse("node: {name: edge-7}\n"
                   "tasks:\n"
                   "  - {name: a, interfaces: [eth0],\n"
                   "     outputs: {kafka: {brokers: k:9092}, hep: {collectors: [h:9060]}}}\n"
                   "  - {name: b, interfaces: [eth1],\n"
                   "     outputs: {hep: {collectors: [h:9060], node_name: own}}}\n",
                   "f.yaml", {})
    a, b = (task.options for task in config.tasks)
    assert (a.kafka_routing.node, a.hep_identity.node_name) == ("edge-7", "edge-7")
    assert b.hep_identity.node_name == "own"
