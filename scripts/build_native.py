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
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "userspace"
STAMP = PACKAGE / "_native.json"
# The per-message path. Not records.py: mypyc makes a ClassVar of a slots dataclass
# read-only on instances; not endpoints.py: its FlowEvents cross from worker processes
# by pickle, which a compiled frozen dataclass refuses; not reporters/: their cost is I/O.
MODULES = ("boundary", "callbook", "calls", "classify", "dedup", "droplist", "early", "errors", "event",
           "frame", "kernel_streams", "media", "numbers", "pipeline", "reassembly", "rtcp", "rtp", "sdp",
           "sharding", "sip", "tcp", "uri", "websocket")


def source_hashes() -> dict[str, str]:
    return {name: hashlib.sha256((PACKAGE / f"{name}.py").read_bytes()).hexdigest() for name in MODULES}


# mypyc's shared runtime is a top-level module: it goes where the interpreter always looks
# (the console script does not have the checkout on its path; the packages are mapped).
RUNTIME_DIR = Path(sysconfig.get_paths()["platlib"])


def built_files() -> list[Path]:
    """The extensions a build leaves: one per module, and mypyc's shared runtime (named in
    the stamp: other packages' runtimes, mypy's own among them, sit beside it)."""
    files = [*PACKAGE.glob("*.so"), *ROOT.glob("*__mypyc*.so")]
    try:
        runtime = str(json.loads(STAMP.read_text())["runtime"])
    except (OSError, ValueError, KeyError):
        return files
    if "__mypyc" in runtime and "/" not in runtime:
        files.append(RUNTIME_DIR / runtime)
    return files


def clean() -> None:
    for path in built_files():
        path.unlink(missing_ok=True)
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
        built = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False
    runtime = RUNTIME_DIR / str(built.pop("runtime", ""))
    return built == stamp() and runtime.is_file() and any(PACKAGE.glob("*.so"))


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
    runtimes = list(ROOT.glob("*__mypyc*.so"))
    if len(runtimes) != 1:
        clean()
        print(f"native: mypyc left {len(runtimes)} runtime libraries, expected one; running as pure Python")
        return False
    runtimes[0].replace(RUNTIME_DIR / runtimes[0].name)
    STAMP.write_text(json.dumps({**stamp(), "runtime": runtimes[0].name}, indent=1, sort_keys=True) + "\n")
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
