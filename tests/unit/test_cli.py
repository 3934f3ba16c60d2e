"""Operator errors: one line naming the problem, exit status 1, before any
kernel or output is touched."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

from otus_ebpf.cli.main import main
from otus_ebpf.outputs.kafka_producer import KafkaSecurity


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_unknown_interface(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attach", "no-such-if0"]) == 1
    assert error_lines(capsys) == ["otus-ebpf: error: unknown interface 'no-such-if0' (see `ip link`)"]


def test_not_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["attach", "lo"]) == 1
    (line,) = error_lines(capsys)
    assert line.startswith("otus-ebpf: error: not root")


def test_bcc_missing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_import = importlib.import_module

    def no_bcc(name: str, package: str | None = None) -> ModuleType:
        if name == "bcc":
            raise ImportError("No module named 'bcc'")
        return real_import(name, package)

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(importlib, "import_module", no_bcc)
    # --mode xdp: the default (auto) would fall back to AF_PACKET instead.
    assert main(["attach", "lo", "--mode", "xdp"]) == 1
    (line,) = error_lines(capsys)
    assert "bcc is not importable" in line and "python3-bpfcc" in line


@pytest.mark.parametrize(("flag", "value", "said"), [
    ("--snaplen", "10", "must be between 64 and 9216, not 10"),
    ("--sip-port", "70000", "must be between 1 and 65535, not 70000"),
    ("--sip-port", "١٢", "must be a whole number, not '١٢'"),      # int() would take it as 12
    ("--workers", "²", "must be a whole number, not '²'"),          # str.isdigit() would take it
    ("--stats-interval", "1e300", "must be between 0.1 and 86400, not 1e300"),
    ("--out-max-mb", "1e400", "must be a number, not '1e400'"),     # inf: int(inf) overflowed
    ("--queue-records", "0", "must be between 1 and 10000000, not 0"),
    # Was a setup error (exit 1) from the kernel settings: now the ring size's own parser, as in the file.
    ("--ring-mb", "100", "must be a power of two, not 100"),
    # int() refuses 4,300 digits with advice about sys.set_int_max_str_digits; leading zeros are fine.
    ("--snaplen", "1" + "0" * 5000, "must be between 64 and 9216, not a 5001-digit number"),
    ("--snaplen", "0" * 5000 + "10", "must be between 64 and 9216, not 10"),
])
def test_numbers_out_of_range_are_usage_errors_naming_the_flag(flag: str, value: str, said: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12: settings are ASCII, finite and bounded at every door, not only in the config."""
    with pytest.raises(SystemExit) as exit_info:
        main(["attach", "lo", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: {said}" in capsys.readouterr().err


@pytest.mark.parametrize("speed", ["0", "1e-300", "inf", "nan", "fast"])
def test_replay_speed_is_bounded(speed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: --speed 1e-300 raised OverflowError from time.sleep."""
    assert main(["replay", str(tmp_path / "x.pcap"), "--speed", speed]) == 1
    (line,) = error_lines(capsys)
    assert line.startswith(f"otus-ebpf: error: --speed {speed!r}:")


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["attach", "lo", "--xdp-mode", "fast"])
    assert exit_info.value.code == 2


def test_a_missing_kafka_password_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main(["attach", "lo", "--kafka", "127.0.0.1:1", "--kafka-sasl-password-file", str(missing)]) == 1
    assert error_lines(capsys) == [
        f"otus-ebpf: error: --kafka-sasl-password-file: cannot read {missing}: No such file or directory"]


def test_kafka_secrets_stay_out_of_repr_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text("s3cret-value\n")
    security = KafkaSecurity("sasl_plaintext", "PLAIN", "otus", "s3cret-value", ssl_key_password="k3y-pass")
    assert "s3cret-value" not in repr(security) and "k3y-pass" not in repr(security)
    assert security.client_config()["sasl.password"] == "s3cret-value"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr("otus_ebpf.outputs.kafka_producer.BROKER_CHECK_TIMEOUT_S", 0.5)
    # Nothing listens on port 1: the broker check fails and says so in one line.
    assert main(["attach", "lo", "--kafka", "127.0.0.1:1", "--kafka-security-protocol", "sasl_plaintext",
                 "--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", "otus",
                 "--kafka-sasl-password-file", str(secret_file)]) == 1
    err = capsys.readouterr().err
    assert "s3cret-value" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("otus-ebpf: error:")]
    assert line.startswith("otus-ebpf: error: kafka broker 127.0.0.1:1 unreachable")


def test_a_file_that_is_not_a_capture_is_refused_before_any_output_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_pcap = tmp_path / "README.md"
    not_a_pcap.write_text("# otus-ebpf\n")
    out = tmp_path / "out" / "records.jsonl"
    assert main(["replay", str(not_a_pcap), "--out", str(out)]) == 1
    (line,) = error_lines(capsys)
    assert line == f"otus-ebpf: error: {not_a_pcap}: not a pcap or pcapng file (magic 23206f74)"
    assert not out.parent.exists()


def test_an_unreachable_broker_leaves_no_file_and_no_claim_of_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("otus_ebpf.outputs.kafka_producer.BROKER_CHECK_TIMEOUT_S", 0.5)
    capture = tmp_path / "empty.pcap"
    capture.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    out = tmp_path / "out" / "records.jsonl"
    assert main(["replay", str(capture), "--out", str(out), "--kafka", "127.0.0.1:1"]) == 1
    (line,) = error_lines(capsys)
    assert line.startswith("otus-ebpf: error: kafka broker 127.0.0.1:1 unreachable")
    assert not out.parent.exists()


def test_task_actions_without_a_name_say_so_in_the_error_form(capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("status", "pause", "resume", "delete", "create"):
        assert main(["task", action, "--socket", "/nonexistent/control.sock"]) == 1
        (line,) = error_lines(capsys)
        assert line == f"otus-ebpf: error: task {action}: which task? name it: otus-ebpf task {action} NAME"


def test_workers_default_to_one_per_cpu_capped_by_the_shard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from otus_ebpf.cli import main as cli  # noqa: PLC0415

    for cpus, expected in ((1, 1), (2, 2), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, cpus=cpus: set(range(cpus)))
        args = cli.build_parser().parse_args(["attach", "eth0"])
        assert cli._attach_options(args).kernel.shards == expected
    args = cli.build_parser().parse_args(["attach", "eth0", "--workers", "3"])
    assert cli._attach_options(args).kernel.shards == 3
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["attach", "eth0", "--workers", "9"])
