"""Studies on Ray Tune + Optuna + MLflow: the only package that imports ray.

directory (paths, study.json, lock), record (the read-only study record, show, list), resume
(reconcile) and audit (the audit suite and transfer matrix on a finished study's members) are
Ray-free; session (Ray), callbacks (Tune) and run (run/resume) import ray. This
package imports none of them eagerly, so `hebbrobust.study.record` costs no Ray import."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "StudyOutcome": "record",
    "audit_study": "audit",
    "transfer_study": "audit",
    "find_study_dir": "directory",
    "list_studies": "record",
    "show_study": "record",
    "read_study": "record",
    "StudyProgress": "callbacks",
    "resume_study": "run",
    "run_study": "run",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hebbrobust.study' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hebbrobust.study.{_WHERE[name]}"), name)
