"""The tree is clean under ruff with the rules of pyproject.toml's [tool.ruff] (pyflakes, pycodestyle, sorted imports).

ruff comes with the test extras (scripts/bootstrap.sh installs it), so a name used before it is defined, an unused
import or an unsorted import block fails the test command, on every machine, not just in review."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    try:
        import ruff  # noqa: F401
    except ImportError:
        raise AssertionError("ruff is missing: install the test extras (bash scripts/bootstrap.sh)") from None
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{done.stdout}"
