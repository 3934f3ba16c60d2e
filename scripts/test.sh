#!/usr/bin/env bash
# The test command: set-up, lint, types, then every test (unit + integration).
# Extra arguments go to pytest, e.g. scripts/test.sh -k sipp
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
echo "test: ruff"; .venv/bin/ruff check .
echo "test: mypy"; .venv/bin/mypy
echo "test: pytest"; exec .venv/bin/pytest "$@"
