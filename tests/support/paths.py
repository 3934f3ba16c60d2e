from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
AGENT = VENV_BIN / "otus-ebpf"
SIPP_SCENARIOS = REPO / "scripts" / "sipp"
