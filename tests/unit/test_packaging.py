"""The BPF C sources are found from a checkout and from an installed wheel, which holds
every package of the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from otus_ebpf.kernel.sources import EVENT_HEADER_FILE, PROGRAM_FILE, bpf_source_dir
from tests.support.paths import REPO


def test_checkout_finds_top_level_bpf() -> None:
    assert bpf_source_dir() == REPO / "bpf"


def test_installed_wheel_ships_and_finds_the_sources(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("otus_ebpf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"otus_ebpf/bpf/{PROGRAM_FILE}" in names
    assert f"otus_ebpf/bpf/{EVENT_HEADER_FILE}" in names
    # Every package of the checkout, so that an installed wheel imports what a checkout does.
    packages = sorted(str(init.relative_to(REPO)) for top in ("otus_ebpf", "userspace")
                      for init in (REPO / top).rglob("__init__.py"))
    assert [init for init in packages if init not in names] == []

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    # -S: no site-packages, so the editable checkout cannot answer instead.
    found = subprocess.run(
        [sys.executable, "-S", "-c",
         f"import sys; sys.path.insert(0, {str(site)!r}); "
         "from otus_ebpf.kernel.sources import bpf_source_dir; print(bpf_source_dir())"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.strip()
    assert found == str(site / "otus_ebpf" / "bpf")
