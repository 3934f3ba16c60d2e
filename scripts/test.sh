#!/usr/bin/env bash
# The test command: set-up, lint, types, then every test (unit + integration).
# Extra arguments go to pytest, e.g. scripts/test.sh -k sipp
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
echo "test: ruff"; .venv/bin/ruff check .
echo "test: mypy"; .venv/bin/mypy
echo "test: pytest"; .venv/bin/pytest "$@"
# Set-up compiled the per-message modules (scripts/build_native.py): the unit tests once
# more as pure Python, on a copy without the extensions, with the tests that replace
# code at run time (which compiled modules do not allow).
if [ -e userspace/_native.json ] && [ $# -eq 0 ]; then
    echo "test: pytest, unit tests as pure Python"
    pure=$(mktemp -d)
    trap 'rm -rf "$pure"' EXIT
    tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./otus-out \
        --exclude='*.so' --exclude=./userspace/_native.json -cf - . | tar -C "$pure" -xf -
    (cd "$pure" && OTUS_PURE_PASS=1 "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider tests/unit)
fi
