"""The codebase's own rules: ruff and mypy clean, and the import-linter contracts in pyproject.toml hold."""

import ast
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


DRIVER = ("hebbrobust/study", "hebbrobust/report.py", "hebbrobust/render.py", "hebbrobust/tracking.py",
          "hebbrobust/cli.py")
MAX_LINES = 40
# run_study_trial (the Tune trainable) is being reshaped for nested seeds in another branch: it
# comes off this list when that lands.
LONG_ALLOWED = {("hebbrobust/study/trainable.py", "run_study_trial")}


def test_driver_functions_fit_on_a_screen() -> None:
    """No function on the driver side (study/, report, render, tracking, cli) is over 40 lines."""
    files = [p for d in DRIVER for p in ((ROOT / d).rglob("*.py") if (ROOT / d).is_dir() else [ROOT / d])]
    long = []
    for path in files:
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (rel, node.name) not in LONG_ALLOWED:
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "over 40 lines: " + ", ".join(long)
