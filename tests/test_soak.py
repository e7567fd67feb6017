"""The chaos soak's short mode (scripts/soak.py --short): a digits study while trial workers and the
driver are SIGKILLed; passes when nothing is lost, doubled or changed. The full soak is run by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_reliability import ENV, end_group

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_short_chaos_soak_loses_doubles_and_changes_nothing(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--short", "--out", str(tmp_path / "soak")],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=800)
    finally:
        end_group(proc)
    print(out[-3000:])
    assert proc.returncode == 0 and out.rstrip().endswith("PASS"), out[-3000:]
    for key in ("trials lost", "trials doubled", "metric mismatches", "RUNNING leftovers"):
        assert f"{key}" in out
    assert "driver kills" in out and "worker kills" in out
