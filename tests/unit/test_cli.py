"""Operator errors: one line naming the problem, exit status 1, before any
kernel or output is touched."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from otus_ebpf.cli import main


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


@pytest.mark.parametrize(("flag", "value", "named"), [
    ("--snaplen", "10", "snaplen"),
    ("--ring-pages", "1000", "power of two"),
    ("--sip-port", "70000", "SIP ports"),
])
def test_bad_settings_are_refused_first(flag: str, value: str, named: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attach", "no-such-if0", flag, value]) == 1
    (line,) = error_lines(capsys)
    assert named in line


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["attach", "lo", "--xdp-mode", "fast"])
    assert exit_info.value.code == 2
