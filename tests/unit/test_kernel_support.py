"""A kernel without BPF ring buffers or bpf_xdp_load_bytes is refused in one
line naming what it lacks, before bcc compiles anything; `--mode auto` then
captures with AF_PACKET. The kernel's answers are stood in for here."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable

import pytest

from otus_ebpf.capture import sources
from otus_ebpf.capture.sources import CaptureDirection, CaptureMode, CaptureOptions, open_capture
from otus_ebpf.errors import SetupError
from otus_ebpf.kernel import loader
from otus_ebpf.kernel.attach import AttachMethod, XdpMode
from otus_ebpf.kernel.settings import KernelSettings


def refused(code: int) -> Callable[..., int]:
    def create(*_args: object) -> int:
        raise OSError(code, os.strerror(code))
    return create


def granted(*_args: object) -> int:
    return os.open(os.devnull, os.O_RDONLY)  # an fd for the probe to close


@pytest.fixture
def no_bcc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaching bcc would mean the probes let an unfit kernel through."""
    def import_bcc() -> None:
        raise AssertionError("bcc was reached")
    monkeypatch.setattr(loader, "import_bcc", import_bcc)


@pytest.mark.usefixtures("no_bcc")
@pytest.mark.parametrize(("map_create", "prog_load", "named"), [
    (refused(errno.EINVAL), granted, "lacks BPF ring buffers (BPF_MAP_TYPE_RINGBUF, Linux 5.8)"),
    (granted, refused(errno.EINVAL), "lacks the bpf_xdp_load_bytes helper (Linux 5.18)"),
    (refused(errno.EPERM), granted, "run as root"),
], ids=["no-ringbuf", "no-xdp-load-bytes", "not-permitted"])
def test_a_kernel_missing_a_feature_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, map_create: Callable[..., int], prog_load: Callable[..., int], named: str
) -> None:
    monkeypatch.setattr(loader, "map_create", map_create)
    monkeypatch.setattr(loader, "prog_load", prog_load)
    with pytest.raises(SetupError, match=re.escape(named)) as refusal:
        loader.load_programs(KernelSettings())
    assert "\n" not in str(refusal.value)


def capture_options(mode: CaptureMode) -> CaptureOptions:
    return CaptureOptions(mode, CaptureDirection.BOTH, XdpMode.AUTO, AttachMethod.AUTO, force=False,
                          kernel=KernelSettings())


@pytest.mark.usefixtures("no_bcc")
def test_auto_mode_falls_back_to_af_packet_on_such_a_kernel(monkeypatch: pytest.MonkeyPatch,
                                                            logged: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(loader, "map_create", refused(errno.EINVAL))
    fallback = object()
    monkeypatch.setattr(sources, "_open_afpacket", lambda *_args: fallback)
    with contextlib.ExitStack() as stack:
        opened = open_capture(stack, capture_options(CaptureMode.AUTO), {1: "eth0"}, 0, lambda _b: None)
    assert opened is fallback
    said = logged.messages
    assert len(said) == 1 and "lacks BPF ring buffers" in said[0] and "AF_PACKET" in said[0]


@pytest.mark.usefixtures("no_bcc")
def test_xdp_mode_refuses_such_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "map_create", granted)
    monkeypatch.setattr(loader, "prog_load", refused(errno.EINVAL))
    with contextlib.ExitStack() as stack, pytest.raises(SetupError, match="bpf_xdp_load_bytes"):
        open_capture(stack, capture_options(CaptureMode.XDP), {1: "eth0"}, 0, lambda _b: None)
