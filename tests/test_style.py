"""The code is in the formatter's shape and passes the linter (what `.venv/bin/ruff format .` and
`.venv/bin/ruff check .` would change or report fails here, so CI enforces both)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")


@pytest.mark.skipif(not RUFF.exists(), reason="ruff is installed with the dev extra")
@pytest.mark.parametrize("command", [["format", "--check", "."], ["check", "."]])
def test_ruff(command):
    run = subprocess.run([str(RUFF), *command], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
