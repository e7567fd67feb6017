"""Errors the library raises. The CLI turns each into one line and exit code 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class HebbrobustError(Exception):
    """Base of every error the library raises on purpose."""


class SpecError(HebbrobustError):
    """A spec file or value breaks a rule: names the file, the field, what is allowed and what was given."""

    def __init__(self, path: Path | str | None, field: str, rule: str, got: Any = None) -> None:
        self.path, self.field, self.rule, self.got = path, field, rule, got
        where = f"{path}: " if path is not None else ""
        given = "" if got is None else f", got {got!r}"
        super().__init__(f"{where}{field}: {rule}{given}")


class DataError(HebbrobustError):
    """A data set cannot be found, downloaded or decoded."""


class TrialError(HebbrobustError):
    """A trial failed for a reason worth reporting (divergence, NaN, Blue Wall of Death)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
