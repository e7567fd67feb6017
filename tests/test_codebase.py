"""The codebase's own rules: ruff and mypy clean, and the import-linter contracts in pyproject.toml hold."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
        return found
    return str(path)


def test_ruff_clean() -> None:
    cmd = [_tool("ruff"), "check", "hebbrobust", "tests", "scripts"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_clean() -> None:
    """The package type-checks (pyproject's [tool.mypy]), without writing a cache into the tree."""
    cmd = [sys.executable, "-m", "mypy", "--cache-dir", "/dev/null", "hebbrobust"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_import_contracts() -> None:
    run = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_help_is_instant_and_imports_no_heavy_modules() -> None:
    code = "import sys, hebbrobust.cli; print(sorted(m for m in ('ray','mlflow','optuna','torch') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stdout
