"""Compile the per-message modules of userspace/ with mypyc: the same source, as C extensions.

    .venv/bin/python scripts/build_native.py          # build (skipped when nothing changed)
    .venv/bin/python scripts/build_native.py --clean  # back to pure Python

scripts/setup.sh runs it. An extension module next to its source is what Python
imports, so the build also writes userspace/_native.json, the hash of every
source it compiled; userspace/__init__.py refuses to import a package whose
sources no longer match (an edited module would otherwise be silently ignored).
When the compiler or the Python headers are missing, or mypyc fails, the
extensions are removed and the agent runs as pure Python: one line says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "userspace"
STAMP = PACKAGE / "_native.json"
# The per-message path. Not records.py: mypyc makes a ClassVar of a slots dataclass
# read-only on instances; not reporters/: their cost is I/O.
MODULES = ("boundary", "calls", "classify", "endpoints", "errors", "event", "frame", "kernel_streams",
           "media", "numbers", "pipeline", "reassembly", "rtcp", "rtp", "sdp", "sharding", "sip", "tcp",
           "uri")


def source_hashes() -> dict[str, str]:
    return {name: hashlib.sha256((PACKAGE / f"{name}.py").read_bytes()).hexdigest() for name in MODULES}


def built_files() -> list[Path]:
    """The extensions a build leaves: one per module, and mypyc's shared runtime."""
    return [*PACKAGE.glob("*.so"), *ROOT.glob("*__mypyc*.so")]


def clean() -> None:
    for path in built_files():
        path.unlink()
    STAMP.unlink(missing_ok=True)
    build_dir = ROOT / "build"  # mypyc's C sources and objects
    for path in [*build_dir.glob("__native*"), *build_dir.glob("temp.*"), *build_dir.glob("lib.*"),
                 build_dir / "setup.py", build_dir / "ops.txt", build_dir / "userspace"]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def stamp() -> dict[str, object]:
    return {"python": sys.version.split()[0], "sources": source_hashes()}


def up_to_date() -> bool:
    try:
        return bool(json.loads(STAMP.read_text()) == stamp()) and bool(built_files())
    except (OSError, ValueError):
        return False


def build() -> bool:
    if up_to_date():
        print("native: userspace/ compiled and up to date")
        return True
    clean()
    command = [sys.executable, "-m", "mypyc", *(f"userspace/{name}.py" for name in MODULES)]
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        clean()
        reason = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        print(f"native: mypyc failed ({reason[0][:200]}); running as pure Python")
        return False
    STAMP.write_text(json.dumps(stamp(), indent=1, sort_keys=True) + "\n")
    print(f"native: {len(MODULES)} userspace modules compiled with mypyc")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = parser.parse_args()
    if args.clean:
        clean()
        print("native: removed; userspace/ runs as pure Python")
        return 0
    build()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
