#!/usr/bin/env bash
# The main job: set-up, then capture SIP on IFACE with the default outputs.
#   sudo ./scripts/run.sh eth0 [more otus-ebpf attach options]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 IFACE [otus-ebpf attach options]" >&2; exit 2; }
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/otus-ebpf" attach "$@"
